"""Configs: the shipped ones validate; bad keys, types and references fail early and clearly."""

import pytest

from r1lab.config import ConfigError, load_config
from r1lab.stages.grpo import GrpoConfig

GOOD = """\
name: t
seed: 3
task:
  kind: arithmetic
  n_test: 10
stages:
  - kind: pretrain
    name: base
    steps: 5
  - kind: grpo
    name: rl
    init: base
    optim: {lr: 0.001}
"""


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path, text, overrides=()):
    with pytest.raises(ConfigError) as e:
        load_config(str(write(tmp_path, text)), list(overrides))
    return str(e.value)


def test_shipped_quick_config_validates():
    cfg = load_config("r1-zero-tiny")
    assert [s.kind for s in cfg.stages] == ["pretrain", "eval", "grpo", "eval"]


def test_the_default_is_the_whole_r1_recipe():
    cfg = load_config(None)
    assert cfg.name == "r1-tiny"
    stages = {s.name: s for s in cfg.stages}
    assert stages["r1"].init == "base"             # R1 restarts SFT from the base, not the RL model
    assert "language" in stages["reasoning-rl"].rewards
    scenario = stages["all-scenario"]
    assert scenario.init == "r1" and scenario.general_prompts > 0 and scenario.sampling.temperature == 0.7
    assert scenario.rewards["reward_model"].params["model"] == "rm" and scenario.rewards["reward_model"].last_steps > 0
    assert stages["rm"].data == "prefs" and stages["dpo"].data == "dpo-prefs"
    assert stages["student-distill"].init == stages["student-r1-zero"].init == "student-base"
    assert stages["student-base"].model.hidden_size < stages["base"].model.hidden_size


def test_good_config_and_typed_values(tmp_path):
    cfg = load_config(str(write(tmp_path, GOOD)))
    assert cfg.seed == 3 and cfg.stages[0].steps == 5
    assert isinstance(cfg.stages[1], GrpoConfig) and cfg.stages[1].optim.lr == 0.001
    assert cfg.stages[1].group_size == 8          # default from the one place defaults live
    assert cfg.stages[1].optim.warmup_steps == 5  # a block key left out takes the stage's default
    assert cfg.stages[0].optim.lr == 3e-3 and cfg.stages[0].optim.min_lr_ratio == 0.1


def test_unknown_key_names_file_line_and_key(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("    optim: {lr: 0.001}", "    optim: {lr: 0.001}\n    learning_rate: 0.1"))
    assert "c.yaml:14:" in msg and "stages[1].learning_rate" in msg and "unknown key" in msg


def test_wrong_type_names_file_line_and_field(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("    steps: 5", "    steps: many"))
    assert "c.yaml:9:" in msg and "stages[0].steps" in msg and "'many'" in msg


def test_unknown_top_level_key(tmp_path):
    msg = error_of(tmp_path, "colour: red\n" + GOOD)
    assert "c.yaml:1:" in msg and "colour" in msg


def test_unknown_stage_kind(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("kind: grpo", "kind: gpro"))
    assert "c.yaml:10:" in msg and "stages[1]" in msg and "gpro" in msg


def test_dangling_model_reference(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("init: base", "init: basse"))
    assert "c.yaml:12: stages[1].init: 'basse' is neither an earlier stage" in msg


def test_reference_to_a_later_stage_is_rejected(tmp_path):
    text = GOOD.replace("init: base", "init: rl2") + "  - kind: grpo\n    name: rl2\n    init: base\n"
    msg = error_of(tmp_path, text)
    assert "c.yaml:12: stages[1].init: 'rl2' is a later stage (stages[2])" in msg


def test_reference_to_a_stage_that_writes_no_model_is_rejected(tmp_path):
    text = GOOD.replace("init: base", "init: ev").replace("  - kind: grpo", "  - kind: eval\n    name: ev\n"
                                                        "    model: base\n  - kind: grpo")
    msg = error_of(tmp_path, text)
    assert "stages[2].init: 'ev' is an earlier stage, but it writes no model" in msg


@pytest.mark.parametrize("bad", ["a/../../victim", "..", ".hidden", "a b", ""])
def test_stage_and_run_names_must_be_plain(tmp_path, bad):
    msg = error_of(tmp_path, GOOD.replace("name: base", f"name: '{bad}'").replace("init: base", f"init: '{bad}'"))
    assert "c.yaml:8: stages[0].name:" in msg and "not a plain name" in msg
    msg = error_of(tmp_path, GOOD.replace("name: t", f"name: '{bad}'"))
    assert "c.yaml:1: name:" in msg and "not a plain name" in msg


def test_the_registry_is_the_one_list_of_kinds():
    from r1lab.config import RunConfig
    from r1lab.stages import STAGES
    union = RunConfig.model_fields["stages"].annotation.__args__[0]
    kinds = {c.model_fields["kind"].annotation.__args__[0] for c in union.__origin__.__args__}
    assert kinds == set(STAGES)
    for kind, module in STAGES.items():
        assert callable(module.run) and set(module.Config.reads.values()) <= {"model", "data", "eval"}
        assert module.Config.model_fields["kind"].annotation.__args__ == (kind,)


def test_every_registered_kind_declares_what_the_report_shows_of_it():
    """A kind's plots and final-table values come from its own module (REPORT); a kind that
    logs training curves has panels for them, so a new kind cannot silently get no plot."""
    from r1lab.stages import STAGES
    from r1lab.stages.common import ReportEntries
    for kind, module in STAGES.items():
        assert isinstance(module.REPORT, ReportEntries), kind
        trains = "model" in module.Config.writes
        assert bool(module.REPORT.panels) == trains and (module.REPORT.final or kind == "preference_pairs"), kind


def test_pretrain_on_a_jsonl_task_fails_at_load(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    task = f"task:\n  kind: jsonl\n  train_path: {tmp_path}/q.jsonl\n  test_path: {tmp_path}/q.jsonl\n"
    msg = error_of(tmp_path, GOOD.replace("task:\n  kind: arithmetic\n  n_test: 10\n", task))
    assert "c.yaml:8: stages[0].kind: pretrain builds its corpus from the synthetic 'arithmetic' task" in msg


def test_missing_data_file_fails_at_load_naming_the_field(tmp_path):
    task = "task:\n  kind: jsonl\n  train_path: nowhere/train.jsonl\n  test_path: nowhere/test.jsonl\n"
    text = GOOD.replace("task:\n  kind: arithmetic\n  n_test: 10\n", task).replace(
        "  - kind: pretrain\n    name: base\n    steps: 5\n", "")
    msg = error_of(tmp_path, text.replace("init: base", f"init: {tmp_path}"))
    assert "c.yaml:5: task.train_path: 'nowhere/train.jsonl': no such data file" in msg


def test_a_stage_may_take_its_own_task(tmp_path):
    cfg = load_config(str(write(tmp_path, GOOD + "    task: {kind: arithmetic, max_count: 3}\n")))
    assert cfg.task.max_count == 6 and cfg.stages[1].task.max_count == 3 and cfg.stages[0].task is None


def test_unknown_reward_name(tmp_path):
    msg = error_of(tmp_path, GOOD + "    rewards: {accuracy: 1.0, lenght: 0.1}\n")
    assert "stages[1].rewards" in msg and "lenght" in msg


def test_group_size_below_two_is_rejected(tmp_path):
    msg = error_of(tmp_path, GOOD + "    group_size: 1\n")
    assert "c.yaml:14:" in msg and "stages[1].group_size" in msg


def test_bad_yaml_names_the_line(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("  n_test: 10", "  n_test: [10"))
    assert "c.yaml:" in msg and "not valid YAML" in msg


def test_overrides_by_index_and_name(tmp_path):
    path = str(write(tmp_path, GOOD))
    cfg = load_config(path, ["stages.rl.optim.lr=0.5", "stages.0.steps=7", "seed=9"])
    assert cfg.stages[1].optim.lr == 0.5 and cfg.stages[0].steps == 7 and cfg.seed == 9


def test_bad_override_is_named(tmp_path):
    path = str(write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match=r"--set stages.rl.optim.lr=fast: stages\[1\].optim.lr"):
        load_config(path, ["stages.rl.optim.lr=fast"])
    with pytest.raises(ConfigError, match="no stage with index or name 'nope'"):
        load_config(path, ["stages.nope.optim.lr=1"])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="no such file"):
        load_config("does/not/exist.yaml")


def test_a_reward_model_reference_is_checked_at_load(tmp_path):
    rm = "    rewards: {accuracy: 1.0, reward_model: {weight: 1.0, model: rm}}\n"
    text = GOOD.replace("    init: base\n", "    init: base\n" + rm, 1)
    msg = error_of(tmp_path, text)
    assert "c.yaml:13: stages[1].rewards.reward_model.model: 'rm' is neither an earlier stage" in msg
    # an earlier stage that writes a model will do, and so does an existing path
    ok = text.replace("stages:\n", "stages:\n  - {kind: pretrain, name: rm, steps: 1}\n")
    assert load_config(str(write(tmp_path, ok))).stages[2].references()[-1] == (("rewards", "reward_model", "model"), "rm", "model")
    load_config(str(write(tmp_path, text.replace("model: rm", f"model: {tmp_path}"))))


@pytest.mark.parametrize("spec, msg", [
    ("{reward_model: 1.0}", "reward 'reward_model' needs {weight: w, model:"),
    ("{reward_model: {weight: 1, model: m, part: middle}}", "'part' must be 'summary' or 'full'"),
    ("{reward_model: {weight: 1, model: m, depth: 2}}", "takes no parameter 'depth'"),
    ("{judge: {weight: 1, last_steps: -1}}", "greater than or equal to 0"),
])
def test_bad_learned_reward_specs(tmp_path, spec, msg):
    assert msg in error_of(tmp_path, GOOD.replace("    init: base\n", f"    init: base\n    rewards: {spec}\n", 1))


def test_general_prompts_need_a_task_with_general_requests(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    task = f"task:\n  kind: jsonl\n  train_path: {tmp_path}/q.jsonl\n  test_path: {tmp_path}/q.jsonl\n"
    text = GOOD.replace("task:\n  kind: arithmetic\n  n_test: 10\n", task).replace(
        "  - kind: pretrain\n    name: base\n    steps: 5\n", "").replace("init: base", f"init: {tmp_path}\n    general_prompts: 2")
    assert "general_prompts needs general requests, which a jsonl task does not have" in error_of(tmp_path, text)


def test_every_field_error_is_shown_at_once_each_on_its_line(tmp_path):
    bad = GOOD.replace("  n_test: 10", "  n_test: -1").replace("    steps: 5", "    steps: many") \
        + "    group_size: 1\n"
    msg = error_of(tmp_path, bad)
    assert msg.startswith("3 problems:")
    assert "c.yaml:5: task.n_test" in msg and "c.yaml:9: stages[0].steps" in msg and "c.yaml:14: stages[1].group_size" in msg


@pytest.mark.parametrize("addition, message", [
    ("    rewards: {}\n", "stages[1].rewards: Value error, no rewards"),
    ("    rewards: {accuracy: .nan}\n", "stages[1].rewards.accuracy"),
    ("    sampling: {max_new_tokens: 100000000}\n", "stages[1].sampling.max_new_tokens: Input should be less"),
    ("    task: {kind: arithmetic, min_count: 5, max_count: 3}\n", "min_count (5) exceeds max_count (3)"),
])
def test_values_that_would_crash_after_earlier_stages_ran_are_config_errors(tmp_path, addition, message):
    assert message in error_of(tmp_path, GOOD + addition)


def test_non_finite_numbers_heads_and_eval_sizes_are_config_errors(tmp_path):
    assert "stages[1].optim.lr: Input should be a finite number" in error_of(tmp_path, GOOD.replace("0.001", ".inf"))
    shape = GOOD.replace("    steps: 5", "    steps: 5\n    model: {hidden_size: 30, num_heads: 4}")
    assert "num_heads (4) must divide hidden_size (30)" in error_of(tmp_path, shape)
    evaluated = GOOD.replace("n_test: 10", "n_test: 100000") + "  - {kind: eval, name: e, model: rl}\n"
    assert "c.yaml:14: stages[2].kind: n_test (100000) exceeds the 121 distinct test" in error_of(tmp_path, evaluated)


def test_device_cuda_without_cuda_is_a_config_error(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert "c.yaml:1: device: cuda, but this machine has no CUDA device" in error_of(tmp_path, "device: cuda\n" + GOOD)


def test_an_alias_bomb_and_a_huge_file_are_refused_quickly(tmp_path):
    import time
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb = GOOD.replace("  n_test: 10", "  n_test: *a8") .replace("task:", "\n".join(levels) + "\ntask:", 1)
    start = time.monotonic()
    assert "aliases expand it past 100,000 values" in error_of(tmp_path, bomb)
    big = GOOD + "# " + "x" * (2 << 20) + "\n"
    assert "a config may hold at most 1,048,576" in error_of(tmp_path, big)
    assert time.monotonic() - start < 5


def test_negative_stage_indexes_count_from_the_end(tmp_path):
    path = str(write(tmp_path, GOOD))
    assert load_config(path, ["stages.-1.steps=7"]).stages[1].steps == 7
    with pytest.raises(ConfigError, match="no stage with index or name '-100'"):
        load_config(path, ["stages.-100.steps=7"])


def test_a_task_verifier_must_be_a_known_reward(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("  n_test: 10\n", "  n_test: 10\n  verifier: acuracy\n"))
    assert "c.yaml:6: task.verifier:" in msg and "unknown reward 'acuracy'" in msg


def test_non_reasoning_rows_on_a_task_without_general_requests_fail_at_load(tmp_path):
    """The check that could never fire (every task has general_examples): it now asks has_general."""
    (tmp_path / "q.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    text = f"""\
name: t
task: {{kind: jsonl, train_path: {tmp_path}/q.jsonl, test_path: {tmp_path}/q.jsonl}}
stages:
  - {{kind: rejection_sample, name: d, model: {tmp_path}, non_reasoning: 4}}
"""
    msg = error_of(tmp_path, text)
    assert "stages[0].kind: non_reasoning rows need general questions, which a jsonl task does not have" in msg


def test_the_config_layer_needs_no_torch_so_a_config_error_comes_at_once(tmp_path):
    """Configs load and config errors show without torch or transformers: in a process where they
    cannot be imported, the shipped default validates and the command reports an unknown key."""
    import subprocess
    import sys
    (tmp_path / "bad.yaml").write_text(GOOD.replace("    steps: 5\n", "    steps: 5\n    stpes: 6\n"))
    script = f"""
import sys
class Unimportable:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "peft", "tokenizers", "safetensors", "matplotlib"):
            raise ImportError("no " + name + " in this test")
sys.meta_path.insert(0, Unimportable())
from r1lab.cli import main
from r1lab.config import load_config
assert [s.name for s in load_config("r1-tiny").stages][:2] == ["base", "eval-base"]
sys.exit(main(["run", {str(tmp_path / "bad.yaml")!r}, "--run-dir", {str(tmp_path / "r")!r}]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"r1lab: error: {tmp_path / 'bad.yaml'}:10: stages[0].stpes: unknown key\n"
    assert not (tmp_path / "r").exists()
