"""The sft stage on a tiny Llama: masking, accumulation, memorising, resume, data order."""

import json

import pytest
import torch

from r1lab.config import load_config
from r1lab.pipeline import run
from r1lab.stages.context import RunContext
from r1lab.stages.sft import SftConfig
from r1lab.train.metrics import read_metrics
from r1lab.train.supervised import batch_rows, collate, encode, nll_batch

from conftest import assert_same_stage, broken_and_unbroken, tiny_llama

CPU = RunContext(config=None, run_dir=None, device=torch.device("cpu"))
ROWS = [{"prompt": "User: 1+2*3 mod 10\nAssistant:", "completion": " <think>1+2=3 2 left</think> <answer>7</answer>"},
        {"prompt": "User: 5-1*2 mod 10\nAssistant:", "completion": " <answer>3</answer>"},
        {"messages": [{"role": "user", "content": "9+9*2 mod 10"}, {"role": "assistant", "content": " <answer>7</answer>"}]},
        {"prompt": "Hello", "completion": " hi"}]


@pytest.fixture
def llama_dir(tmp_path, tokenizer):
    tiny_llama(tokenizer, seed=1).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


def cfg(**kw):
    return SftConfig(kind="sft", name="sft", init="m", data="d", **kw)


def test_loss_counts_completion_tokens_only(tokenizer):
    """The batch loss equals the mean next-token NLL of each row's completion tokens (+ EOS) taken
    from a plain forward of that row alone: prompt tokens and padding add nothing."""
    model = tiny_llama(tokenizer, seed=3)
    pairs = encode(ROWS, tokenizer, 512)
    assert pairs[2][0] == tokenizer("User: 9+9*2 mod 10\nAssistant:")["input_ids"]   # chat template
    assert all(c[-1] == tokenizer.eos_token_id for _, c in pairs)
    nll, count = 0.0, 0
    for p, c in pairs:
        ids = torch.tensor([p + c])
        logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)                    # [P+C-1, V]
        targets = ids[0, 1:]
        picked = logp.gather(-1, targets[:, None]).squeeze(-1)[len(p) - 1:]          # completion only
        nll, count = nll - picked.sum().item(), count + len(c)
    got = nll_batch(model, pairs, tokenizer.pad_token_id, "token", CPU, train=False, micro=0)
    assert got == pytest.approx(nll / count, abs=1e-5)


def test_padding_and_prompt_tokens_get_no_gradient(tokenizer):
    model = tiny_llama(tokenizer, seed=3)
    batch = collate(encode(ROWS, tokenizer, 512), tokenizer.pad_token_id)
    mask = batch["completion_mask"]
    assert (~mask).any() and (batch["attention_mask"] == 0).any()               # there is padding
    from r1lab.losses.sft import sft_nll
    from r1lab.forward import completion_logprobs
    logp, _ = completion_logprobs(model, batch)
    logp.retain_grad()
    loss, _ = sft_nll(logp, mask, reduction="token")
    loss.backward()
    assert torch.all(logp.grad[~mask] == 0) and torch.all(logp.grad[mask] != 0)


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_gradient_accumulation_equals_one_big_batch(tokenizer, reduction):
    pairs = encode(ROWS, tokenizer, 512)
    grads = []
    for micro in (0, 1):
        model = tiny_llama(tokenizer, seed=3)
        loss = nll_batch(model, pairs, tokenizer.pad_token_id, reduction, CPU, train=True, micro=micro)
        grads.append((loss, {k: p.grad.clone() for k, p in model.named_parameters()}))
    (full_loss, full), (acc_loss, acc) = grads
    assert acc_loss == pytest.approx(full_loss, abs=1e-6)
    assert all(torch.allclose(full[k], acc[k], atol=1e-6) for k in full)


def test_each_epoch_visits_every_row_once_in_its_own_order():
    epochs = [[i for s in range(e * 3, e * 3 + 3) for i in batch_rows(s, 10, 4, seed=0)] for e in range(2)]
    assert all(sorted(e) == list(range(10)) for e in epochs)                    # 4 + 4 + 2 rows
    assert epochs[0] != epochs[1]


CONFIG = """\
name: sft-test
seed: 0
task: {kind: arithmetic}
stages:
  - kind: sft
    name: sft
    init: %s
    data: %s
    epochs: %d
    batch_size: %d
    val_fraction: 0
    checkpoint_every: 2
    optim: {lr: %s, warmup_steps: 2, min_lr_ratio: %s}
"""


def write_run(tmp_path, llama_dir, epochs, batch_size=2, lr=3e-3, min_lr_ratio=0.1):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    path = tmp_path / "sft.yaml"
    path.write_text(CONFIG % (llama_dir, data, epochs, batch_size, lr, min_lr_ratio))
    return path


def test_sft_on_a_few_rows_drives_their_loss_near_zero(tmp_path, llama_dir):
    path = write_run(tmp_path, llama_dir, 60, batch_size=4, lr=5e-3, min_lr_ratio=1.0)   # all 4 rows each step
    out = run(load_config(str(path)), tmp_path / "run", log=lambda *_: None)
    losses = [m["loss"] for m in read_metrics(out / "stages" / "0-sft" / "metrics.jsonl")]
    assert len(losses) == 60 and losses[0] > 3 and losses[-1] < 0.05, (losses[0], losses[-1])


def test_resume_mid_epoch_equals_an_unbroken_run(tmp_path, llama_dir, monkeypatch):
    config = load_config(str(write_run(tmp_path, llama_dir, 3)))             # 6 steps, checkpoints at 2, 4
    unbroken, broken = broken_and_unbroken(config, tmp_path, monkeypatch)     # the second resumes from step 2
    assert_same_stage(unbroken, broken, "0-sft", 6)
