"""Data parallelism under torchrun: a 2-process gloo run equals the 1-process run with the same
global batch, for pre-training, SFT, DPO, a reward model, distillation and GRPO (r1lab/train/distributed.py),
and it resumes."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from r1lab.rollout import hf, native
from r1lab.train.distributed import Dist, DistributedError, in_row_order, micro_batch_slices

from conftest import random_reward_model, tiny_llama


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_a_batch_in_order_and_differ_by_at_most_one(world):
    for n in range(world, 12):
        shares = [range(n)[Dist(rank=r, world=world).shard(n)] for r in range(world)]
        assert [i for s in shares for i in s] == list(range(n))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    if world > 1:
        with pytest.raises(DistributedError, match="prompts_per_step"):
            Dist(rank=0, world=world).check_share(world - 1, "prompts_per_step")
        with pytest.raises(DistributedError, match="equal shares"):    # fsdp2: every forward is collective
            Dist(rank=0, world=world, strategy="fsdp2").check_share(world + 1, "prompts_per_step")
        Dist(rank=0, world=world, strategy="fsdp2").check_share(2 * world, "prompts_per_step")


def test_micro_batches_cover_the_rows_once_the_largest_first():
    assert micro_batch_slices(7, 3) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert micro_batch_slices(7, 0) == [slice(0, 7)]
    lengths = torch.tensor([1, 1, 9, 9, 5, 0, 4])                           # slices hold 2, 18, 9 tokens
    slices = micro_batch_slices(7, 2, lengths)
    assert slices == [slice(2, 4), slice(4, 6), slice(6, 7), slice(0, 2)]
    assert micro_batch_slices(4, 2, torch.tensor([3, 3, 2, 4])) == [slice(0, 2), slice(2, 4)]   # ties: row order
    rows = torch.arange(7)
    assert torch.equal(in_row_order({s.start: rows[s] for s in slices}), rows)
    assert [s.start for s in Dist().micro_batches(torch.nn.Linear(1, 1), 7, 2, lengths)] == [2, 4, 6, 0]


def test_more_ranks_than_gpus_is_one_clear_error(monkeypatch):
    from r1lab.train import distributed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(DistributedError, match="local rank 1, but this node has 1 CUDA device"):
        distributed.from_env()


@pytest.mark.parametrize("backend", [native, hf])
def test_a_share_of_a_batch_samples_the_tokens_the_whole_batch_gives_those_rows(tokenizer, backend):
    """What lets ranks split rollouts and still sample what one process would: each row's
    uniform draws depend on its place in the whole batch (``rows_in``), not on the batch it is in."""
    model = tiny_llama(tokenizer, seed=3)
    prompts = [tokenizer(t)["input_ids"] for t in ["User: 1+2", "User: 3+4*5 mod 10\nAssistant:", "7", "a b"]]
    kw = dict(n=3, max_new_tokens=10, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
              temperature=1.0, seed=11)
    whole = backend.generate(model, prompts, **kw)
    part = backend.generate(model, prompts[1:3], rows_in=(3, 12), **kw)         # rows 3..8 of 12
    L = part.completion_ids.shape[1]
    assert torch.equal(part.completion_ids, whole.completion_ids[3:9, :L])
    assert torch.equal(part.mask, whole.mask[3:9, :L])
    assert not torch.equal(part.completion_ids, backend.generate(model, prompts[1:3], **kw).completion_ids)


PRETRAIN = """\
  - kind: pretrain
    name: base
    steps: 4
    batch_size: 6
    seq_len: 32
    val_rows: 4
    eval_every: 2
    corpus: {documents: 300}
    model: {hidden_size: 32, num_layers: 2, num_heads: 2, num_kv_heads: 1, intermediate_size: 64}"""

CONFIG = """\
name: ddp
task: {{kind: arithmetic}}
stages:
{pretrain}
  - kind: sft
    name: sft
    init: base
    data: {sft}
    batch_size: 5                  # 3 + 2 rows; micro-batches of 2: two on one rank, one on the other
    micro_batch_size: 2
    val_fraction: 0.1
  - kind: dpo
    name: dpo
    init: base
    data: {pairs}
    batch_size: 5
    micro_batch_size: 2
    val_fraction: 0.25             # 15 training pairs: 3 batches of 5
    optim: {{lr: 1e-3}}
  - kind: reward_model
    name: rm
    init: base
    data: {pairs}
    batch_size: 5
    micro_batch_size: 2
    val_fraction: 0.25
  - kind: distill
    name: distill
    init: base
    teacher: sft
    data: {sft}
    method: logit
    on_policy: 0.5                 # some steps train on the student's own samples, split among ranks
    batch_size: 5
    micro_batch_size: 2
    sampling: {{max_new_tokens: 8}}
  - kind: grpo
    name: rl
    init: {lm}
    steps: 3
    checkpoint_every: 2
    prompts_per_step: 4            # 2 + 2 questions
    general_prompts: 4
    group_size: 4
    micro_batch_size: 3            # 3 + 3 + 2 rows on each rank
    sampling: {{max_new_tokens: 12}}
    rewards: {{format: 0.5, reward_model: {{weight: 1.0, model: {rm}}}}}
  - kind: ppo
    name: ppo
    init: {lm}
    steps: 2
    prompts_per_step: 3            # 2 + 1 questions
    samples_per_prompt: 2
    mini_batch_size: 2             # global mini-batches: a rank may hold none of one
    ppo_epochs: 1
    sampling: {{max_new_tokens: 12}}
    rewards: {{format: 0.5, reward_model: {{weight: 1.0, model: {rm}}}}}
  - kind: grpo
    name: rl-uneven
    init: {lm}
    steps: 2
    prompts_per_step: 3            # 2 + 1 questions
    general_prompts: 3
    group_size: 4
    loss: dapo                     # normalised by the whole batch's tokens
    advantages: batch              # normalised by the whole batch's rewards
    sampling: {{max_new_tokens: 12}}
    rewards: {{format: 0.5, reward_model: {{weight: 1.0, model: {rm}}}}}
"""


def launch(config, run_dir, ranks: int) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    cmd = (launcher if ranks > 1 else [sys.executable]) + ["-m", "r1lab", "run", str(config), "--run-dir", str(run_dir)]
    # Every run on the CPU (gloo, float32): the ranks are compared with one process to float32
    # tolerances, and a GPU machine may have fewer GPUs than ranks.
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def weights(run_dir, stage):
    return load_file(run_dir / "stages" / stage / "model" / "model.safetensors")


def metrics(run_dir, stage):
    lines = (run_dir / "stages" / stage / "metrics.jsonl").read_text().splitlines()
    timing = ("time_s", "tokens_per_s", "rollout_s")
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]


# GRPO's loss statistics are each rank's, averaged by rows: exact for equal shares, not for dapo's
# token-normalised loss on shares of 8 and 4 rows (the gradient is exact either way)
LOSS_STATS = ("loss", "kl", "clip_frac", "clip_frac_low", "clip_frac_high", "ratio", "entropy")
# PPO's likewise, and its critic's figures of the rollout (each rank's rows)
PPO_STATS = ("approx_kl", "value_loss", "vf_clip_frac", "explained_variance", "values/mean", "returns/mean")


def assert_same(a, b, stage, tol, skip=()):
    wa, wb = weights(a, stage), weights(b, stage)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < tol, stage
    ma, mb = metrics(a, stage), metrics(b, stage)
    assert len(ma) == len(mb) and all(x.keys() == y.keys() for x, y in zip(ma, mb))
    for x, y in zip(ma, mb):
        for k, v in (kv for kv in x.items() if kv[0] not in skip):
            expected = v if isinstance(v, str) else pytest.approx(v, rel=1e-4, abs=1e-5)   # "stage" is text
            assert y[k] == expected, (stage, x["step"], k)


def write_inputs(tmp_path, tokenizer) -> None:
    """A tiny LM, a reward model on it with a random head, 20 SFT rows and 20 preference pairs."""
    tiny_llama(tokenizer, seed=1).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    random_reward_model(tmp_path / "lm", tmp_path / "rm", tokenizer)             # rewards far apart: RL moves
    rows = [{"prompt": f"User: {a}+{b}\nAssistant:", "completion": f" <answer>{a + b}</answer>"}
            for a in range(1, 5) for b in range(1, 6)]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": f" <answer>{i % 7}</answer>"}
             for i, r in enumerate(rows)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))


def one_and_two_ranks(tmp_path, tokenizer, template: str):
    """The inputs and a config from ``template`` written, the config run in one process and on 2
    ranks: (config, its one-process run dir, its 2-rank run dir)."""
    write_inputs(tmp_path, tokenizer)
    config = tmp_path / "c.yaml"
    config.write_text(template.format(pretrain=PRETRAIN, sft=tmp_path / "sft.jsonl", pairs=tmp_path / "pairs.jsonl",
                                      lm=tmp_path / "lm", rm=tmp_path / "rm"))
    one, two = tmp_path / "one", tmp_path / "two"
    launch(config, one, 1)
    launch(config, two, 2)
    return config, one, two


def assert_resumes(config, finished, stage: str, copy) -> None:
    """``stage`` of a copy of the ``finished`` run, as if killed after its last checkpoint, resumes
    on 2 ranks to the same weights and logged values."""
    shutil.copytree(finished, copy)
    for gone in ("DONE", "model"):
        p = copy / "stages" / stage / gone
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    launch(config, copy, 2)
    assert_same(finished, copy, stage, tol=1e-7)


@pytest.mark.slow
def test_two_ranks_train_as_one_process_does_and_resume(tmp_path, tokenizer):
    """Same global batch: weights to 1e-6 and every logged value to 1e-4 after pre-training,
    SFT, DPO, a reward model and on-policy logit distillation (uneven shares, unequal micro-batch
    counts), PPO and GRPO (micro-batches; then uneven shares with whole-batch loss and advantage
    normalisers); GRPO, stopped after its step-2 checkpoint, resumes on 2 ranks to the same weights."""
    config, one, two = one_and_two_ranks(tmp_path, tokenizer, CONFIG)
    for stage in ("0-base", "1-sft", "2-dpo", "3-rm", "4-distill", "5-rl"):
        assert_same(one, two, stage, tol=1e-6)
    assert_same(one, two, "6-ppo", tol=1e-6, skip=LOSS_STATS + PPO_STATS)
    # One process scores completions on the packed walk, DDP ranks on the shared-prefix forward
    # (r1lab/forward/__init__.py): two exact paths whose float32 rounding differs (each is within
    # 2e-5 of the plain forward, tests/test_packed.py), so RL's weights agree to 2e-6, as fsdp2's do.
    assert_same(one, two, "7-rl-uneven", tol=2e-6, skip=LOSS_STATS)
    assert any(m["on_policy"] for m in metrics(two, "4-distill"))
    start = load_file(tmp_path / "lm" / "model.safetensors")
    for stage in ("5-rl", "6-ppo", "7-rl-uneven"):                  # RL did train
        assert max((w - start[k]).abs().max().item() for k, w in weights(two, stage).items()) > 1e-5
    assert_resumes(config, two, "5-rl", tmp_path / "resumed")


FSDP2_CONFIG = """\
name: fsdp2
data_parallel: fsdp2
task: {{kind: arithmetic}}
stages:
{pretrain}
  - kind: sft
    name: sft
    init: base
    data: {sft}
    batch_size: 6                  # 18 training rows: equal shares of every batch, as fsdp2 needs
    micro_batch_size: 2
    val_fraction: 0.1
  - kind: dpo
    name: dpo
    init: base
    data: {pairs}
    batch_size: 4
    val_fraction: 0.2
    optim: {{lr: 1e-3}}
  - kind: distill
    name: distill
    init: base
    teacher: sft
    data: {sft}
    method: logit
    on_policy: 0.5
    batch_size: 6
    micro_batch_size: 2
    val_fraction: 0.1
    sampling: {{max_new_tokens: 8}}
  - kind: ppo
    name: ppo
    init: {lm}
    steps: 2
    prompts_per_step: 4
    samples_per_prompt: 2
    mini_batch_size: 2
    ppo_epochs: 1
    sampling: {{max_new_tokens: 12}}
    rewards: {{format: 0.5, accuracy: 1.0}}
  - kind: grpo
    name: rl
    init: {lm}
    steps: 3
    checkpoint_every: 2
    prompts_per_step: 4
    general_prompts: 4
    group_size: 4
    micro_batch_size: 3
    sampling: {{max_new_tokens: 12}}
    rewards: {{format: 0.5, reward_model: {{weight: 1.0, model: {rm}}}}}
  - kind: grpo
    name: rl-lora
    init: {lm}
    steps: 2
    prompts_per_step: 4
    general_prompts: 4             # judged by the reward model, whose rewards differ: RL moves
    group_size: 4
    micro_batch_size: 4
    lora: {{r: 4, alpha: 8}}       # the KL reference: the sharded model with its adapters off
    optim: {{lr: 1e-2}}
    sampling: {{max_new_tokens: 12}}
    rewards: {{format: 0.5, reward_model: {{weight: 1.0, model: {rm}}}}}
  - kind: reward_model
    name: rm
    init: base
    data: {pairs}
    batch_size: 4
    micro_batch_size: 2
    val_fraction: 0.2
"""


@pytest.mark.slow
def test_fsdp2_shards_train_as_one_process_does_and_resume(tmp_path, tokenizer):
    """data_parallel fsdp2 on 2 gloo ranks: weights sharded, gathered for each forward and whole
    for decoding, checkpoints and saved models gathered onto rank 0. Against one process with the
    same global batch: weights to 2e-6 (DPO's summed log-probs at lr 1e-3 round the most) and
    every logged value but PPO's loss statistics to 1e-4, for SFT, DPO, distillation, PPO, GRPO
    (also with LoRA adapters) and a reward model; GRPO resumes on 2 ranks exactly."""
    config, one, two = one_and_two_ranks(tmp_path, tokenizer, FSDP2_CONFIG)
    for stage in ("0-base", "1-sft", "2-dpo", "3-distill", "5-rl"):
        assert_same(one, two, stage, tol=2e-6)
    assert_same(one, two, "4-ppo", tol=2e-6, skip=LOSS_STATS + PPO_STATS)
    assert json.loads((two / "stages" / "5-rl" / "model" / "config.json").read_text())["architectures"] == [
        "LlamaForCausalLM"]                                          # saved as the plain class
    assert_same(one, two, "6-rl-lora", tol=2e-6)                     # LoRA: adapters decoded merged, saved merged
    start = load_file(tmp_path / "lm" / "model.safetensors")
    assert max((w - start[k]).abs().max().item() for k, w in weights(two, "6-rl-lora").items()) > 1e-5
    assert (two / "stages" / "6-rl-lora" / "adapter" / "adapter_config.json").is_file()
    assert_same(one, two, "7-rm", tol=2e-6)
    assert_resumes(config, two, "5-rl", tmp_path / "resumed")
