"""Load Hugging Face checkpoints from disk, with errors that say which file is wrong."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer


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
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a model directory (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: cannot load the checkpoint: {e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer
