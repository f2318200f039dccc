"""Shared fixtures: tiny models and data written to disk, and a reduced config."""

from __future__ import annotations

import contextlib
import json
import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from r1lab import compiled
from r1lab.data.corpus import CorpusMix, documents
from r1lab.models.tokenizer import train_tokenizer

torch.set_num_threads(2)

needs_compiler = pytest.mark.skipif(compiled.compiler() is None, reason="no C compiler to build r1lab's compiled loops")


def built(module):
    """A compiled loop's loader (decode_attention, sampling, packed_attention, elementwise,
    logit_tiles) built and loaded: where there is a compiler, a build that fails fails the test,
    with the compiler's message."""
    compiled.build(module.SOURCE)
    loaded = module.load()
    assert loaded is not None
    return loaded


@contextlib.contextmanager
def pytorch_calls(module, switch: str, monkeypatch):
    """Within it, ``module.load()`` finds ``switch`` set to ``torch`` (None: PyTorch's calls);
    its cached answer is cleared on the way in and out."""
    monkeypatch.setenv(switch, "torch")
    module.load.cache_clear()
    try:
        yield
    finally:
        monkeypatch.delenv(switch)
        module.load.cache_clear()


def assert_masked_invariant(results: list[tuple[float, torch.Tensor]], mask: torch.Tensor) -> None:
    """``results``: (loss, grad) of one loss computed with different junk at masked positions.
    All must agree, and the gradient at masked positions must be exactly zero."""
    (loss, grad), *others = results
    for other_loss, other_grad in others:
        assert other_loss == pytest.approx(loss, abs=1e-6)
        assert torch.allclose(other_grad, grad, atol=1e-6)
    assert torch.all(grad[~mask] == 0)


class StubRollout:
    """Stands in for a Rollout of given texts (length = words) in tests of stages that sample."""

    def __init__(self, texts):
        self._texts = texts
        self.lengths = torch.tensor([len(t.split()) for t in texts])

    def texts(self, tokenizer):
        return self._texts


@pytest.fixture(scope="session")
def tokenizer():
    docs = documents(0, 800, CorpusMix(), "r1-compact")
    return train_tokenizer([p + c for p, c in docs], 512)


def tiny_llama(tokenizer, seed: int = 0, hidden: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=2 * hidden,
                      max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(cfg).eval()


def random_reward_model(lm_dir, out_dir, tokenizer) -> None:
    """Save to ``out_dir`` a reward model on the LM at ``lm_dir`` whose new scalar head is drawn
    with std 1, so its rewards lie far apart (a learnable signal for RL tests)."""
    from r1lab.models.io import reward_model_from_lm
    rm, _ = reward_model_from_lm(lm_dir, torch.device("cpu"), seed=0)
    torch.nn.init.normal_(rm.score.weight, std=1.0)
    rm.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory, tokenizer):
    """A tiny Qwen2 checkpoint on disk, shaped like Qwen2.5 (biases on q/k/v, GQA, tied)."""
    path = tmp_path_factory.mktemp("qwen-tiny")
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                      max_position_embeddings=512, tie_word_embeddings=True,
                      eos_token_id=tokenizer.eos_token_id)
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def gsm8k_dir(tmp_path_factory):
    """GSM8K-shaped JSONL files: answers are worked text ending in '#### N'."""
    path = tmp_path_factory.mktemp("gsm8k")
    rng = random.Random(0)
    for split, n in (("train", 40), ("test", 8)):
        with open(path / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                a, b = rng.randint(1, 50), rng.randint(1, 50)
                f.write(json.dumps({"question": f"Tom has {a} apples and buys {b} more. How many?",
                                    "answer": f"{a}+{b}={a + b}\n#### {a + b}"}) + "\n")
    return path


def broken_and_unbroken(config, tmp_path, monkeypatch, die_after: int = 3):
    """Run ``config`` once unbroken, and once stopped (KeyboardInterrupt) right after step
    ``die_after`` of its training stage, then resumed; returns the two run directories."""
    from r1lab.pipeline import run
    from r1lab.train.loop import TrainLoop
    quiet = {"log": lambda *_: None}
    unbroken = run(config, tmp_path / "unbroken", **quiet)
    real_end_step = TrainLoop.end_step

    def dies(self, values, *args, **kwargs):
        real_end_step(self, values, *args, **kwargs)
        if self.step == die_after:
            raise KeyboardInterrupt
    monkeypatch.setattr(TrainLoop, "end_step", dies)
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "broken", **quiet)
    monkeypatch.setattr(TrainLoop, "end_step", real_end_step)
    return unbroken, run(config, tmp_path / "broken", **quiet)


def assert_same_stage(a, b, stage: str, steps: int) -> list[dict]:
    """Stage ``stage`` of run dirs ``a`` and ``b`` ended the same: metrics (but wall-clock ones)
    and weights bit-equal, ``steps`` steps logged once each; returns ``b``'s metrics."""
    from safetensors.torch import load_file
    from r1lab.train.metrics import read_metrics
    strip = lambda ms: [{k: v for k, v in m.items() if k not in ("time_s", "tokens_per_s", "rollout_s")} for m in ms]
    ma, mb = (read_metrics(d / "stages" / stage / "metrics.jsonl") for d in (a, b))
    assert [m["step"] for m in mb] == list(range(1, steps + 1)) and strip(ma) == strip(mb)
    wa, wb = (load_file(d / "stages" / stage / "model" / "model.safetensors") for d in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    return mb
