"""completion_logprobs' plain path against a full-logits recompute, and the logits it never
makes (the fast paths are checked against the plain one: tests/test_packed.py, test_shared_prefix.py)."""

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from r1lab.losses.common import entropy_from_logits, token_logprobs
from r1lab import forward
from r1lab.forward import completion_logprobs, plain_completion_logprobs, prompt_completion_batch

from conftest import tiny_llama


class NoLogitsToKeep(torch.nn.Module):
    """A model whose forward does not take ``logits_to_keep``: completion_logprobs falls back."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


def make_batch(tokenizer, n_completion=6):
    torch.manual_seed(0)
    texts = ["User: 1+2*3 mod 10\nAssistant:", "7-1*2", "x", "a b c"]
    prompts = [tokenizer(t)["input_ids"] for t in texts]                    # four prompt lengths
    completions = torch.randint(0, len(tokenizer), (4, n_completion))        # [N, L]
    mask = torch.ones(4, n_completion, dtype=torch.bool)
    mask[1, n_completion // 2:] = False                                      # a short row
    return prompt_completion_batch(prompts, completions, mask, tokenizer.pad_token_id)


def reference(model, batch, temperature):
    """The slow path: logits at every position, slice, divide, token_logprobs, entropy_from_logits."""
    n_completion = batch["completion_mask"].shape[1]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"]).logits                # [N, P+L, V]
    logits = logits[:, -n_completion - 1:-1] / temperature                  # [N, L, V]
    ids = batch["input_ids"][:, -n_completion:]                             # [N, L]
    return token_logprobs(logits, ids), entropy_from_logits(logits.detach())


def run(fn, model, batch, temperature):
    """(logp, entropy, parameter gradients) of ``fn`` under a weighted sum of the log-probs."""
    model.zero_grad(set_to_none=True)
    logp, entropy = fn(model, batch, temperature)
    weights = torch.linspace(-1.0, 2.0, logp.numel()).view_as(logp)          # [N, L]
    (logp * weights).sum().backward()
    return logp.detach(), entropy, {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("keep", [True, False], ids=["logits_to_keep", "full-logits fallback"])
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_equals_full_logits_reference(tokenizer, temperature, keep):
    model = tiny_llama(tokenizer, seed=3)
    batch = make_batch(tokenizer)
    ours = model if keep else NoLogitsToKeep(model)
    logp, entropy, grads = run(lambda m, b, t: plain_completion_logprobs(ours, b, temperature=t, with_entropy=True),
                               model, batch, temperature)
    ref_logp, ref_entropy, ref_grads = run(reference, model, batch, temperature)
    assert torch.allclose(logp, ref_logp, atol=1e-5)
    assert torch.allclose(entropy, ref_entropy, atol=1e-5)
    assert not entropy.requires_grad
    for k, g in grads.items():
        assert torch.allclose(g, ref_grads[k], atol=1e-5), k
    assert grads["lm_head.weight"].abs().sum() > 0


def test_frozen_forward_in_micro_batches_equals_the_whole_batch_in_row_order(tokenizer):
    model = tiny_llama(tokenizer, seed=3)
    batch = make_batch(tokenizer)                        # the rows' lengths are not in row order
    whole = forward.logprobs_no_grad(model, batch, temperature=0.7)
    assert torch.allclose(forward.logprobs_no_grad(model, batch, temperature=0.7, micro_batch_size=1), whole, atol=1e-6)
    assert torch.allclose(forward.logprobs_no_grad(model, batch, temperature=0.7, micro_batch_size=3), whole, atol=1e-6)


def test_entropy_is_none_unless_asked(tokenizer):
    model = tiny_llama(tokenizer)
    batch = make_batch(tokenizer)
    with torch.no_grad():
        logp, entropy = completion_logprobs(model, batch, temperature=0.7)
        logp_too, _ = completion_logprobs(model, batch, temperature=0.7, with_entropy=True)
    assert entropy is None and torch.equal(logp, logp_too)


class LogitShapedTensors(TorchDispatchMode):
    """Every float tensor an op allocates (views and in-place results excluded) whose last
    dimension is ``vocab`` and which has at least ``min_numel`` elements: their shapes, and
    the most of them alive at once."""

    def __init__(self, vocab, min_numel):
        super().__init__()
        self.vocab, self.min_numel, self.shapes, self.live, self.peak = vocab, min_numel, [], 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if (isinstance(t, torch.Tensor) and t.is_floating_point() and t.shape[-1:] == (self.vocab,)
                    and t.numel() >= self.min_numel and t.untyped_storage().data_ptr() not in inputs):
                self.shapes.append(tuple(t.shape))
                self.live += 1
                self.peak = max(self.peak, self.live)
                weakref.finalize(t.untyped_storage(), self.freed)   # when its memory is released
        return out

    def freed(self):
        self.live -= 1


def test_no_prompt_logits_and_no_full_copy_beyond_the_logits_and_their_gradient(tokenizer, monkeypatch):
    # Chunks of 4 of the 24 completion positions, so one chunk's float32 temporaries
    # ([N, 4, V]) stay under the N * L * V elements that mark a full copy.
    monkeypatch.setattr(forward, "CHUNK_SIZE", 4)
    model = tiny_llama(tokenizer, seed=1)
    n_completion, vocab = 24, model.config.vocab_size
    batch = make_batch(tokenizer, n_completion)
    n, total = batch["input_ids"].shape                                      # [N, P+L]
    with LogitShapedTensors(vocab, n * n_completion * vocab) as big:
        logp, _ = plain_completion_logprobs(model, batch, temperature=0.7, with_entropy=True)
        logp.sum().backward()
    sizes = [torch.Size(s).numel() for s in big.shapes]
    assert max(sizes) < n * total * vocab, big.shapes                      # no logits for the prompt
    assert big.peak <= 2, big.shapes              # the logits and their gradient; no scaled or softmax copy
    assert n * (n_completion + 1) * vocab in sizes, big.shapes   # the recorder does see the logits
