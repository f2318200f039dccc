"""The shared-prefix forward against the plain one (its slow reference): log-probs, entropy and
gradients, on Llama and Qwen2 (biases, grouped-query attention), mixed prompt and completion
lengths, prompts shared by adjacent rows, by scattered rows or by none, whole and in micro-batches."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from r1lab.models.adapters import Lora, with_adapters
from r1lab import forward
from r1lab.forward import shared_prefix
from r1lab.forward import plain_completion_logprobs, prompt_completion_batch

from conftest import tiny_llama

TOL = dict(atol=2e-5, rtol=1e-4)


def tiny_qwen2(tokenizer, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return Qwen2ForCausalLM(cfg).eval()


def vocab_49k(tokenizer, seed: int = 5):
    """SmolLM2's tied vocabulary of 49,152 on a tiny body: the chunked log-softmax and entropy
    over a real model's vocabulary."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                      tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(cfg).eval()


MODELS = {"llama": lambda tok: tiny_llama(tok, seed=3), "qwen2": lambda tok: tiny_qwen2(tok, seed=4),
          "vocab-49k": vocab_49k}


def group_batch(tokenizer, order: str, group: int = 3, width: int = 9) -> dict[str, torch.Tensor]:
    """Three prompts of different lengths x ``group`` completions of lengths 0..width (one empty,
    none reaching ``width`` so the last columns are padding everywhere)."""
    g = torch.Generator().manual_seed(0)
    texts = ["User: 1+2*3 mod 10\nAssistant:", "7-1*2", "a b c d e f g h"]
    prompts = [tokenizer(t)["input_ids"] for t in texts for _ in range(group)]
    lengths = torch.randint(1, width - 1, (len(prompts),), generator=g)
    lengths[4] = 0
    ids = torch.randint(0, len(tokenizer), (len(prompts), width), generator=g)
    mask = torch.arange(width) < lengths[:, None]                                # [N, L]
    if order == "scattered":
        perm = torch.randperm(len(prompts), generator=g)
        prompts, ids, mask = [prompts[i] for i in perm], ids[perm], mask[perm]
    elif order == "distinct":
        prompts = [p + [5] * i for i, p in enumerate(prompts)]
    return prompt_completion_batch(prompts, ids, mask, tokenizer.pad_token_id)


def logp_and_grads(fn, model, batch, parts: int = 1):
    """Log-probs and entropy (at the completion tokens) and the parameter gradients of a
    weighted sum of the log-probs, the rows taken ``parts`` micro-batches at a time."""
    model.zero_grad(set_to_none=True)
    mask = batch["completion_mask"]
    all_weights = torch.linspace(-1.0, 2.0, mask.numel()).view_as(mask) * mask    # [N, L]
    logps, ents = [], []
    for rows in torch.arange(len(mask)).chunk(parts):
        part = {k: v[rows] for k, v in batch.items()}
        logp, ent = fn(model, part, temperature=0.7, with_entropy=True)
        (logp * all_weights[rows]).sum().backward()
        logps.append(logp.detach())
        ents.append(ent)
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return torch.cat(logps)[mask], torch.cat(ents)[mask], grads


@pytest.mark.parametrize("parts", [1, 2], ids=["whole", "micro-batches"])
@pytest.mark.parametrize("order", ["adjacent", "scattered", "distinct"])
@pytest.mark.parametrize("arch", MODELS)
def test_equals_the_plain_forward(tokenizer, arch, order, parts):
    model = MODELS[arch](tokenizer)
    batch = group_batch(tokenizer, order)
    assert_agree(logp_and_grads(shared_prefix_path, model, batch, parts),
                 logp_and_grads(plain_completion_logprobs, model, batch))


def assert_agree(fast, slow):
    """Two ``logp_and_grads`` results equal within TOL: log-probs, entropy, every gradient."""
    torch.testing.assert_close(fast[0], slow[0], **TOL)
    torch.testing.assert_close(fast[1], slow[1], **TOL)
    assert fast[2].keys() == slow[2].keys()
    for name in slow[2]:
        torch.testing.assert_close(fast[2][name], slow[2][name], **TOL, msg=name)


def shared_prefix_path(model, batch, **kw):
    return shared_prefix.shared_prefix_logprobs(model, batch, chunk_size=4, **kw)


def test_masked_positions_are_zero_and_the_model_runs_on_fewer_positions(tokenizer, monkeypatch):
    model = tiny_llama(tokenizer, seed=3)
    batch = group_batch(tokenizer, "adjacent")
    seen = []
    monkeypatch.setattr(type(model), "__call__", lambda self, **kw: seen.append(kw["input_ids"].shape)
                        or torch.nn.Module.__call__(self, **kw))
    logp, _ = shared_prefix_path(model, batch, temperature=1.0, with_entropy=False)
    assert (logp[~batch["completion_mask"]] == 0).all()
    n, width = batch["input_ids"].shape
    longest_prompt = int(batch["attention_mask"][:, :-9].sum(1).max())
    longest_completion = int(batch["completion_mask"].sum(1).max())
    assert seen == [(3, longest_prompt), (n, longest_completion)]                # 3 prompts once; no padding column


def test_lora_model_takes_the_fast_path_and_agrees(tokenizer):
    model = with_adapters(tiny_llama(tokenizer, seed=3), Lora(r=4, alpha=8), seed=0)
    batch = group_batch(tokenizer, "adjacent")
    assert forward._shares_prefix(model)
    assert_agree(logp_and_grads(shared_prefix_path, model, batch),
                 logp_and_grads(plain_completion_logprobs, model, batch))
