"""The dpo stage on a tiny Llama: reference log-probs, accumulation, every loss, learning, resume."""

import json
import math
import random

import pytest
import torch

from r1lab.config import ConfigError, load_config
from r1lab.losses.registry import DPO_LOSSES
from r1lab.pipeline import run
from r1lab.stages.context import RunContext
from r1lab.stages.dpo import DpoConfig, dpo_batch, encode_pairs, reference_logprobs
from r1lab.train.metrics import read_metrics

from conftest import assert_same_stage, broken_and_unbroken, tiny_llama

CPU = RunContext(config=None, run_dir=None, device=torch.device("cpu"))


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """Learnable preferences: the same tokens in either order, the chosen one answer first."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"prompt": f"User: {a}+{b} mod 10\nAssistant:",
                     "chosen": f" <answer>{(a + b) % 10}</answer> <think>{a}+{b}</think>",
                     "rejected": f" <think>{a}+{b}</think> <answer>{(a + b) % 10}</answer>"})
    return rows


@pytest.fixture
def llama_dir(tmp_path, tokenizer):
    tiny_llama(tokenizer, seed=1).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


def cfg(**kw):
    return DpoConfig(kind="dpo", name="dpo", init="m", data="d", **kw)


def test_reference_logprobs_equal_a_plain_forward_of_each_pair(tokenizer):
    """The batched, padded reference pass (3 pairs per forward) against one unpadded forward of
    prompt + response per response: the slow reference."""
    model = tiny_llama(tokenizer, seed=3)
    pairs = encode_pairs(make_pairs(7), tokenizer, 512)
    got = reference_logprobs(model, pairs, tokenizer.pad_token_id, CPU, micro=3)
    for (p, c, r), (got_c, got_r) in zip(pairs, got):
        for response, logp in ((c, got_c), (r, got_r)):
            ids = torch.tensor([p + response])                                      # [1, P+L]
            full = model(input_ids=ids).logits[0, :-1].log_softmax(-1)              # [P+L-1, V]
            want = full.gather(-1, ids[0, 1:, None]).squeeze(-1)[len(p) - 1:]       # [L]
            assert logp.shape == want.shape
            assert torch.allclose(logp, want, atol=1e-5)
    assert all(c[-1] == tokenizer.eos_token_id and r[-1] == tokenizer.eos_token_id for _, c, r in pairs)


@pytest.mark.parametrize("loss", ["dpo", "ipo", "rdpo"])
def test_micro_batching_gives_the_full_batch_gradient(tokenizer, loss):
    pairs = encode_pairs(make_pairs(5), tokenizer, 512)
    ref = reference_logprobs(tiny_llama(tokenizer, seed=4), pairs, tokenizer.pad_token_id, CPU, micro=5)
    results = []
    for micro in (0, 2):
        model = tiny_llama(tokenizer, seed=3)                    # policy != reference: h != 0
        stats = dpo_batch(model, pairs, ref, tokenizer.pad_token_id, cfg(loss=loss), CPU, train=True, micro=micro)
        results.append((stats, {k: p.grad.clone() for k, p in model.named_parameters()}))
    (full_stats, full), (acc_stats, acc) = results
    assert full_stats == pytest.approx(acc_stats, rel=1e-6, abs=1e-6)
    scale = max(g.abs().max().item() for g in full.values())                 # ~0.2; ~40 for IPO
    assert scale > 0
    assert all(torch.allclose(full[k], acc[k], rtol=1e-5, atol=1e-6 * scale) for k in full)


CONFIG = """\
name: dpo-test
seed: 0
task: {kind: arithmetic}
stages:
  - kind: dpo
    name: dpo
    init: %s
    data: %s
    loss: %s
    epochs: %d
    batch_size: 8
    val_fraction: 0.25
    eval_every: 2
    checkpoint_every: 2
    optim: {lr: 0.003, warmup_steps: 1}
"""


def against_the_start(rows: list[dict], llama_dir) -> list[dict]:
    """Each pair turned so that its chosen response is the one the initial model finds less
    likely: then logp_accuracy starts at 0, whatever the tokenizer makes of the two orders."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tok = AutoModelForCausalLM.from_pretrained(llama_dir), AutoTokenizer.from_pretrained(llama_dir)
    logps = reference_logprobs(model, encode_pairs(rows, tok, 512), tok.pad_token_id, CPU, micro=8)
    return [r if c.sum() < j.sum() else {**r, "chosen": r["rejected"], "rejected": r["chosen"]}
            for r, (c, j) in zip(rows, logps)]


def write_run(tmp_path, llama_dir, epochs, loss="dpo", n=32):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in against_the_start(make_pairs(n), llama_dir)))
    path = tmp_path / f"dpo-{loss}.yaml"
    path.write_text(CONFIG % (llama_dir, data, loss, epochs))
    return path


def test_a_few_steps_raise_the_heldout_margin_and_accuracy(tmp_path, llama_dir):
    """24 training pairs (3 steps an epoch), 8 held out; 4 epochs."""
    out = run(load_config(str(write_run(tmp_path, llama_dir, 4))), tmp_path / "run", log=lambda *_: None)
    stage = out / "stages" / "0-dpo"
    metrics = read_metrics(stage / "metrics.jsonl")
    val = json.loads((stage / "val.json").read_text())
    start, final = val["start"], val["final"]
    assert val["pairs"] == 8 and len(metrics) == 12
    # the start model is the reference: every implicit reward is 0, so the loss is log 2
    assert start["rewards/margins"] == 0 and start["rewards/accuracies"] == 0
    assert start["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)   # step 1 trains from the reference
    assert final["rewards/margins"] > 2 and final["rewards/accuracies"] == 1
    assert final["loss"] < 0.25 * start["loss"] and metrics[-1]["loss"] < 0.25 * metrics[0]["loss"]
    # reference-free: the start model prefers every rejected response, the final one every chosen
    assert start["logp_accuracy"] == 0 and final["logp_accuracy"] == 1
    assert metrics[-1]["val/rewards/margins"] == final["rewards/margins"]
    assert {"rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "lr",
            "grad_norm", "val/logp_accuracy"} <= set(metrics[-1])
    assert "val/loss" in metrics[1] and "val/loss" not in metrics[0]          # eval_every 2


# Step 1 trains from the reference, so h = 0 and each loss is its value there: dpo, cdpo, rdpo
# log 2 (for any eps), ipo (1 / (2 beta))^2 = 25 at beta 0.1, hinge max(0, 1 - 0) = 1.
AT_REFERENCE = {"dpo": math.log(2), "ipo": 25.0, "hinge": 1.0, "cdpo": math.log(2), "rdpo": math.log(2)}


@pytest.mark.parametrize("loss", sorted(DPO_LOSSES))
def test_each_loss_runs_a_step(tmp_path, llama_dir, loss):
    path = write_run(tmp_path, llama_dir, 1, loss=loss, n=12)                # 9 pairs: 2 steps
    out = run(load_config(str(path), ["stages.0.eval_every=100"]), tmp_path / "run", log=lambda *_: None)
    metrics = read_metrics(out / "stages" / "0-dpo" / "metrics.jsonl")
    assert metrics[0]["loss"] == pytest.approx(AT_REFERENCE[loss], rel=1e-4)
    assert all(math.isfinite(m["loss"]) and m["grad_norm"] > 0 for m in metrics)
    assert math.isfinite(metrics[-1]["val/loss"])


def test_resume_mid_stage_equals_an_unbroken_run(tmp_path, llama_dir, monkeypatch):
    config = load_config(str(write_run(tmp_path, llama_dir, 2)))             # 6 steps, checkpoints at 2, 4
    unbroken, broken = broken_and_unbroken(config, tmp_path, monkeypatch)     # the second resumes from step 2
    assert_same_stage(unbroken, broken, "0-dpo", 6)
    assert (unbroken / "stages/0-dpo/val.json").read_text() == (broken / "stages/0-dpo/val.json").read_text()


def test_a_dangling_data_reference_fails_at_config_load(tmp_path, llama_dir):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG % (llama_dir, "sft-pairs", "dpo", 1))
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert f"{path}:8: stages[0].data: 'sft-pairs' is neither an earlier stage that writes a data" in str(e.value)
