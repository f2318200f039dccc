"""LoRA / DoRA through PEFT: what the adapted model computes, what trains, what rollouts and the
KL reference see, and what a stage saves."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from r1lab.config import load_config
from r1lab.models.adapters import AdaptersOff, Lora, merged_for_decoding, with_adapters
from r1lab.pipeline import run
from r1lab.rewards import REWARDS
from r1lab.rollout import generate
from r1lab.stages.context import RunContext
from r1lab.stages.grpo import GrpoConfig, grpo_batch
from r1lab.forward import logprobs_no_grad, prompt_completion_batch
from r1lab.train.optim import build_optimizer

from conftest import assert_same_stage, broken_and_unbroken, tiny_llama

CPU = RunContext(config=None, run_dir=None, device=torch.device("cpu"))


def nudged(model, std=0.05):
    """Adapters that are no longer the identity (B starts at 0; DoRA's magnitude at the row norms)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_magnitude" in name:
                p.add_(torch.randn_like(p) * std)
    return model


def adapted(tokenizer, use_dora=False, seed=3, qwen_dir=None):
    base = (AutoModelForCausalLM.from_pretrained(qwen_dir) if qwen_dir else tiny_llama(tokenizer, seed=seed))
    return nudged(with_adapters(base, Lora(r=4, alpha=8, use_dora=use_dora), seed=0)).eval()


def a_batch(tokenizer, n=4, length=6):
    torch.manual_seed(0)
    prompts = [tokenizer(t)["input_ids"] for t in ["User: 1+2*3 mod 10\nAssistant:", "7-1*2", "x", "a b c"]][:n]
    completions = torch.randint(0, len(tokenizer), (n, length))
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[1, 3:] = False
    return prompt_completion_batch(prompts, completions, mask, tokenizer.pad_token_id)


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_merged_weights_compute_what_the_adapters_do(tokenizer, qwen_dir, use_dora, family):
    model = adapted(tokenizer, use_dora, qwen_dir=qwen_dir if family == "qwen2" else None)
    batch = a_batch(tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unmerged = logprobs_no_grad(model, batch)
    with merged_for_decoding(model) as plain:
        assert not isinstance(plain, PeftModel)
        merged = logprobs_no_grad(plain, batch)
    assert torch.allclose(merged, unmerged, atol=1e-5)
    for k, v in model.state_dict().items():                   # unmerged again, to float rounding
        assert torch.allclose(v, before[k], atol=1e-6), k
    base = logprobs_no_grad(AdaptersOff(model), batch)
    assert (base - unmerged).abs().max() > 1e-3              # the nudge matters, so the checks above bite


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_rollouts_decode_with_the_adapters(tokenizer, qwen_dir, family):
    """Greedy tokens of the adapted model equal those of a plain copy with the adapters merged
    for good, on the native backend and on HF's (Qwen2: the q/k/v biases pass through)."""
    load = lambda: adapted(tokenizer, qwen_dir=qwen_dir if family == "qwen2" else None)
    model = load()
    prompts = [tokenizer("User: 3+4 mod 10\nAssistant:")["input_ids"], tokenizer("9-2")["input_ids"]]
    kw = dict(n=2, max_new_tokens=8, temperature=0.0, top_p=1.0, top_k=0, eos_token_id=tokenizer.eos_token_id,
              pad_token_id=tokenizer.pad_token_id, stop=[], seed=0)
    merged_for_good = load().merge_and_unload()
    for backend in ("native", "hf"):
        got = generate(model, prompts, backend=backend, **kw)
        want = generate(merged_for_good, prompts, backend=backend, **kw)
        assert torch.equal(got.completion_ids, want.completion_ids), backend
        assert torch.allclose(got.logprobs, want.logprobs, atol=1e-5), backend
    with model.disable_adapter():
        plain = generate(model.get_base_model(), prompts, backend="native", **kw)
    assert (plain.logprobs - want.logprobs).abs().max() > 1e-3           # the adapters change what is decoded


def test_reference_is_the_base_weights_with_no_second_copy(tokenizer):
    model = adapted(tokenizer)
    batch = a_batch(tokenizer)
    base = logprobs_no_grad(tiny_llama(tokenizer, seed=3), batch)
    assert torch.allclose(logprobs_no_grad(AdaptersOff(model), batch), base, atol=1e-6)


@pytest.mark.parametrize("use_dora", [False, True])
def test_a_grpo_step_moves_only_the_adapters(tokenizer, use_dora):
    model = with_adapters(tiny_llama(tokenizer, seed=3), Lora(r=4, alpha=8, use_dora=use_dora), seed=0)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.0)
    batch = a_batch(tokenizer)
    cfg = GrpoConfig(kind="grpo", name="rl", init="x", beta=0.04, sampling={"max_new_tokens": 6})
    ref = logprobs_no_grad(AdaptersOff(model), batch)
    for _ in range(2):                                        # B = 0 at first: A's gradient is 0 until B moves
        grpo_batch(model, batch, torch.tensor([1.0, -0.5, 0.3, -1.2]), None, ref, cfg, CPU)
        opt.step()
        opt.zero_grad()
    moved = {k for k, p in model.named_parameters() if not torch.equal(p, before[k])}
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert moved == trainable
    assert all("lora_" in k for k in trainable)
    assert any("lora_A" in k for k in moved) and any("lora_B" in k for k in moved)
    assert any("lora_magnitude" in k for k in moved) == use_dora   # DoRA's magnitude vector trains


GRPO = """\
name: lora
seed: 0
task: {kind: arithmetic}
stages:
  - kind: grpo
    name: rl
    init: %s
    steps: 4
    prompts_per_step: 2
    group_size: 4
    checkpoint_every: 2
    sampling: {max_new_tokens: 12}
    optim: {lr: 0.01}
    lora: {r: 4, alpha: 8, use_dora: %s}
"""


@pytest.fixture
def lm_dir(tmp_path, tokenizer):
    tiny_llama(tokenizer, seed=3).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    return tmp_path / "lm"


def ones(completion, example):
    """A reward a random model's samples vary on (the task's never pays at random init)."""
    return len(set(completion)) / 20


def test_a_lora_stage_saves_a_merged_model_and_its_adapter(tmp_path, lm_dir, monkeypatch):
    monkeypatch.setitem(REWARDS, "accuracy", ones)
    (tmp_path / "c.yaml").write_text(GRPO % (lm_dir, "true"))
    out = run(load_config(str(tmp_path / "c.yaml")), tmp_path / "run", log=lambda *_: None) / "stages" / "0-rl"
    saved = AutoModelForCausalLM.from_pretrained(out / "model")             # plain HF: no PEFT needed
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["use_dora"] is True
    rebuilt = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lm_dir), out / "adapter").merge_and_unload()
    base = AutoModelForCausalLM.from_pretrained(lm_dir).state_dict()
    changed = 0
    for k, v in saved.state_dict().items():
        assert torch.allclose(v, rebuilt.state_dict()[k], atol=1e-6), k
        changed += not torch.equal(v, base[k])
    assert changed > 0                                                        # training moved the merged weights


def test_a_lora_stage_resumed_mid_way_equals_an_unbroken_one(tmp_path, lm_dir, monkeypatch):
    monkeypatch.setitem(REWARDS, "accuracy", ones)
    (tmp_path / "c.yaml").write_text(GRPO % (lm_dir, "false"))
    unbroken, broken = broken_and_unbroken(load_config(str(tmp_path / "c.yaml")), tmp_path, monkeypatch, die_after=3)
    assert_same_stage(unbroken, broken, "0-rl", 4)
