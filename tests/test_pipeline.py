"""End-to-end runs of the pipeline on reduced configs (marked slow; CI runs them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1lab.config import load_config
from r1lab.pipeline import run
from r1lab.report import eval_table
from r1lab.train.metrics import read_metrics

GRPO_METRICS = {"stage", "step", "time_s", "reward/mean", "reward/accuracy", "reward/format", "accuracy",
                "reward/language", "format_rate", "completion_len/mean", "kl", "clip_frac", "entropy", "lr", "grad_norm",
                "tokens_per_s", "rollout_s", "truncated_rate", "ratio", "clip_frac_low", "clip_frac_high"}

# A reduced R1-Zero run: a pre-training just long enough for the base to be right about a
# quarter of the time (at 250 steps it was at chance, and GRPO could only learn the format),
# then GRPO long enough for accuracy to move.
REDUCED = ["stages.base.steps=600", "stages.base.corpus.documents=20000", "stages.base.eval_every=120",
           "stages.r1-zero.steps=16", "stages.r1-zero.checkpoint_every=8", "task.n_test=24",
           "stages.eval-base.samples=2", "stages.eval-r1-zero.samples=2"]

@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory):
    return run(load_config("r1-zero-tiny", REDUCED), tmp_path_factory.mktemp("reduced") / "run", log=lambda *_: None)


@pytest.mark.slow
def test_reduced_r1_zero_run(reduced_run):
    run_dir = reduced_run
    stages = sorted((run_dir / "stages").iterdir())
    assert [p.name for p in stages] == ["0-base", "1-eval-base", "2-r1-zero", "3-eval-r1-zero"]
    assert all((p / "DONE").is_file() for p in stages)
    assert (run_dir / "config.yaml").is_file()

    # the models are plain HF checkpoints
    for name in ("0-base", "2-r1-zero"):
        model = AutoModelForCausalLM.from_pretrained(run_dir / "stages" / name / "model")
        tok = AutoTokenizer.from_pretrained(run_dir / "stages" / name / "model")
        assert model.config.model_type == "llama" and len(tok) == model.config.vocab_size

    pre = read_metrics(stages[0] / "metrics.jsonl")
    assert [m["step"] for m in pre] == list(range(1, 601))
    val = [m["val_loss"] for m in pre if "val_loss" in m]
    assert len(val) == 5 and val[-1] < val[0]                          # pre-training learned

    rl = read_metrics(stages[2] / "metrics.jsonl")
    assert GRPO_METRICS <= set(rl[0])
    for key in ("reward/mean", "accuracy"):                             # the reward rises, and not
        curve = [m[key] for m in rl]                                    # only through the format
        first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
        assert last > first + 0.05, (key, curve)

    for name in ("1-eval-base", "3-eval-r1-zero"):
        ev = json.loads((stages[0].parent / name / "eval.json").read_text())
        assert {"pass@1", "greedy_accuracy", "format_rate", "accuracy_if_formatted",
                "completion_len/mean"} <= set(ev)
        assert 0 <= ev["pass@1"] <= 1
    table = eval_table(run_dir)
    assert "base" in table and "r1-zero" in table and "pass@1" in table


def documented_metrics() -> dict[str, list[str]]:
    """Section (a stage kind) -> the metric names docs/metrics.md defines in its table, as fnmatch
    patterns (``reward/<fn>`` -> ``reward/*``); "*" holds those its introduction defines for all."""
    import re
    sections: dict[str, list[str]] = {"*": ["stage", "step", "time_s", "skipped_steps"]}
    kind = "*"
    for line in (Path(__file__).parent.parent / "docs" / "metrics.md").read_text().splitlines():
        if line.startswith("## "):
            kind = line[3:].split()[0]
            sections[kind] = []
        elif line.startswith("| `"):
            names = re.findall(r"`([^`]+)`", line.split("|")[1])
            sections[kind] += [re.sub(r"<[^>]+>", "*", name) for name in names]
    return sections


@pytest.mark.slow
def test_every_key_a_run_logs_is_defined_in_docs_metrics(reduced_run):
    from fnmatch import fnmatch
    documented = documented_metrics()
    kinds = {"0-base": "pretrain", "1-eval-base": "eval", "2-r1-zero": "grpo", "3-eval-r1-zero": "eval"}
    for name, kind in kinds.items():
        folder = reduced_run / "stages" / name
        keys = set(json.loads((folder / "eval.json").read_text())) if kind == "eval" else \
            {k for row in read_metrics(folder / "metrics.jsonl") for k in row}
        undefined = [k for k in sorted(keys) if not any(fnmatch(k, p) for p in documented[kind] + documented["*"])]
        assert undefined == [], (name, undefined)


VARIANT_CONFIG = """\
name: variant
seed: 1
task: {kind: arithmetic, n_test: 8}
stages:
  - kind: grpo
    name: rl
    init: %s
    loss: %s
    advantages: %s
    clip_eps_high: 0.28
    steps: 12
    prompts_per_step: 16
    group_size: 8
    optim: {lr: 2.0e-4}
"""


@pytest.mark.slow
@pytest.mark.parametrize("loss,advantages", [("grpo", "group"), ("dapo", "group"), ("dr_grpo", "none"),
                                             ("gspo", "group"), ("dual_clip", "group"),
                                             ("grpo", "rloo"), ("grpo", "reinforce_pp"), ("grpo", "batch")])
def test_each_variant_trains_from_the_reduced_base(tmp_path, reduced_run, loss, advantages):
    path = tmp_path / "variant.yaml"
    path.write_text(VARIANT_CONFIG % (reduced_run / "stages" / "0-base" / "model", loss, advantages))
    out = run(load_config(str(path)), tmp_path / "run", log=lambda *_: None)
    rl = read_metrics(out / "stages" / "0-rl" / "metrics.jsonl")
    assert len(rl) == 12
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in rl)
    rewards = [m["reward/mean"] for m in rl]
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4, rewards


# A tiny, quick run for the resume test: pre-training with many small steps, a short GRPO,
# rejection sampling from it (every completion kept: the tiny model is rarely right) and SFT.
RESUME_CONFIG = """\
name: resume
seed: 0
task: {kind: arithmetic, n_test: 4}
stages:
  - kind: pretrain
    name: base
    model: {hidden_size: 32, num_layers: 2, intermediate_size: 64}
    corpus: {documents: 1500}
    batch_size: 4
    seq_len: 64
    steps: 300
    eval_every: 100
    checkpoint_every: 25
  - {kind: eval, name: eval-base, model: base, samples: 1, sampling: {max_new_tokens: 8}}
  - kind: grpo
    name: r1-zero
    init: base
    steps: 12
    checkpoint_every: 2
    prompts_per_step: 2
    group_size: 2
    sampling: {max_new_tokens: 24}
  - {kind: eval, name: eval-r1-zero, model: r1-zero, samples: 1, sampling: {max_new_tokens: 8}}
  - kind: rejection_sample
    name: data
    model: r1-zero
    prompts: 96
    samples: 2
    batch_size: 2
    sampling: {max_new_tokens: 24}
    filters: {correct: false, format: false}
    non_reasoning: 4
  - kind: sft
    name: sft
    init: base
    data: data
    epochs: 2
    batch_size: 4
    val_fraction: 0.1
    checkpoint_every: 2
"""


def start(config: Path, run_dir: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "r1lab.cli", "run", str(config), "--run-dir", str(run_dir)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "the run never reached the point to kill it"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def weights(stage_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(stage_dir / "model" / "model.safetensors")


@pytest.mark.slow
def test_kill_mid_stage_then_resume(tmp_path):
    config = tmp_path / "resume.yaml"
    config.write_text(RESUME_CONFIG)
    unbroken_dir, broken_dir = tmp_path / "unbroken", tmp_path / "broken"
    unbroken = start(config, unbroken_dir)
    assert unbroken.wait() == 0, unbroken.stdout.read()

    # kill -9 in the middle of pre-training, GRPO, rejection sampling and SFT, each once it has
    # saved some progress, resuming in between
    stages = broken_dir / "stages"
    kill_points = [("0-base", "checkpoint/state.json"), ("2-r1-zero", "checkpoint/state.json"),
                   ("4-data", "progress.json"), ("5-sft", "checkpoint/state.json")]
    for stage, marker in kill_points:
        done_before = {p.parent.name: p.stat().st_mtime_ns for p in stages.glob("*/DONE")}
        proc = start(config, broken_dir)
        kill_when(proc, (stages / stage / marker).exists)
        assert not (stages / stage / "DONE").exists(), stage                # it really died mid-stage
        done_after = {p.parent.name: p.stat().st_mtime_ns for p in stages.glob("*/DONE")}
        assert all(done_after[k] == v for k, v in done_before.items())     # no finished stage ran twice
    assert not (stages / "4-data" / "data.jsonl").exists() or (stages / "4-data" / "DONE").exists()

    proc = start(config, broken_dir)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert "base (pretrain): done, skipped" in out and "data (rejection_sample): done, skipped" in out
    assert "sft (sft): resuming" in out
    assert {p.parent.name for p in stages.glob("*/DONE")} == {
        "0-base", "1-eval-base", "2-r1-zero", "3-eval-r1-zero", "4-data", "5-sft"}

    # the metrics read as one unbroken run, and the resumed run equals the unbroken one
    # 96 prompts x 1 kept + 4 direct rows = 100; 10 held out, 90 / batch 4 -> 23 steps an epoch
    assert len((stages / "4-data" / "data.jsonl").read_text().splitlines()) == 100
    for stage, steps in (("0-base", 300), ("2-r1-zero", 12), ("5-sft", 46)):
        logged = [m["step"] for m in read_metrics(stages / stage / "metrics.jsonl")]
        assert logged == list(range(1, steps + 1)), stage
        a, b = weights(unbroken_dir / "stages" / stage), weights(stages / stage)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), stage
    for name in ("4-data/data.jsonl", "4-data/stats.json", "3-eval-r1-zero/eval.json"):
        assert (unbroken_dir / "stages" / name).read_bytes() == (stages / name).read_bytes(), name


def test_run_dir_of_another_run_is_refused(tmp_path):
    from r1lab.pipeline import RunDirError
    (tmp_path / "config.yaml").write_text("name: something-else\n")
    with pytest.raises(RunDirError, match="holds the run 'something-else'"):
        run(load_config("r1-zero-tiny"), tmp_path, log=lambda *_: None)
    assert (tmp_path / "config.yaml").read_text() == "name: something-else\n"   # nothing overwritten


EVALS = """\
name: evals
task: {kind: arithmetic, n_test: 2}
stages:
  - {kind: eval, name: a, model: %s, samples: 1, sampling: {max_new_tokens: 4}}
  - {kind: eval, name: b, model: %s, samples: 1, sampling: {max_new_tokens: 4}}
  - {kind: eval, name: c, model: %s, samples: 1, sampling: {max_new_tokens: 4}}
"""


def test_a_changed_stage_reruns_with_everything_after_it_and_keeps_what_came_before(tmp_path, qwen_dir):
    path = tmp_path / "evals.yaml"
    path.write_text(EVALS % ((qwen_dir,) * 3))
    run_dir, lines = tmp_path / "run", []

    def done_times():
        return {p.parent.name: p.stat().st_mtime_ns for p in run_dir.glob("stages/*/DONE")}

    run(load_config(str(path)), run_dir, log=lines.append)
    first = done_times()
    assert set(first) == {"0-a", "1-b", "2-c"}
    lines.clear()
    run(load_config(str(path)), run_dir, log=lines.append)               # nothing changed
    assert done_times() == first and all("done, skipped" in line for line in lines)

    (run_dir / "stages" / "2-c" / "junk").write_text("x")
    lines.clear()
    run(load_config(str(path), ["stages.b.samples=2"]), run_dir, log=lines.append)
    after = done_times()
    assert after["0-a"] == first["0-a"] and after["1-b"] != first["1-b"] and after["2-c"] != first["2-c"]
    assert lines == ["[0] a (eval): done, skipped (config and inputs unchanged)",
                     "[1] b (eval): its config or inputs changed; running it again from scratch",
                     "[2] c (eval): an earlier stage (b) ran again; running it again from scratch"]
    assert not (run_dir / "stages" / "2-c" / "junk").exists()           # c restarted from scratch
    assert json.loads((run_dir / "stages" / "1-b" / "eval.json").read_text())["samples"] == 2


def test_an_interrupted_stage_whose_config_changed_starts_over(tmp_path, qwen_dir):
    path = tmp_path / "evals.yaml"
    path.write_text(EVALS % ((qwen_dir,) * 3))
    run_dir, lines = tmp_path / "run", []
    partial = run_dir / "stages" / "0-a"
    partial.mkdir(parents=True)
    (partial / "FINGERPRINT").write_text("0123456789abcdef\n")             # started under another config
    (partial / "checkpoint").mkdir()
    run(load_config(str(path)), run_dir, log=lines.append)
    assert lines[0] == "[0] a (eval): its config or inputs changed; running it again from scratch"
    assert not (partial / "checkpoint").exists() and (partial / "DONE").exists()


@pytest.mark.slow
def test_real_model_config_runs_on_a_tiny_qwen_checkpoint(tmp_path, qwen_dir, gsm8k_dir):
    overrides = [
        f"stages.eval-base.model={qwen_dir}", f"stages.r1-zero.init={qwen_dir}",
        f"task.train_path={gsm8k_dir / 'train.jsonl'}", f"task.test_path={gsm8k_dir / 'test.jsonl'}",
        "task.n_test=4", "stages.r1-zero.steps=2", "stages.r1-zero.prompts_per_step=2",
        "stages.r1-zero.group_size=2", "stages.r1-zero.micro_batch_size=2",
        "stages.r1-zero.sampling.max_new_tokens=8", "stages.r1-zero.optim.lr=1e-3",
        "stages.eval-base.samples=1", "stages.eval-base.sampling.max_new_tokens=8",
        "stages.eval-r1-zero.samples=1", "stages.eval-r1-zero.sampling.max_new_tokens=8",
    ]
    cfg = load_config("r1-zero-qwen2.5-0.5b-gsm8k", overrides)
    assert cfg.task.verifier == "math_verify" and cfg.task.template == "r1"
    run_dir = run(cfg, tmp_path / "run", log=lambda *_: None)
    stage = run_dir / "stages" / "1-r1-zero"
    model = AutoModelForCausalLM.from_pretrained(stage / "model")
    assert model.config.model_type == "qwen2"
    rl = read_metrics(stage / "metrics.jsonl")
    assert [m["step"] for m in rl] == [1, 2] and "reward/math_verify" in rl[0]
    # A random model earns the same (zero) reward on every completion, so every advantage is 0;
    # the policy starts equal to the reference, so the KL gradient is 0 too: the weights stay put.
    assert all(m["reward/mean"] == 0 for m in rl) and all(m["grad_norm"] == 0 for m in rl)
    before = load_file(Path(qwen_dir) / "model.safetensors")
    after = load_file(stage / "model" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((run_dir / "stages" / "2-eval-r1-zero" / "eval.json").read_text())["n_questions"] == 4


def test_real_model_config_without_the_model_fails_clearly():
    from r1lab.config import ConfigError
    with pytest.raises(ConfigError, match=r"r1-zero-qwen2.5-0.5b-gsm8k.yaml:25: stages\[0\].model: 'models/Qwen2.5-0.5B'"):
        load_config("r1-zero-qwen2.5-0.5b-gsm8k")


def test_gpu_config_loads_with_the_overrides_its_header_gives(qwen_dir, gsm8k_dir):
    """r1-zero-qwen2.5-1.5b-gsm8k with its 1-GPU LoRA line, pointed at a tiny model and data."""
    paths = [f"stages.eval-base.model={qwen_dir}", f"stages.r1-zero.init={qwen_dir}",
             f"task.train_path={gsm8k_dir / 'train.jsonl'}", f"task.test_path={gsm8k_dir / 'test.jsonl'}"]
    cfg = load_config("r1-zero-qwen2.5-1.5b-gsm8k", paths + ["stages.r1-zero.lora={r: 16, alpha: 32}"])
    grpo = cfg.stages[1]
    assert grpo.lora.r == 16 and grpo.prompts_per_step % 8 == 0        # 8 questions a GPU on 8 GPUs
    assert grpo.sampling.max_new_tokens == 1024 and grpo.micro_batch_size == 4


def test_peak_rss_is_per_stage():
    """After a reset the high-water mark forgets an earlier, larger allocation. In a fresh
    process: in this one, freed memory of earlier tests may hold the 256 MB without a new peak."""
    import subprocess
    import sys
    code = ("import torch; from r1lab.pipeline import peak_rss_mb, reset_peak_rss; "
            "big = torch.ones(64, 1024, 1024); high = peak_rss_mb(); del big; reset_peak_rss(); "
            "print(high - peak_rss_mb())")                            # 256 MB, touched
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout.split()[-1]) > 200


def test_an_unset_optional_setting_leaves_the_fingerprint_as_it_was():
    """A stage config without ``lora:`` hashes as one from before the field existed, so finished
    stages are not run again after an upgrade; setting it changes the hash."""
    from r1lab.config import RunConfig
    from r1lab.models.adapters import Lora
    from r1lab.pipeline import fingerprint
    config = RunConfig.model_validate({"name": "x", "task": {"kind": "arithmetic"},
                                       "stages": [{"kind": "sft", "name": "s", "init": "/m", "data": "/d"}]})
    stage = config.stages[0]
    old = type(stage).model_dump
    without = lambda self, **kw: {k: v for k, v in old(self, **kw).items() if k != "lora"}
    try:
        type(stage).model_dump = without
        before = fingerprint(config, stage, {})
    finally:
        type(stage).model_dump = old
    assert fingerprint(config, stage, {}) == before
    with_lora = stage.model_copy(update={"lora": Lora(r=4)})
    assert fingerprint(config, with_lora, {}) != before
