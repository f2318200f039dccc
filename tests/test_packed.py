"""The packed forward against the plain one (its slow reference): log-probs, entropy and
gradients on Llama and Qwen2 (biases, grouped-query attention), with LoRA, mixed prompt and
completion lengths, prompts shared by adjacent rows, by scattered rows or by none, whole and in
micro-batches (the batches of tests/test_shared_prefix.py)."""

import itertools

import pytest
import torch

from r1lab.models.adapters import Lora, with_adapters
from r1lab.models.recompute import enable_recompute
from r1lab import forward
from r1lab.forward import packed
from r1lab.forward import plain_completion_logprobs

from conftest import tiny_llama
from test_shared_prefix import MODELS, assert_agree, group_batch, logp_and_grads


def packed_path(model, batch, **kw):
    return packed.packed_logprobs(model, batch, chunk_size=4, **kw)


@pytest.mark.parametrize("parts", [1, 2], ids=["whole", "micro-batches"])
@pytest.mark.parametrize("order", ["adjacent", "scattered", "distinct"])
@pytest.mark.parametrize("arch", MODELS)
def test_equals_the_plain_forward(tokenizer, arch, order, parts):
    model = MODELS[arch](tokenizer)
    assert forward._packs(model)
    batch = group_batch(tokenizer, order)
    assert_agree(logp_and_grads(packed_path, model, batch, parts),
                 logp_and_grads(plain_completion_logprobs, model, batch))


def test_lora_and_dora_train_through_the_packed_walk(tokenizer):
    head_too = Lora(r=4, alpha=8, target_modules=["q_proj", "v_proj", "lm_head"])   # the head: a PEFT module
    for lora in (Lora(r=4, alpha=8), Lora(r=4, alpha=8, use_dora=True), head_too):
        model = with_adapters(tiny_llama(tokenizer, seed=3), lora, seed=0)
        assert forward._packs(model)
        batch = group_batch(tokenizer, "adjacent")
        assert_agree(logp_and_grads(packed_path, model, batch),
                     logp_and_grads(plain_completion_logprobs, model, batch))


def test_masked_positions_are_zero(tokenizer):
    model = tiny_llama(tokenizer, seed=3)
    batch = group_batch(tokenizer, "adjacent")
    logp, entropy = forward.completion_logprobs(model, batch, with_entropy=True)
    assert (logp[~batch["completion_mask"]] == 0).all() and (entropy[~batch["completion_mask"]] == 0).all()
    assert (logp[batch["completion_mask"]] < 0).all()


def test_buckets_are_the_cheapest_split_of_the_rows_by_length():
    """Every row with a completion token is in one bucket, each bucket's width is its longest
    row's, and the cells are the fewest of any split of the rows sorted by length into at
    most MAX_BUCKETS runs (checked by trying every split)."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        widths = torch.randint(0, 12, (int(torch.randint(1, 10, (1,), generator=g)),), generator=g)
        buckets = packed._buckets(widths, prompt_len=5)
        rows = torch.cat([r for r, _ in buckets]) if buckets else torch.zeros(0, dtype=torch.long)
        assert sorted(rows.tolist()) == (widths > 0).nonzero().squeeze(1).tolist()
        assert len(buckets) <= packed.MAX_BUCKETS
        assert all(w == int(widths[r].max()) for r, w in buckets)
        cells = lambda groups: sum(len(r) * (5 + 2 * max(r)) for r in groups)
        sizes = sorted((w for w in widths.tolist() if w), reverse=True)
        splits = [[sizes[i:j] for i, j in zip((0, *cut), (*cut, len(sizes)))]
                  for k in range(min(packed.MAX_BUCKETS, len(sizes)))
                  for cut in itertools.combinations(range(1, len(sizes)), k)]
        assert cells([widths[r].tolist() for r, _ in buckets]) == min(map(cells, splits), default=0)


@pytest.mark.parametrize("path", ["packed", "plain"])
def test_activation_checkpointing_recomputes_and_changes_nothing(tokenizer, path):
    """With the model's activation checkpointing on, each path's log-probs, entropy and gradients
    are the ones without it, and the blocks really run again in the backward. (The shared-prefix
    path does not take such a model: HF's forward then keeps no KV cache to share.)"""
    fn = {"packed": packed_path, "plain": plain_completion_logprobs}[path]
    model = tiny_llama(tokenizer, seed=3).train()
    batch = group_batch(tokenizer, "adjacent")
    calls = []
    model.model.layers[0].self_attn.o_proj.register_forward_hook(lambda *a: calls.append(1))
    want = logp_and_grads(fn, model, batch)
    plain_calls, calls[:] = len(calls), []
    enable_recompute(model)
    assert_agree(logp_and_grads(fn, model, batch), want)
    assert len(calls) == 2 * plain_calls
    assert not forward._shares_prefix(model)


def test_recomputed_blocks_with_dropout_draw_the_forwards_masks_again(tokenizer):
    """A block with a LoRA dropout keeps its RNG state for the recompute (the masks match the
    forward's, so the gradients are the ones without checkpointing); a plain block keeps none."""
    model = with_adapters(tiny_llama(tokenizer, seed=3), Lora(r=4, alpha=8, dropout=0.5), seed=0).train()
    assert packed.draws_random(model.base_model.model.model.layers[0])
    assert not packed.draws_random(tiny_llama(tokenizer, seed=3).model.layers[0])
    batch = group_batch(tokenizer, "adjacent")
    torch.manual_seed(7)
    want = logp_and_grads(packed_path, model, batch)
    enable_recompute(model)
    torch.manual_seed(7)
    assert_agree(logp_and_grads(packed_path, model, batch), want)
