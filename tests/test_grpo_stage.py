"""The GRPO stage's batch rung: micro-batching is exact for every loss variant."""

import pytest
import torch

from r1lab.losses.registry import GRPO_LOSSES
from r1lab.stages.context import RunContext
from r1lab.stages.grpo import GrpoConfig, grpo_batch
from r1lab.forward import prompt_completion_batch

from conftest import random_reward_model, tiny_llama

CPU = RunContext(config=None, run_dir=None, device=torch.device("cpu"))


def grads_after(model, batch, adv, old, ref, cfg):
    model.zero_grad(set_to_none=True)
    stats = grpo_batch(model, batch, adv, old, ref, cfg, CPU)
    return {k: p.grad.clone() for k, p in model.named_parameters()}, stats


@pytest.mark.parametrize("loss", sorted(GRPO_LOSSES))
def test_micro_batches_give_the_full_batch_gradient(tokenizer, loss):
    model = tiny_llama(tokenizer, seed=2)
    torch.manual_seed(0)
    prompts = [tokenizer(t)["input_ids"] for t in ["User: 1+2*3 mod 10\nAssistant:", "7-1*2", "x", "a b c"]]
    completions = torch.randint(0, len(tokenizer), (4, 6))                   # [N, L]
    mask = torch.tensor([[1] * 6, [1] + [0] * 5, [1] * 5 + [0], [1] * 3 + [0] * 3]).bool()  # taken as rows 0, 3, 1, 2
    batch = prompt_completion_batch(prompts, completions, mask, tokenizer.pad_token_id)
    adv = torch.tensor([1.0, -0.5, 0.3, -1.2])
    old = torch.randn(4, 6) * 0.1 - 5.0                                     # ratios far from 1: clipping bites
    ref = torch.randn(4, 6) * 0.1 - 5.0
    common = dict(kind="grpo", name="rl", init="x", loss=loss, beta=0.04, clip_eps_high=0.28,
                  sampling={"max_new_tokens": 6})
    full, full_stats = grads_after(model, batch, adv, old, ref, GrpoConfig(**common))
    parts, part_stats = grads_after(model, batch, adv, old, ref, GrpoConfig(**common, micro_batch_size=1))
    for k in full:
        assert torch.allclose(full[k], parts[k], atol=1e-6), k
    assert set(part_stats) == set(full_stats)
    for k in full_stats:                                    # every logged stat, not only the loss
        assert part_stats[k] == pytest.approx(full_stats[k], abs=1e-6), k
    assert 0 < full_stats["clip_frac"] < 1                  # clipping bites on some tokens, not all
    assert any(g.abs().sum() > 0 for g in full.values())


def test_all_scenario_step_routes_rewards_and_switches_the_reward_model_on_late(tmp_path, tokenizer):
    """Half the prompts are general: accuracy scores the reasoning half, the reward model and the
    judge the general half, format both; the reward model counts only in the last step."""
    from r1lab.config import load_config
    from r1lab.pipeline import run
    from r1lab.train.metrics import read_metrics
    tiny_llama(tokenizer, seed=1).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    random_reward_model(tmp_path / "lm", tmp_path / "rm", tokenizer)             # rewards far from 0
    (tmp_path / "c.yaml").write_text(f"""\
name: t
task: {{kind: arithmetic}}
stages:
  - kind: grpo
    name: all
    init: {tmp_path / "lm"}
    steps: 2
    prompts_per_step: 4
    general_prompts: 2
    group_size: 2
    sampling: {{max_new_tokens: 8}}
    rewards: {{accuracy: 1.0, format: 0.5, reward_model: {{weight: 2.0, model: {tmp_path / "rm"}, last_steps: 1}}}}
""")
    out = run(load_config(str(tmp_path / "c.yaml")), tmp_path / "run", log=lambda *_: None)
    first, last = read_metrics(out / "stages" / "0-all" / "metrics.jsonl")
    for m, rm_weight in ((first, 0.0), (last, 2.0)):
        assert {"reward/accuracy", "reward/judge", "reward/reward_model", "reward/format"} <= set(m)
        # equal halves: accuracy and the reward model each cover half the rows, format all of them
        expected = 0.5 * m["reward/accuracy"] + 0.5 * m["reward/format"] + 0.5 * rm_weight * m["reward/reward_model"]
        assert m["reward/mean"] == pytest.approx(expected, abs=1e-5)
        assert m["accuracy"] == m["reward/accuracy"]
    assert last["reward/reward_model"] != 0.0


@pytest.mark.parametrize("loss", ["grpo", "dapo"])
def test_mask_truncated_rows_add_no_loss(tokenizer, loss):
    """With loss_rows, a masked row's advantage and tokens do not move the gradient; all masked: none."""
    model = tiny_llama(tokenizer, seed=3)
    torch.manual_seed(1)
    prompts = [tokenizer(t)["input_ids"] for t in ["User: 1+2 mod 10\nAssistant:", "3-1", "x y", "z"]]
    completions = torch.randint(0, len(tokenizer), (4, 5))
    batch = prompt_completion_batch(prompts, completions, torch.ones(4, 5, dtype=torch.bool), tokenizer.pad_token_id)
    cfg = GrpoConfig(kind="grpo", name="rl", init="x", loss=loss, beta=0.0, sampling={"max_new_tokens": 5})
    keep = torch.tensor([True, False, True, False])

    def grads(adv, rows):
        model.zero_grad(set_to_none=True)
        grpo_batch(model, batch, adv, None, None, cfg, CPU, loss_rows=rows)
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    a = grads(torch.tensor([1.0, -2.0, -0.5, 3.0]), keep)
    b = grads(torch.tensor([1.0, 5.0, -0.5, -7.0]), keep)                   # only the masked rows' advantages differ
    assert all(torch.allclose(x, y, atol=1e-7) for x, y in zip(a, b))
    assert any(x.abs().sum() > 0 for x in a)
    nothing = grads(torch.tensor([1.0, -2.0, -0.5, 3.0]), torch.zeros(4, dtype=torch.bool))
    assert all(x.abs().sum() == 0 for x in nothing)


def grpo_weights(tmp_path, tokenizer, settings: list[str]) -> dict[str, dict]:
    """The weights two GRPO steps train, once under each line of ``settings`` (YAML of the
    stage), on general prompts scored by a random reward model (rewards differ, weights move)."""
    from safetensors.torch import load_file
    from r1lab.config import load_config
    from r1lab.pipeline import run
    tiny_llama(tokenizer, seed=1).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    random_reward_model(tmp_path / "lm", tmp_path / "rm", tokenizer)
    weights = {}
    for i, setting in enumerate(settings):
        (tmp_path / "c.yaml").write_text(f"""\
name: t
task: {{kind: arithmetic}}
stages:
  - kind: grpo
    name: rl
    init: {tmp_path / "lm"}
    steps: 2
    prompts_per_step: 2
    general_prompts: 2
    group_size: 4
    {setting}
    sampling: {{max_new_tokens: 8}}
    rewards: {{reward_model: {{weight: 1.0, model: {tmp_path / "rm"}}}}}
""")
        out = run(load_config(str(tmp_path / "c.yaml")), tmp_path / f"run-{i}", log=lambda *_: None)
        weights[setting] = load_file(out / "stages" / "0-rl" / "model" / "model.safetensors")
    assert not torch.equal(weights[setting]["model.norm.weight"], torch.ones_like(weights[setting]["model.norm.weight"]))
    return weights


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_activation_checkpointing_trains_the_same_weights(tmp_path, tokenizer):
    w = grpo_weights(tmp_path, tokenizer, ["activation_checkpointing: false", "activation_checkpointing: true"])
    assert same(*w.values())


def test_offloaded_moments_and_reference_train_the_same_weights(tmp_path, tokenizer):
    """AdamW's moments and the reference kept on disk between uses (r1lab/train/offload.py)."""
    w = grpo_weights(tmp_path, tokenizer, ["reference_offload: false", "reference_offload: true\n    optim: {offload: true}"])
    assert same(*w.values())
    assert not (tmp_path / "run-1" / "stages" / "0-rl" / "offload").exists()


def test_reference_offload_needs_a_reference_of_its_own():
    from pydantic import ValidationError
    for kl in ({"beta": 0.0}, {"lora": {"r": 4}}):
        with pytest.raises(ValidationError, match="reference_offload needs a reference model of its own"):
            GrpoConfig(kind="grpo", name="g", init="m", reference_offload=True, **kl)
