"""Load Hugging Face checkpoints from disk, with errors that say which file is wrong."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer


def quiet_transformers() -> None:
    """Silence transformers' own progress bars and warnings: our bars show progress."""
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


class CheckpointError(ValueError):
    """A model directory the user named cannot be loaded; the message names it."""


def load_model(path: str | Path, device: torch.device):
    """(model in float32, tokenizer) from an HF model directory. Offline: local files only.

    A tokenizer without a pad token gets its EOS as pad (as Qwen base checkpoints need).
    """
    path = _model_dir(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot load the checkpoint: {e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def load_value_model(path: str | Path, device: torch.device):
    """A value model in float32: the checkpoint's backbone under a linear head with one output
    per token (HF's ``...ForTokenClassification``, num_labels = 1), without dropout. From a
    causal LM the head starts at HF's random init; from a saved value model, as saved."""
    path = _model_dir(path)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, num_labels=1)
        config.classifier_dropout = 0.0             # saved with the model; HF's default is 0.1
        model = AutoModelForTokenClassification.from_pretrained(path, config=config, local_files_only=True,
                                                                dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot load the checkpoint as a value model: {e}") from None
    return model.to(device)


def _model_dir(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a model directory (no config.json)")
    return path
