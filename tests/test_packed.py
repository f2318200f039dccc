"""The packed forward against the plain one (its slow reference): log-probs, entropy and
gradients on Llama and Qwen2 (biases, grouped-query attention), with LoRA, mixed prompt and
completion lengths, prompts shared by adjacent rows, by scattered rows or by none, whole and in
micro-batches (the batches of tests/test_shared_prefix.py)."""

import pytest

from r1lab.models.adapters import Lora, with_adapters
from r1lab.train import forward, packed
from r1lab.train.forward import plain_completion_logprobs

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
