"""Both generation backends against slow references: HF generate and full recompute."""

import pytest
import torch

from r1lab.rollout import generate as dispatch
from r1lab.forward import completion_logprobs, prompt_completion_batch

from conftest import tiny_llama


@pytest.fixture(params=["hf", "native"])
def generate(request):
    return lambda *a, **k: dispatch(*a, backend=request.param, **k)


def prompts_of(tokenizer):
    texts = ["User: 1+2*3 mod 10\nAssistant:", "Think.\nUser: 9-9*9 mod 10\nAssistant: <think>", "7"]
    return [tokenizer(t)["input_ids"] for t in texts]               # three different lengths


def test_greedy_matches_hf_generate(tokenizer, generate):
    model = tiny_llama(tokenizer)
    prompts = prompts_of(tokenizer)
    ours = generate(model, prompts, max_new_tokens=12, temperature=0.0,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    for i, p in enumerate(prompts):
        ref = model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        ref = ref[0, len(p):].tolist()
        assert ours.completion_ids[i][ours.mask[i]].tolist() == ref[:int(ours.mask[i].sum())]


def test_stop_sequences_end_rows_at_different_steps(tokenizer, generate):
    model = tiny_llama(tokenizer)
    prompts = prompts_of(tokenizer)
    free = generate(model, prompts, max_new_tokens=10, temperature=0.0,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    # stop each row on the token it greedily produces at step 2 (row 0) or step 5 (row 1)
    stops = [[free.completion_ids[0, 2].item()], [free.completion_ids[1, 5].item()]]
    out = generate(model, prompts, max_new_tokens=10, temperature=0.0, stop=stops,
                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    first_hit = [min(j for j in range(10) if free.completion_ids[i, j].item() in (stops[0][0], stops[1][0]))
                 if any(free.completion_ids[i, j].item() in (stops[0][0], stops[1][0]) for j in range(10)) else None
                 for i in range(3)]
    for i in range(3):
        if first_hit[i] is None:
            assert out.finish_reasons[i] == "length" and out.mask[i].all()
        else:
            assert out.finish_reasons[i] == "stop"
            assert int(out.mask[i].sum()) == first_hit[i] + 1           # the stop token is kept
            assert (out.completion_ids[i, first_hit[i] + 1:] == tokenizer.pad_token_id).all()
        n = int(out.mask[i].sum())
        assert out.completion_ids[i, :n].tolist() == free.completion_ids[i, :n].tolist()


def test_logprobs_equal_full_recompute(tokenizer, generate):
    model = tiny_llama(tokenizer, seed=1)
    prompts = prompts_of(tokenizer)
    out = generate(model, prompts, n=3, max_new_tokens=16, temperature=0.8, seed=7,
                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    rows = [p for p in prompts for _ in range(3)]
    batch = prompt_completion_batch(rows, out.completion_ids, out.mask, tokenizer.pad_token_id)
    with torch.no_grad():
        logp, _ = completion_logprobs(model, batch, temperature=0.8)
    assert torch.allclose(logp[out.mask], out.logprobs[out.mask], atol=1e-4)
    assert (out.logprobs[~out.mask] == 0).all()


def test_sampling_is_deterministic_under_a_seed(tokenizer, generate):
    model = tiny_llama(tokenizer)
    prompts = prompts_of(tokenizer)
    kw = dict(n=4, max_new_tokens=12, temperature=1.0, top_p=0.9,
              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    a, b, c = generate(model, prompts, seed=3, **kw), generate(model, prompts, seed=3, **kw), generate(model, prompts, seed=4, **kw)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.completion_ids, c.completion_ids)
    assert a.completion_ids.shape[0] == 12                              # prompt-major n samples


def test_a_rollout_first_gives_the_heaps_free_pages_back(tokenizer, monkeypatch):
    """Tensors freed in the middle of the C heap stay resident until ``release_free_heap``,
    which every CPU rollout calls first (r1lab/rollout/heap.py), when enough is free."""
    from r1lab.pipeline import rss_mb
    from r1lab.rollout import heap
    if heap._glibc() is None or rss_mb() is None:
        pytest.skip("glibc and /proc only")
    blocks = [torch.ones(4096) for _ in range(5000)]                 # 80 MB of 16 KB heap blocks
    pins = blocks[99::100]                                            # the last one among them: no trim at the top
    before = rss_mb()
    del blocks
    assert rss_mb() > before - 20 and heap.free_heap_bytes() > 70 << 20    # 99% freed, still resident
    monkeypatch.setattr(heap, "TRIM_ABOVE", heap.free_heap_bytes() + 1)
    assert not heap.release_free_heap(torch.device("cpu")) and rss_mb() > before - 20   # not enough free
    monkeypatch.setattr(heap, "TRIM_ABOVE", 60 << 20)
    assert not heap.release_free_heap(torch.device("meta"))
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "134217728")                 # as the r1lab command runs
    assert not heap.release_free_heap(torch.device("cpu")) and rss_mb() > before - 20
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=134217728")
    assert not heap.release_free_heap(torch.device("cpu"))
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert heap.release_free_heap(torch.device("cpu"))
    assert rss_mb() < before - 60
    del pins
    calls = []
    monkeypatch.setattr(heap, "TRIM_ABOVE", -1)
    monkeypatch.setattr(heap, "_glibc", lambda: (heap._Mallinfo2, calls.append))
    dispatch(tiny_llama(tokenizer), [[1, 2]], max_new_tokens=2, eos_token_id=tokenizer.eos_token_id,
             pad_token_id=tokenizer.pad_token_id)
    assert calls == [0]
