"""``r1lab run --plan``: shapes read without loading weights, the activation formula against what
autograd really keeps, the measured figures of an earlier run, the device check."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from r1lab import memory
from r1lab.cli import main
from r1lab.config import load_config
from r1lab.forward import completion_logprobs, prompt_completion_batch
from r1lab.models.tiny import build_tiny_model
from r1lab.plan import Plan, measured, parse_target
from r1lab.rollout.native import cache_shapes
from r1lab.settings import Lora

CPU = memory.Target("cpu", 24 * 10**9)


def plan_of(config, target=CPU, run_dir=None) -> Plan:
    return Plan(config, target, floor=0, run_dir=run_dir)


def test_a_pretrain_stage_and_a_checkpoint_give_the_shape_of_the_model_they_build(tmp_path, tokenizer):
    config = load_config(None)
    plan = plan_of(config)
    base = config.stages[0]
    shape = plan.pretrain_shape(base)
    built = build_tiny_model(base.model, plan.corpus(base)[1], 0)
    assert shape.params == sum(p.numel() for p in built.parameters())
    built.save_pretrained(tmp_path / "m")
    plan.index = len(config.stages)
    assert plan.shape(str(tmp_path / "m")) == shape
    # an earlier stage's model is its init's shape, traced back to the pretrain stage
    plan.index = [s.name for s in config.stages].index("eval-dpo")
    assert plan.shape("dpo") == shape
    # the KV cache a position costs is what the native engine preallocates
    prompt, completion = cache_shapes(built.config, 1, 1, 1, 1)
    assert shape.kv_token == torch.Size(completion).numel() * 4


def test_lora_trains_r_times_in_plus_out_of_each_adapted_layer():
    config = load_config(None)
    plan = plan_of(config)
    plan.index = 1
    lora = Lora(r=4, target_modules=["q_proj", "v_proj"])
    m = config.stages[0].model
    kv = m.hidden_size // m.num_heads * m.num_kv_heads
    expected = m.num_layers * 4 * ((m.hidden_size + m.hidden_size) + (m.hidden_size + kv))
    assert plan.trained("base", lora) == expected
    assert plan.trained("base", None) == plan.shape("base").params


@pytest.mark.parametrize("hidden,inter,kv_heads,rows", [(64, 192, 2, 8), (96, 160, 6, 16)])
def test_the_activation_formula_is_within_a_quarter_of_what_autograd_keeps(hidden, inter, kv_heads, rows):
    """The CPU formula (r1lab/memory.py) against the bytes of every distinct non-parameter
    storage saved for backward in the packed training forward of a GRPO micro-batch."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=hidden, intermediate_size=inter,
                                         num_hidden_layers=3, num_attention_heads=6 if hidden % 6 == 0 else 4,
                                         num_key_value_heads=kv_heads, max_position_embeddings=512)).train()
    group, prompt_len, new = 4, 40, 48
    prompts = [torch.randint(0, 300, (prompt_len,)).tolist() for _ in range(rows // group) for _ in range(group)]
    batch = prompt_completion_batch(prompts, torch.randint(0, 300, (rows, new)),
                                    torch.ones(rows, new, dtype=torch.bool), 0)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def keep(t):
        if t.untyped_storage().data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        completion_logprobs(model, batch, with_entropy=True)
    c = model.config
    shape = memory.Shape(params=0, layers=3, hidden=hidden, intermediate=inter, heads=c.num_attention_heads,
                         kv_heads=kv_heads, head_dim=hidden // c.num_attention_heads, vocab=300)
    estimate = memory.activations(shape, CPU, memory.packed_tokens(rows, group, prompt_len, new), rows, prompt_len)
    assert 0.75 < estimate / sum(storages.values()) < 1.25


def test_the_plan_of_the_default_run_has_a_row_a_stage_and_flags_a_device_too_small(capsys, tmp_path):
    assert main(["run", "--plan", "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    config = load_config(None)
    for i, stage in enumerate(config.stages):
        assert f"| {i} | {stage.name} | {stage.kind} |" in out
    assert "OVER" not in out
    assert main(["run", "--plan", "--for", "cpu:0.2", "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "| OVER |" in out and "OVER: base" in out
    # two ranks on one CPU: a data-parallel stage twice over, a stage rank 0 runs alone once
    # (beside the other rank's idle process)
    config, floor = load_config(None), 4 * 10**8
    peaks = [r["peak"] for r in Plan(config, memory.Target("cpu", 10**12, 2), floor=floor).rows()[:2]]
    over = lambda i, size: Plan(config, memory.Target("cpu", size, 2), floor=floor).rows()[i]["over"]
    assert over(0, 2 * peaks[0] - 1) and not over(0, 2 * peaks[0])
    assert over(1, peaks[1] + floor - 1) and not over(1, peaks[1] + floor)


@pytest.mark.parametrize("spec", ["tpu:80", "cuda:80x0", "cuda:inf", "cuda:-80", "cpux-2"])
def test_a_bad_target_is_one_line(capsys, spec):
    assert main(["run", "--plan", "--for", spec]) == 2
    assert f"--for {spec}: expected cpu or cuda" in capsys.readouterr().err


def test_a_model_the_plan_cannot_read_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 2}))
    assert main(["run", "r1-zero-tiny", "--plan", "--set", f"stages.r1-zero.init={bad}",
                 "--set", "stages.eval-base.model=base", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("r1lab: error: ") and "cannot plan a GPT2Config model" in err and len(err.splitlines()) == 1


def test_targets_read_size_and_ranks():
    config = load_config(None)
    assert parse_target("cuda:80x8", config) == memory.Target("cuda", 80 * 10**9, 8, False)
    assert parse_target("cpu:2", config).memory == 2 * 10**9


def test_an_earlier_run_gives_its_peak_its_step_time_and_its_lengths(tmp_path):
    """What the run dir holds is read back; a stage whose completions were short is also planned
    at their measured length, which costs less than the worst case."""
    config = load_config(None, ["stages.r1-zero.steps=3"])
    run = tmp_path / "run"
    grpo = run / "stages" / "2-r1-zero"
    grpo.mkdir(parents=True)
    (grpo / "DONE").write_text(json.dumps({"seconds": 9.0, "peak_rss_mb": 800.0}))
    (grpo / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "time_s": 2.0 * s, "completion_len/mean": 10 + s})
                                                + "\n" for s in (1, 2, 3)))
    found = measured(grpo)
    assert found == {"completion_len": 13, "peak_mb": 800.0, "seconds": 9.0, "step_s": 2.0}
    assert measured(grpo, "another config") == {}            # figures of another config are not this one's
    plan = plan_of(config, run_dir=run)
    from r1lab.pipeline import fingerprint
    prints = {}
    for stage in config.stages[:3]:
        prints[stage.name] = fingerprint(config, stage, prints)
    (grpo / "FINGERPRINT").write_text(prints["r1-zero"] + "\n")
    rows = plan.rows()
    row = rows[2]
    assert row["measured"] == found and row["at_lengths"] < row["peak"]
    assert rows[1]["at_lengths"] is None and rows[1]["measured"] == {}


def test_a_folder_with_config_json_alone_is_enough_to_plan(tmp_path, capsys):
    """A real model can be planned before its weights are downloaded: its config.json is read,
    the prompt lengths guessed from characters, and the plan says so."""
    model = tmp_path / "qwen"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
        "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
        "tie_word_embeddings": True, "max_position_embeddings": 32768}))
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"}) + "\n"
                            for i in range(40)))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "name": "q", "task": {"kind": "jsonl", "template": "r1", "train_path": str(data), "test_path": str(data),
                              "question_field": "question", "answer_field": "answer", "verifier": "math_verify"},
        "stages": [{"kind": "grpo", "name": "rl", "init": str(model), "prompts_per_step": 64, "group_size": 8,
                    "micro_batch_size": 4, "sampling": {"max_new_tokens": 1024}}]}))
    assert main(["run", str(config), "--plan", "--for", "cuda:80", "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "| 0 | rl | grpo | 494.0M |" in out
    assert "no tokenizer that loads; its prompt lengths are guessed" in out


def test_the_cpu_counts_the_kv_pages_rows_write_and_cuda_the_whole_preallocation():
    """A row that stops after 3 of 128 tokens touches one 4 KB page of each layer's and head's
    run of 128 positions on the CPU (the cache is torch.empty); CUDA's allocator holds it all."""
    shape = memory.Shape(params=0, layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, head_dim=16, vocab=10)
    whole = memory.rollout(shape, CPU, 1, 8, 0, 128)["KV cache"]
    assert whole == 8 * shape.kv_token * 128
    assert memory.rollout(shape, CPU, 1, 8, 0, 128, used=3)["KV cache"] == 8 * 2 * 2 * 2 * memory.PAGE
    assert memory.rollout(shape, CPU, 1, 8, 0, 128, used=128)["KV cache"] == whole
    cuda = memory.Target("cuda", 80 * 10**9)
    assert memory.rollout(shape, cuda, 1, 8, 0, 128, used=3)["KV cache"] == whole


def test_ranks_share_rows_and_fsdp2_shards_the_optimizer_state():
    ddp, fsdp = memory.Target("cuda", 1, 8), memory.Target("cuda", 1, 8, fsdp=True)
    assert memory.gradients(800, ddp) == {"gradients": 3200, "AdamW moments": 6400, "DDP buckets": 3200}
    assert memory.gradients(800, fsdp) == {"gradients": 400, "AdamW moments": 800}
    assert ddp.share(64) == 8 and ddp.share(65) == 9


@pytest.mark.parametrize("name", ["ppo-vs-grpo-tiny", "r1-zero-tiny-moe"])
def test_every_stage_kind_and_a_mixture_of_experts_plan(name, tmp_path):
    config = load_config(name)
    rows = plan_of(config, run_dir=tmp_path).rows()
    assert [r["name"] for r in rows] == [s.name for s in config.stages]
    assert all(r["peak"] > 0 and r["params"] > 0 for r in rows)
    if name == "r1-zero-tiny-moe":
        base = config.stages[0]
        built = build_tiny_model(base.model, plan_of(config).corpus(base)[1], 0)
        assert rows[0]["params"] == sum(p.numel() for p in built.parameters())


def test_the_plan_takes_the_forward_and_engine_the_run_takes():
    """Several ranks train through HF's forward with its logits (DDP), one through the packed
    walk; a micro-batch is this rank's share of the batch; a mixture of experts samples through
    HF's engine."""
    config = load_config(None)
    i = next(i for i, s in enumerate(config.stages) if s.kind == "sft")
    one, ddp = plan_of(config), plan_of(config, memory.Target("cpu", 24 * 10**9, 4))
    for plan in (one, ddp):
        plan.index = i
    assert one.packs("base") and not ddp.packs("base")
    sft = config.stages[i]
    length = one.row_len(sft)
    a, b = (p.rows()[i]["phases"]["training"] for p in (one, ddp))
    assert a["activations"] == 4 * b["activations"]                       # 16 rows, then 4 a rank
    shape = one.shape("base")
    assert a["logits"] == memory.head(shape, CPU, 16, length, packed=True, kept=True)
    assert b["logits"] == memory.head(shape, CPU, 4, length, packed=False)
    moe = load_config("r1-zero-tiny-moe")
    plan = plan_of(moe)
    plan.index = 1
    assert plan.engine("base", moe.stages[1].sampling) == "hf" and not plan.packs("base")


def test_offloaded_state_leaves_the_phases_for_steps_of_its_own():
    from types import SimpleNamespace
    from r1lab.plan import offloaded
    from r1lab.settings import Optim
    phases = {"rollout": {"weights": 4, "reference": 4, "AdamW moments": 8, "KV cache": 3},
              "training": {"weights": 4, "reference": 4, "gradients": 4, "AdamW moments": 8, "activations": 5}}
    stage = lambda optim, ref: SimpleNamespace(optim=Optim(offload=optim), reference_offload=ref)
    assert offloaded(stage(False, False), phases) == phases
    both = offloaded(stage(True, True), phases)
    assert both == {"rollout": {"weights": 4, "KV cache": 3}, "training": {"weights": 4, "gradients": 4, "activations": 5},
                    "reference forward": {"weights": 4, "reference": 4},
                    "optimizer step": {"weights": 4, "gradients": 4, "AdamW moments": 8}}
    assert offloaded(stage(False, True), phases)["reference forward"] == {"weights": 4, "reference": 4, "AdamW moments": 8}
