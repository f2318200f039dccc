"""Load Hugging Face checkpoints from disk, with errors that say which file is wrong."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError
from r1lab.errors import R1labError
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, AutoTokenizer)


def quiet_transformers() -> None:
    """Silence transformers' own progress bars and warnings: our bars show progress."""
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


class CheckpointError(R1labError, ValueError):
    """A model directory the user named cannot be loaded; the message names it."""


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def _load(path: Path, auto_class, **kwargs):
    """(model in float32, tokenizer) of ``path`` through ``auto_class``, errors naming the folder."""
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a model directory (no config.json)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"{path}: no tokenizer in the model directory (none of {', '.join(TOKENIZER_FILES)}); "
                              f"save the tokenizer beside the weights")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = auto_class.from_pretrained(path, local_files_only=True, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise CheckpointError(f"{path}: cannot load the checkpoint: {e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_model(path: str | Path, device: torch.device):
    """(model in float32, tokenizer) from an HF model directory. Offline: local files only.

    A tokenizer without a pad token gets its EOS as pad (as Qwen base checkpoints need).
    """
    model, tokenizer = _load(Path(path).expanduser(), AutoModelForCausalLM)
    return model.to(device), tokenizer


def reward_model_from_lm(path: str | Path, device: torch.device, seed: int):
    """(reward model, tokenizer): the causal LM at ``path`` with a new scalar head (HF's
    ``*ForSequenceClassification`` with one label: the backbone, and a ``score`` layer
    initialised from ``seed`` without touching the global RNG). The config's pad id is the tokenizer's."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, tokenizer = _load(Path(path).expanduser(), AutoModelForSequenceClassification, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


def load_reward_model(path: str | Path, device: torch.device):
    """(reward model in float32, eval mode; tokenizer) saved by a ``reward_model`` stage, or any
    HF ``*ForSequenceClassification`` checkpoint with one label. A causal LM is refused: loading
    it here would score with a random head."""
    path = Path(path).expanduser()
    if (path / "config.json").is_file():
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: cannot load the checkpoint: {e}") from None
        archs = config.architectures or []
        if not any(a.endswith("ForSequenceClassification") for a in archs):
            raise CheckpointError(f"{path}: not a reward model (architectures: {', '.join(archs) or 'none'}); "
                                  f"train one from this model with a reward_model stage")
        if config.num_labels != 1:
            raise CheckpointError(f"{path}: a reward model has one output, this one has {config.num_labels}")
    model, tokenizer = _load(path, AutoModelForSequenceClassification)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def load_value_model(path: str | Path, device: torch.device):
    """A value model in float32: the checkpoint's backbone under a linear head with one output
    per token (HF's ``...ForTokenClassification``, num_labels = 1), without dropout. From a
    causal LM the head starts at HF's random init; from a saved value model, as saved."""
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, num_labels=1)
        config.classifier_dropout = 0.0             # saved with the model; HF's default is 0.1
        model = AutoModelForTokenClassification.from_pretrained(path, config=config, local_files_only=True,
                                                                dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot load the checkpoint as a value model: {e}") from None
    return model.to(device)
