"""The native backend against its slow references: the HF-forward ``generate``, HF
``model.generate`` and a full forward recompute."""

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from r1lab import elementwise
from r1lab.rollout import hf, native
from r1lab.forward import completion_logprobs, prompt_completion_batch

from conftest import built, needs_compiler, pytorch_calls, tiny_llama


def prompts_of(tokenizer):
    texts = ["User: 1+2*3 mod 10\nAssistant:", "Think.\nUser: 9-9*9 mod 10\nAssistant: <think>", "7"]
    return [tokenizer(t)["input_ids"] for t in texts]               # three different lengths


def tiny_qwen2(tokenizer, seed: int = 0, **extra) -> Qwen2ForCausalLM:
    """Qwen2 shape: q/k/v biases (made non-zero here so they matter), GQA, tied embeddings."""
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                      max_position_embeddings=256, tie_word_embeddings=True,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.1)
    return model


def scaled_rope_llama(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(2)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=1, intermediate_size=128, max_position_embeddings=256,
                      rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0},
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(cfg).eval()


def smollm2_shape(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """SmolLM2-135M's shape (width 576, 9/3 heads, a tied vocabulary of 49,152) with 2 layers:
    35M parameters, enough that its weights are prepacked (>= PACK_MIN_BYTES)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, num_hidden_layers=2, num_attention_heads=9,
                      num_key_value_heads=3, head_dim=64, intermediate_size=1536, max_position_embeddings=256,
                      rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=True,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(cfg).eval()


MODELS = {"llama": tiny_llama, "qwen2": tiny_qwen2, "llama-rope-linear": scaled_rope_llama,
          "smollm2-shape": smollm2_shape}


def kw(tokenizer, **extra):
    return dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra)


def assert_same_rollout(a, b, atol=1e-5):
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.mask, b.mask)
    assert a.finish_reasons == b.finish_reasons
    assert torch.allclose(a.logprobs, b.logprobs, atol=atol)


@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_matches_reference_and_hf_generate(tokenizer, name):
    model = MODELS[name](tokenizer)
    assert native.supports(model)
    prompts = prompts_of(tokenizer)
    ours = native.generate(model, prompts, max_new_tokens=12, temperature=0.0, **kw(tokenizer))
    assert_same_rollout(ours, hf.generate(model, prompts, max_new_tokens=12, temperature=0.0, **kw(tokenizer)))
    for i, p in enumerate(prompts):
        ref = model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, **kw(tokenizer))
        ref = ref[0, len(p):].tolist()
        assert ours.completion_ids[i][ours.mask[i]].tolist() == ref[:int(ours.mask[i].sum())]


def first_stop(tokens: list[int], stops: list[list[int]], limit: int) -> tuple[int, str]:
    """(length, reason) of a greedy row that ends on the first stop sequence its free run holds."""
    for j in range(1, limit + 1):
        if any(j >= len(s) and tokens[j - len(s):j] == s for s in stops):
            return j, "stop"
    return limit, "length"


def test_stops_at_different_steps_match_reference(tokenizer):
    model = tiny_llama(tokenizer, seed=2)
    prompts = prompts_of(tokenizer)
    free = native.generate(model, prompts, max_new_tokens=10, temperature=0.0, **kw(tokenizer))
    assert free.finish_reasons == ["length"] * 3
    # row 0 stops on the two tokens it produces at steps 1-2, row 2 on a later pair of its own,
    # the first that ends it at another step; row 1 contains neither and runs to the length limit
    rows = [free.completion_ids[i].tolist() for i in range(3)]
    ends = lambda stops: [first_stop(r, stops, 10) for r in rows]
    stops = next(s for s in ([rows[0][1:3], rows[2][k:k + 2]] for k in range(2, 8))
                 if len({n for n, _ in ends(s)}) == 3)
    want = ends(stops)
    ours = native.generate(model, prompts, max_new_tokens=10, temperature=0.0, stop=stops, **kw(tokenizer))
    ref = hf.generate(model, prompts, max_new_tokens=10, temperature=0.0, stop=stops, **kw(tokenizer))
    assert_same_rollout(ours, ref)
    assert list(zip(ours.lengths.tolist(), ours.finish_reasons)) == want
    assert [r for _, r in want] == ["stop", "length", "stop"]              # at three different steps


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_logprobs_equal_full_recompute(tokenizer, name):
    model = MODELS[name](tokenizer, seed=1)
    prompts = prompts_of(tokenizer)
    out = native.generate(model, prompts, n=3, max_new_tokens=16, temperature=0.8, seed=7, **kw(tokenizer))
    rows = [p for p in prompts for _ in range(3)]
    batch = prompt_completion_batch(rows, out.completion_ids, out.mask, tokenizer.pad_token_id)
    with torch.no_grad():
        logp, _ = completion_logprobs(model, batch, temperature=0.8)
    assert torch.allclose(logp[out.mask], out.logprobs[out.mask], atol=1e-4)
    assert (out.logprobs[~out.mask] == 0).all()
    assert not out.logprobs.is_inference() and not out.completion_ids.is_inference()  # usable in autograd


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_sampling_matches_reference_under_a_seed(tokenizer, name):
    """Finished rows leave the batch, yet the sampler still sees all N rows each step, so the
    random stream is consumed as the reference consumes it and the tokens are the same."""
    model = MODELS[name](tokenizer)
    prompts = prompts_of(tokenizer)
    args = dict(n=4, max_new_tokens=14, temperature=1.0, top_p=0.9, top_k=40, **kw(tokenizer))
    free = hf.generate(model, prompts, seed=3, **args)
    stops = [[free.completion_ids[0, 2].item()], [free.completion_ids[5, 6].item()]]  # rows end early
    ref = hf.generate(model, prompts, seed=3, stop=stops, **args)
    ours = native.generate(model, prompts, seed=3, stop=stops, **args)
    assert_same_rollout(ours, ref)
    assert "stop" in ours.finish_reasons and ours.completion_ids.shape[0] == 12
    other = native.generate(model, prompts, seed=4, stop=stops, **args)
    assert not torch.equal(ours.completion_ids, other.completion_ids)


def test_compaction_does_not_change_outputs(tokenizer):
    """Rows ending at different steps leave the batch (their cache rows are dropped and the
    prompt part attends with a row map); the reference keeps every row to the end."""
    model = tiny_llama(tokenizer, seed=3)
    prompts = prompts_of(tokenizer)
    args = dict(n=3, max_new_tokens=16, temperature=1.0, seed=11, **kw(tokenizer))
    free = hf.generate(model, prompts, **args)
    stops = [[free.completion_ids[r, s].item()] for r, s in ((0, 1), (4, 5), (8, 9))]
    ours = native.generate(model, prompts, stop=stops, **args)
    assert_same_rollout(ours, hf.generate(model, prompts, stop=stops, **args))
    lengths = ours.lengths.tolist()
    assert min(lengths) < max(lengths) == 16                           # rows really ended at different steps


def test_window_wider_than_the_sequence_is_full_attention(tokenizer):
    model = tiny_qwen2(tokenizer)
    prompts = prompts_of(tokenizer)
    longest = max(len(p) for p in prompts) + 12
    args = dict(n=2, max_new_tokens=12, temperature=1.0, seed=5, **kw(tokenizer))
    full = native.generate(model, prompts, **args)
    assert_same_rollout(native.generate(model, prompts, window=longest, **args), full)
    narrow = native.generate(model, prompts, window=4, **args)
    assert not torch.equal(narrow.completion_ids, full.completion_ids)  # the window does cut context


def test_ring_buffer_window_matches_hf_sliding_window(tokenizer):
    """A window shorter than prompt + completion: the ring buffer wraps, and tokens and log-probs
    equal HF's own sliding-window attention (Qwen2 with use_sliding_window on every layer)."""
    model = tiny_qwen2(tokenizer, use_sliding_window=True, sliding_window=6, max_window_layers=0)
    prompts = prompts_of(tokenizer)
    args = dict(n=2, max_new_tokens=16, temperature=1.0, seed=2, **kw(tokenizer))
    assert_same_rollout(native.generate(model, prompts, **args), hf.generate(model, prompts, **args))


def test_supports():
    small = dict(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    assert native.supports(LlamaForCausalLM(LlamaConfig(**small)))
    assert native.supports(Qwen2ForCausalLM(Qwen2Config(**small)))
    assert not native.supports(MistralForCausalLM(MistralConfig(**small)))
    assert not native.supports(LlamaForCausalLM(LlamaConfig(**small, hidden_act="gelu")))
    mixed = Qwen2Config(**small, use_sliding_window=True, sliding_window=4, layer_types=["sliding_attention"])
    mixed.layer_types = ["sliding_attention", "full_attention"]
    assert not native.supports(Qwen2ForCausalLM(mixed))
    with pytest.raises(ValueError, match="native backend does not support"):
        native.generate(MistralForCausalLM(MistralConfig(**small)), [[1, 2]], max_new_tokens=2,
                        eos_token_id=0, pad_token_id=0)


@pytest.mark.parametrize("keys_first", [False, True])
@pytest.mark.parametrize("G", [1, 3])
def test_attend_equals_attention_over_concatenated_keys(G, keys_first):
    """The shared-prompt split softmax against SDPA over each row's prompt + completion keys,
    with padding and window columns masked, GQA, and rows missing after compaction."""
    g = torch.Generator().manual_seed(0)
    B, n, K, P, U, D = 3, 4, 2, 5, 7, 8
    N = B * n
    pk, pv = torch.randn(B, K, P, D, generator=g), torch.randn(B, K, P, D, generator=g)
    bias = torch.zeros(B, P)
    bias[0, :2] = float("-inf")                                         # left padding
    bias[2, :4] = float("-inf")                                         # padding and the window
    rows = torch.tensor([0, 1, 3, 4, 7, 8, 11])                         # samples still running
    for r in (None, rows):
        R = N if r is None else len(r)
        idx = torch.arange(N) if r is None else r
        q = torch.randn(R, K, G, D, generator=g)
        k, v = torch.randn(R, K, U, D, generator=g), torch.randn(R, K, U, D, generator=g)
        got = native.attend(q * D ** -0.5, pk, pv, bias, k, v, r, n, keys_first)
        keys = torch.cat([pk[idx // n], k], 2)                          # [R, K, P + U, D]
        values = torch.cat([pv[idx // n], v], 2)
        mask = torch.cat([bias[idx // n], torch.zeros(R, U)], 1)[:, None, None]  # [R, 1, 1, P + U]
        ref = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        assert torch.allclose(got, ref, atol=1e-6)


needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="a torch build without oneDNN")


@needs_onednn
@pytest.mark.parametrize("name", list(MODELS))
def test_prepacked_weights_give_the_reference_rollout(tokenizer, name, monkeypatch):
    """oneDNN-prepacked weights (forced on for the small models) against the hf reference and
    against the model's own weights: the same tokens, sampled and greedy, log-probs within 1e-5."""
    monkeypatch.setattr(native, "PACK_MIN_BYTES", 0 if name != "smollm2-shape" else native.PACK_MIN_BYTES)
    model = MODELS[name](tokenizer)
    assert native.can_pack(model)
    prompts = prompts_of(tokenizer)
    for args in (dict(n=3, max_new_tokens=14, temperature=1.0, seed=5), dict(max_new_tokens=10, temperature=0.0)):
        packed = native.generate(model, prompts, **args, **kw(tokenizer))
        assert_same_rollout(packed, hf.generate(model, prompts, **args, **kw(tokenizer)))
        assert_same_rollout(packed, native.generate(model, prompts, pack=False, **args, **kw(tokenizer)))


@needs_compiler
def test_the_prepacked_decoder_norms_and_rotates_through_the_compiled_passes(tokenizer, monkeypatch):
    """With prepacked float32 weights the decoder's norms and rotary embedding are
    r1lab/elementwise.c's passes; the rollout stays the reference's (model's own weights, PyTorch
    calls) token for token; R1LAB_ELEMENTWISE=torch keeps PyTorch's calls."""
    model, prompts, args = smollm2_shape(tokenizer), prompts_of(tokenizer), dict(n=3, max_new_tokens=12, seed=7)
    ops, calls = built(elementwise), []
    counting = lambda f: lambda *a, **k: calls.append(f) or f(*a, **k)
    spy = SimpleNamespace(**{**vars(ops), "rms_norm": counting(ops.rms_norm), "rotate": counting(ops.rotate)})
    monkeypatch.setattr(elementwise, "load", lambda: spy)
    decoded = native.generate(model, prompts, **args, **kw(tokenizer))
    assert set(calls) == {ops.rms_norm, ops.rotate}
    assert_same_rollout(decoded, native.generate(model, prompts, pack=False, **args, **kw(tokenizer)))
    monkeypatch.undo()
    with pytorch_calls(elementwise, "R1LAB_ELEMENTWISE", monkeypatch):
        assert native._Net(model, 8, 3, pack=True).ops is None


def test_small_models_keep_their_own_weights(tokenizer):
    """Below PACK_MIN_BYTES the weights stay as they are: the toy runs' figures do not move."""
    assert not native.can_pack(tiny_llama(tokenizer))
    assert native.can_pack(smollm2_shape(tokenizer)) == torch.backends.mkldnn.is_available()
