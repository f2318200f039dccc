"""Mixture-of-experts bases: the factory, the router loss in every policy loss and in the log,
and generation's fall-back to hf."""

import pytest
import torch
from transformers import MixtralForCausalLM

from r1lab.config import load_config
from r1lab.models.moe import pop_logged
from r1lab.models.tiny import TinyModelConfig, build_tiny_model
from r1lab.pipeline import run
from r1lab.rollout import generate
from r1lab.forward import completion_logprobs, prompt_completion_batch
from r1lab.train.metrics import read_metrics

SHAPE = dict(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=48)


@pytest.fixture
def moe(tokenizer):
    return build_tiny_model(TinyModelConfig(**SHAPE, moe={"experts": 4, "experts_per_token": 2, "router_aux_loss_coef": 0.1}),
                            tokenizer, seed=0)


def a_batch(tokenizer):
    torch.manual_seed(0)
    prompts = [tokenizer(t)["input_ids"] for t in ["User: 1+2*3 mod 10\nAssistant:", "7-1*2", "x"]]
    completions = torch.randint(0, len(tokenizer), (3, 5))
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[2, 2:] = False
    return prompt_completion_batch(prompts, completions, mask, tokenizer.pad_token_id)


def test_the_factory_builds_a_mixtral_with_top_k_routing(moe, tokenizer):
    assert isinstance(moe, MixtralForCausalLM)
    assert (moe.config.num_local_experts, moe.config.num_experts_per_tok) == (4, 2)
    assert moe.config.output_router_logits and moe.config.router_aux_loss_coef == 0.1
    assert type(build_tiny_model(TinyModelConfig(**SHAPE), tokenizer, seed=0)).__name__ == "LlamaForCausalLM"
    with pytest.raises(ValueError, match="exceeds experts"):
        TinyModelConfig(moe={"experts": 2, "experts_per_token": 3})


def test_policy_losses_carry_the_router_loss_at_their_share_of_the_batch(moe, tokenizer):
    """Backward of any loss built on completion_logprobs equals backward of that loss plus
    share * coef * HF's router loss, computed by hand (the slow reference); the loss is logged."""
    batch = a_batch(tokenizer)
    logp, _ = completion_logprobs(moe, batch, aux_weight=0.5)
    (logp.sum() * 0.3).backward()
    fast = {k: p.grad.clone() for k, p in moe.named_parameters()}
    logged = pop_logged(moe)["router_aux_loss"]
    moe.zero_grad()
    out = moe(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")})
    logits = out.logits[:, -6:-1]                                                # the completion's
    ref = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, -5:, None])[..., 0]
    (ref.sum() * 0.3 + 0.5 * 0.1 * out.aux_loss).backward()
    slow = {k: p.grad for k, p in moe.named_parameters()}
    assert logged == pytest.approx(out.aux_loss.item(), rel=1e-6)
    router = [k for k in slow if "gate.weight" in k]
    assert router and all(slow[k].abs().sum() > 0 for k in router)
    for k in slow:
        assert torch.allclose(fast[k], slow[k], atol=1e-6), k
    with torch.no_grad():
        completion_logprobs(moe, batch)
    assert pop_logged(moe) == {}                                                  # no graph, no term, no log


def test_generation_falls_back_to_hf_and_says_so(moe, tokenizer, capsys):
    prompts = [tokenizer("User: 3+4 mod 10\nAssistant:")["input_ids"]]
    kw = dict(n=2, max_new_tokens=4, temperature=0.0, eos_token_id=tokenizer.eos_token_id,
              pad_token_id=tokenizer.pad_token_id, seed=0)
    auto = generate(moe, prompts, **kw)
    assert "native decoder does not cover mixtral" in capsys.readouterr().err
    assert torch.equal(auto.completion_ids, generate(moe, prompts, backend="hf", **kw).completion_ids)
    with pytest.raises(ValueError, match="does not decode mixtral"):
        generate(moe, prompts, backend="native", **kw)


def test_pretraining_and_grpo_on_an_moe_base_log_the_router_loss(tmp_path):
    (tmp_path / "c.yaml").write_text("""\
name: moe
seed: 0
task: {kind: arithmetic}
stages:
  - kind: pretrain
    name: base
    steps: 3
    batch_size: 4
    eval_every: 3
    corpus: {documents: 300}
    model: {hidden_size: 32, num_layers: 2, num_heads: 2, num_kv_heads: 2, intermediate_size: 48, moe: {experts: 4}}
  - kind: grpo
    name: rl
    init: base
    steps: 2
    prompts_per_step: 2
    group_size: 2
    micro_batch_size: 2
    sampling: {max_new_tokens: 6}
""")
    out = run(load_config(str(tmp_path / "c.yaml")), tmp_path / "run", log=lambda *_: None) / "stages"
    for stage in ("0-base", "1-rl"):
        metrics = read_metrics(out / stage / "metrics.jsonl")
        assert all(m["router_aux_loss"] > 0 for m in metrics), stage
