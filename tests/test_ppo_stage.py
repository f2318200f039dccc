"""The ppo stage on a tiny Llama: values at the right positions, each loss moves its model the
right way, a short run raises the reward, resume equals an unbroken run, the shipped config."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

from r1lab.config import ConfigError, load_config
from r1lab.models.io import load_value_model
from r1lab.pipeline import run
from r1lab.rewards import REWARDS
from r1lab.train.loop import TrainLoop
from r1lab.stages.context import RunContext
from r1lab.stages.ppo import PpoConfig, policy_batch, value_batch
from r1lab.forward import completion_logprobs, completion_values, prompt_completion_batch
from r1lab.train.metrics import read_metrics

from conftest import tiny_llama

CPU = RunContext(config=None, run_dir=None, device=torch.device("cpu"))


@pytest.fixture
def llama_dir(tmp_path, tokenizer):
    tiny_llama(tokenizer, seed=1).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


def fixed_batch(tokenizer):
    torch.manual_seed(0)
    texts = ["User: 1+2*3 mod 10\nAssistant:", "7-1*2", "x", "a b c"]
    prompts = [tokenizer(t)["input_ids"] for t in texts]                    # four prompt lengths
    completions = torch.randint(0, len(tokenizer), (4, 6))                   # [N, L]
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] * 5 + [0], [1] + [0] * 5]).bool()
    return prompts, completions, mask, prompt_completion_batch(prompts, completions, mask, tokenizer.pad_token_id)


def test_values_are_read_before_each_completion_token(llama_dir, tokenizer):
    """Completion position t holds V(prompt + completion[:t]): what a plain forward of the row
    alone, without padding, gives at the position of the token before t."""
    critic = load_value_model(llama_dir, torch.device("cpu"))
    assert critic.config.num_labels == 1 and critic.dropout.p == 0
    prompts, completions, mask, batch = fixed_batch(tokenizer)
    with torch.no_grad():
        got = completion_values(critic, batch)                               # [N, L]
        for i, (p, c, m) in enumerate(zip(prompts, completions, mask)):
            ids = torch.tensor([p + c[m].tolist()])                          # [1, P_i + L_i]
            row = critic(input_ids=ids).logits[0, :, 0]                      # [P_i + L_i]
            want = row[len(p) - 1:len(p) - 1 + int(m.sum())]                 # before each completion token
            assert torch.allclose(got[i, m], want, atol=1e-5), i
    assert got[mask].std() > 0                                               # not a constant head


def test_value_loss_falls_on_a_fixed_batch(llama_dir, tokenizer):
    critic = load_value_model(llama_dir, torch.device("cpu"))
    _, _, mask, batch = fixed_batch(tokenizer)
    returns = torch.where(mask, torch.linspace(-1, 2, 24).view(4, 6), 0.0)  # [N, L] a target to fit
    with torch.no_grad():
        old_values = completion_values(critic, batch)
    opt = torch.optim.Adam(critic.parameters(), lr=3e-3)
    cfg = PpoConfig(kind="ppo", name="ppo", init="x", value_clip=10.0)
    losses = []
    for _ in range(30):
        losses.append(value_batch(critic, batch, old_values, returns, cfg, CPU)["value_loss"])
        opt.step()
        opt.zero_grad()
    assert losses[-1] < 0.2 * losses[0], losses


def test_policy_loss_moves_log_probs_with_the_advantage_sign(tokenizer):
    policy = tiny_llama(tokenizer, seed=3)
    _, _, mask, batch = fixed_batch(tokenizer)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])[:, None].expand(4, 6)         # [N, L]
    with torch.no_grad():
        before, _ = completion_logprobs(policy, batch)                       # [N, L]
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    cfg = PpoConfig(kind="ppo", name="ppo", init="x", sampling={"max_new_tokens": 6})
    for _ in range(3):
        stats = policy_batch(policy, batch, before, adv, cfg, CPU)
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        after, _ = completion_logprobs(policy, batch)
    moved = torch.where(mask, after - before, 0.0).sum(-1)                   # [N]
    assert (moved[[0, 2]] > 0).all() and (moved[[1, 3]] < 0).all(), moved
    assert 0 <= stats["clip_frac"] <= 1 and stats["entropy"] > 0


CONFIG = """\
name: ppo-test
seed: 0
task: {kind: arithmetic}
stages:
  - kind: ppo
    name: ppo
    init: %s
    steps: %d
    prompts_per_step: 4
    samples_per_prompt: 4
    mini_batch_size: 16
    sampling: {max_new_tokens: 8}
    optim: {lr: %s, warmup_steps: 2, offload: %s}
    reference_offload: %s
    critic_lr: 3.0e-3
    checkpoint_every: 2
    rewards: {letters: 1.0}
"""


def letters(completion: str, example: dict) -> float:
    """Share of the completion's characters that are a-z: about 0.4 for a random tiny model,
    and it varies from sample to sample, so a few steps can raise it."""
    return sum("a" <= ch <= "z" for ch in completion) / max(1, len(completion))


@pytest.fixture
def letters_reward(monkeypatch):
    monkeypatch.setitem(REWARDS, "letters", letters)


def write_run(tmp_path, llama_dir, steps, lr=3e-3, offload=False):
    path = tmp_path / f"ppo-{offload}.yaml"
    path.write_text(CONFIG % (llama_dir, steps, lr, str(offload).lower(), str(offload).lower()))
    return load_config(str(path))


def test_a_short_run_raises_the_reward_and_fits_the_critic(tmp_path, llama_dir, letters_reward):
    out = run(write_run(tmp_path, llama_dir, 8, lr=1e-2), tmp_path / "run", log=lambda *_: None)
    m = read_metrics(out / "stages" / "0-ppo" / "metrics.jsonl")
    reward = [r["reward/mean"] for r in m]
    assert sum(reward[-3:]) / 3 > sum(reward[:3]) / 3 + 0.1, reward
    assert m[-1]["explained_variance"] > m[0]["explained_variance"], [r["explained_variance"] for r in m]
    for key in ("accuracy", "format_rate", "kl", "clip_frac", "entropy", "value_loss", "vf_clip_frac",
                "values/mean", "returns/mean", "lr", "grad_norm", "tokens_per_s", "rollout_s"):
        assert key in m[0], key


@pytest.mark.parametrize("offload", [False, True])
def test_resume_mid_stage_equals_an_unbroken_run(tmp_path, llama_dir, letters_reward, monkeypatch, offload):
    """With ``offload`` the broken run keeps both optimizers' moments and the reference on disk
    (r1lab/train/offload.py): its checkpoint, resume and weights are the plain run's all the same."""
    unbroken = run(write_run(tmp_path, llama_dir, 4), tmp_path / "unbroken", log=lambda *_: None)
    config = write_run(tmp_path, llama_dir, 4, offload=offload)               # checkpoint at step 2

    real_end_step = TrainLoop.end_step

    def dies_after_step_3(self, values, *args, **kwargs):
        real_end_step(self, values, *args, **kwargs)
        if self.step == 3:
            raise KeyboardInterrupt
    monkeypatch.setattr(TrainLoop, "end_step", dies_after_step_3)
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "broken", log=lambda *_: None)
    monkeypatch.setattr(TrainLoop, "end_step", real_end_step)
    broken = run(config, tmp_path / "broken", log=lambda *_: None)           # resumes from step 2
    assert not (broken / "stages/0-ppo/offload").exists()                    # the scratch files are gone

    stage = "stages/0-ppo"
    assert [m["step"] for m in read_metrics(broken / stage / "metrics.jsonl")] == [1, 2, 3, 4]
    for part in ("model", "critic"):
        a = load_file(unbroken / stage / part / "model.safetensors")
        b = load_file(broken / stage / part / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    before, after = load_file(llama_dir / "model.safetensors"), load_file(unbroken / stage / "model/model.safetensors")
    assert not all(torch.equal(before[k], after[k]) for k in before)         # the policy did train
    # both come back as plain HF models
    assert AutoModelForCausalLM.from_pretrained(unbroken / stage / "model").config.model_type == "llama"
    assert AutoModelForTokenClassification.from_pretrained(unbroken / stage / "critic").config.num_labels == 1


def test_shipped_comparison_config_matches_the_two_stages():
    cfg = load_config("ppo-vs-grpo-tiny")
    st = {s.name: s for s in cfg.stages}
    grpo, ppo_ = st["grpo"], st["ppo"]
    assert grpo.init == ppo_.init == "base"
    assert (grpo.steps, grpo.prompts_per_step, grpo.group_size) == (ppo_.steps, ppo_.prompts_per_step,
                                                                     ppo_.samples_per_prompt)
    assert grpo.sampling == ppo_.sampling and grpo.rewards == ppo_.rewards
    assert {s.model for s in cfg.stages if s.kind == "eval"} == {"base", "grpo", "ppo"}


def test_critic_init_is_checked_like_init(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: t\ntask: {kind: arithmetic}\nstages:\n"
                    "  - {kind: ppo, name: rl, init: /nonexistent, critic_init: later}\n"
                    "  - {kind: pretrain, name: later}\n")
    with pytest.raises(ConfigError, match=r"c.yaml:4: stages\[0\].init"):
        load_config(str(path))
    path.write_text(path.read_text().replace("init: /nonexistent", f"init: {tmp_path}"))
    with pytest.raises(ConfigError, match=r"stages\[0\].critic_init: 'later' is a later stage"):
        load_config(str(path))
