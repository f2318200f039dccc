"""The reward_model stage and the learned-reward scorer on tiny models: where the reward is
read, accumulation, learning a preference, resume, the saved model, bad data, ``part: summary``."""

import json
from pathlib import Path
import random

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from r1lab.config import load_config
from r1lab.errors import DataError
from r1lab.models.io import CheckpointError, load_reward_model, reward_model_from_lm
from r1lab.pipeline import run
from r1lab.rewards.learned import Rewards, RewardModelScorer, collate_reward_inputs, reward_inputs, sequence_rewards
from r1lab.stages.context import RunContext
from r1lab.stages.reward_model import RewardModelConfig, encode_pairs, pair_rewards
from r1lab.train.metrics import read_metrics
from r1lab.train.supervised import split_rows

from conftest import assert_same_stage, broken_and_unbroken, tiny_llama

CPU = RunContext(config=None, run_dir=None, device=torch.device("cpu"))
STAGE = "stages/0-rm"


def synthetic_pairs(n: int, seed: int = 0) -> list[dict]:
    """Chosen responses answer with a digit, rejected ones with letters; think blocks are noise."""
    rng = random.Random(seed)
    noise = lambda: " ".join(rng.choice(["a", "b", "1", "2", "+", "="]) for _ in range(rng.randint(1, 4)))
    letters = lambda: " ".join(rng.choice("xyzw") for _ in range(3))
    return [{"prompt": f"User: {rng.randint(1, 9)}+{rng.randint(1, 9)} mod 10\nAssistant:",
             "chosen": f" <think>{noise()}</think> <answer>{rng.randint(0, 9)}</answer>",
             "rejected": f" <think>{noise()}</think> <answer>{letters()}</answer>"} for _ in range(n)]


@pytest.fixture
def llama_dir(tmp_path, tokenizer):
    tiny_llama(tokenizer, seed=1).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


def cfg(**kw):
    return RewardModelConfig(kind="reward_model", name="rm", init="m", data="d", **kw)


CONFIG = """\
name: rm-test
seed: 0
task: {kind: arithmetic}
stages:
  - kind: reward_model
    name: rm
    init: %s
    data: %s
    epochs: %d
    pooling: %s
    batch_size: 6
    val_fraction: 0.25
    eval_every: 5
    checkpoint_every: 2
    optim: {lr: 3e-3, warmup_steps: 2}
"""


def write_run(tmp_path, llama_dir, epochs, rows=None, pooling="last"):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows or synthetic_pairs(40)))
    path = tmp_path / "rm.yaml"
    path.write_text(CONFIG % (llama_dir, data, epochs, pooling))
    return load_config(str(path))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer):
    """One 10-step run (30 train pairs, 10 held out, 5 steps an epoch) shared by several tests."""
    tmp = tmp_path_factory.mktemp("rm")
    tiny_llama(tokenizer, seed=1).save_pretrained(tmp / "llama")
    tokenizer.save_pretrained(tmp / "llama")
    return run(write_run(tmp, tmp / "llama", epochs=2), tmp / "run", log=lambda *_: None)


def test_held_out_pairs_come_from_prompts_never_trained_on():
    """With every two replies paired, one prompt gives many pairs: splitting pairs would put the
    same replies on both sides and overstate held-out accuracy."""
    rows = [{"prompt": f"p{i % 7}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(70)]
    split = lambda fraction: split_rows(rows, fraction, "rm-val-0", Path("p.jsonl"), group=lambda r: r["prompt"])
    train, val = split(0.25)
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in val})
    assert len(train) + len(val) == 70 and 0.25 * 70 <= len(val) < 0.25 * 70 + 10
    assert split(0.25) == (train, val)
    assert split(0.99)[0]                          # one prompt is always left to train on


def test_reward_is_read_at_the_last_real_token_as_hf_pools_an_unpadded_row(llama_dir, tokenizer):
    """The slow reference: HF's own forward (score at every position, then pooled) on one row alone."""
    model, _ = reward_model_from_lm(llama_dir, torch.device("cpu"), seed=0)
    for row in synthetic_pairs(3):
        batch = reward_inputs(tokenizer, [row["prompt"]], [row["chosen"]], part="full", max_length=512)
        with torch.no_grad():
            assert sequence_rewards(model, batch).item() == pytest.approx(model(**batch).logits.item(), abs=1e-6)


def test_a_summed_reward_is_the_heads_outputs_added_over_an_unpadded_row(llama_dir, tokenizer):
    """The slow reference for ``pooling: sum``: HF's backbone and head on one row alone, summed."""
    model, _ = reward_model_from_lm(llama_dir, torch.device("cpu"), seed=0)
    model.config.reward_pooling = "sum"
    for row in synthetic_pairs(3):
        batch = reward_inputs(tokenizer, [row["prompt"]], [row["chosen"]], part="full", max_length=512)
        with torch.no_grad():
            want = model.score(model.model(input_ids=batch["input_ids"]).last_hidden_state).sum().item()
            assert sequence_rewards(model, batch).item() == pytest.approx(want, abs=1e-5)
    model.config.reward_pooling = "mean"
    with pytest.raises(ValueError, match="reward_pooling must be 'last' or 'sum', not 'mean'"):
        sequence_rewards(model, batch)


@pytest.mark.parametrize("pooling", ["last", "sum"])
@pytest.mark.parametrize("which", ["llama", "qwen-pad-is-eos"])
def test_padded_batch_gives_each_rows_reward_alone_whatever_the_padding_side(which, pooling, llama_dir, qwen_dir, tokenizer):
    path = llama_dir if which == "llama" else qwen_dir
    model, tok = reward_model_from_lm(path, torch.device("cpu"), seed=0)
    model.config.reward_pooling = pooling
    if which != "llama":
        tok.pad_token = tok.eos_token                                   # as Qwen's: HF's pooling would misread
        model.config.pad_token_id = tok.pad_token_id
    rows = synthetic_pairs(4)
    prompts, completions = [r["prompt"] for r in rows], [r["chosen"] + tok.eos_token * (i % 2) for i, r in enumerate(rows)]
    right = reward_inputs(tok, prompts, completions, part="full", max_length=512)
    assert (right["attention_mask"] == 0).any()
    ids = [right["input_ids"][i, right["attention_mask"][i] == 1].tolist() for i in range(len(rows))]
    width = max(map(len, ids))                                          # the same rows, padded on the left
    left = {"input_ids": torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in ids]),
            "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])}
    left["position_ids"] = (left["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        alone = torch.cat([sequence_rewards(model, collate_reward_inputs([r], tok.pad_token_id)) for r in ids])
        assert torch.allclose(sequence_rewards(model, right), alone, atol=1e-5)
        assert torch.allclose(sequence_rewards(model, left), alone, atol=1e-5)


def test_micro_batches_accumulate_the_full_batch_gradient(llama_dir, tokenizer):
    pairs = encode_pairs(synthetic_pairs(5), tokenizer, cfg(part="full"))
    results = []
    for micro in (0, 2):                                                # 5 pairs as 2 + 2 + 1
        model, _ = reward_model_from_lm(llama_dir, torch.device("cpu"), seed=0)
        r_c, r_r = pair_rewards(Rewards(model), pairs, tokenizer.pad_token_id, CPU, train=True, micro=micro)
        results.append((r_c, r_r, {k: p.grad.clone() for k, p in model.named_parameters()}))
    (c0, r0, full), (c1, r1, acc) = results
    assert torch.allclose(c0, c1, atol=1e-6) and torch.allclose(r0, r1, atol=1e-6)
    assert full["score.weight"].abs().sum() > 0
    assert all(torch.allclose(full[k], acc[k], atol=1e-6) for k in full)


def test_training_learns_the_preference_on_held_out_pairs(trained):
    metrics = read_metrics(trained / STAGE / "metrics.jsonl")
    assert len(metrics) == 10
    assert {"loss", "accuracy", "margin", "reward/chosen", "reward/rejected", "lr", "grad_norm"} <= set(metrics[0])
    assert [m["step"] for m in metrics if "val/accuracy" in m] == [5, 10]
    first, last = sum(m["loss"] for m in metrics[:4]) / 4, sum(m["loss"] for m in metrics[-4:]) / 4
    assert last < first / 2, (first, last)
    val = json.loads((trained / STAGE / "val.json").read_text())
    assert val["end"]["val/accuracy"] >= 0.9 and val["end"]["val/loss"] < val["start"]["val/loss"] - 0.3, val
    assert val["end"]["val/margin"] > val["start"]["val/margin"]
    assert val["end"]["val/accuracy"] == metrics[-1]["val/accuracy"]


def scored_as_the_stage_scores(path):
    """(scorer's rewards of 6 pairs' chosen then rejected replies, the stage's chosen and rejected
    rewards of them, the first chosen row's input); asserts the scorer equals the stage."""
    model, tok = load_reward_model(path, torch.device("cpu"))
    rows = synthetic_pairs(6, seed=7)
    scorer = RewardModelScorer(path, torch.device("cpu"), part="summary", batch_size=4)
    got = scorer([r["prompt"] for r in rows * 2], [r["chosen"] for r in rows] + [r["rejected"] for r in rows], rows * 2)
    r_c, r_r = pair_rewards(Rewards(model), encode_pairs(rows, tok, cfg()), tok.pad_token_id, CPU, train=False, micro=2)
    assert got == pytest.approx(torch.cat([r_c, r_r]).tolist(), abs=1e-5)  # the scorer == the stage
    return got, r_c, r_r, reward_inputs(tok, [rows[0]["prompt"]], [rows[0]["chosen"]], part="summary", max_length=1024)


def test_the_saved_model_loads_in_transformers_and_scores_as_the_stage_did(trained, tokenizer):
    path = trained / STAGE / "model"
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and len(config["id2label"]) == 1
    assert config["pad_token_id"] == tokenizer.pad_token_id
    hf = AutoModelForSequenceClassification.from_pretrained(path).eval()
    got, r_c, r_r, one = scored_as_the_stage_scores(path)
    assert all(c > r for c, r in zip(r_c, r_r))
    with torch.no_grad():
        assert hf(**one).logits.item() == pytest.approx(got[0], abs=1e-5)


def test_a_summed_reward_model_learns_and_is_scored_as_it_was_trained(tmp_path, llama_dir, tokenizer):
    trained = run(write_run(tmp_path, llama_dir, epochs=2, pooling="sum"), tmp_path / "run", log=lambda *_: None)
    val = json.loads((trained / STAGE / "val.json").read_text())
    assert val["end"]["val/accuracy"] >= 0.9 and val["end"]["val/loss"] < val["start"]["val/loss"] - 0.3, val
    path = trained / STAGE / "model"
    assert json.loads((path / "config.json").read_text())["reward_pooling"] == "sum"
    model, _ = load_reward_model(path, torch.device("cpu"))
    got, _, _, one = scored_as_the_stage_scores(path)
    with torch.no_grad():                                               # not what HF's last-token pooling reads
        assert model(**one).logits.item() != pytest.approx(got[0], abs=1e-3)


def test_load_reward_model_refuses_what_is_not_one(llama_dir, tmp_path):
    with pytest.raises(CheckpointError, match="not a reward model .*LlamaForCausalLM"):
        load_reward_model(llama_dir, torch.device("cpu"))
    with pytest.raises(CheckpointError, match="no config.json"):
        load_reward_model(tmp_path / "nowhere", torch.device("cpu"))


def test_summary_ignores_the_think_block_and_full_does_not(trained, tokenizer):
    completions = [" <think>1+2=3 so 7</think> <answer>7</answer>", " <think>x y z w</think> <answer>7</answer>"]
    for part, same in (("summary", True), ("full", False)):
        ids = reward_inputs(tokenizer, ["Q:"] * 2, completions, part=part, max_length=512)["input_ids"]
        assert torch.equal(ids[0], ids[1]) == same
        scorer = RewardModelScorer(trained / STAGE / "model", torch.device("cpu"), part=part, batch_size=1)
        a, b = scorer(["Q:"] * 2, completions, [{}, {}])
        assert (a == b) == same, (part, a, b)


def test_resume_mid_stage_equals_an_unbroken_run(tmp_path, llama_dir, monkeypatch):
    config = write_run(tmp_path, llama_dir, epochs=1)                    # 5 steps, checkpoints at 2, 4
    unbroken, broken = broken_and_unbroken(config, tmp_path, monkeypatch)  # the second resumes from step 2
    assert_same_stage(unbroken, broken, STAGE.split("/")[-1], 5)
    assert (unbroken / STAGE / "val.json").read_text() == (broken / STAGE / "val.json").read_text()


def test_a_bad_pairs_file_names_file_line_and_field(tmp_path, llama_dir):
    rows = synthetic_pairs(4)
    rows[2] = {"prompt": "Q", "chosen": "a", "rejected": 3}
    config = write_run(tmp_path, llama_dir, epochs=1, rows=rows)
    with pytest.raises(DataError, match=r"pairs\.jsonl:3: field 'rejected': expected text, got int"):
        run(config, tmp_path / "run", log=lambda *_: None)
