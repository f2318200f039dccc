"""Run configs: YAML on disk, validated into typed models before any work starts.

A run config names a task and an ordered list of stages; each stage kind has its own
typed config next to its code (``r1lab/stages/<kind>.py``). Unknown keys, wrong types and
dangling stage references are errors that name the file, the line and the field::

    r1lab: error: my.yaml:14: stages[2].lr: Input should be a valid number ...
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from r1lab.data.tasks import Task
from r1lab.errors import R1labError
from r1lab.locate import PACKAGED, resolve
from r1lab.locate import problem as locate_problem
from r1lab.rewards import REWARDS
from r1lab.stages import STAGES
from r1lab.stages.common import PlainName
from r1lab.trackers import TRACKERS
from r1lab.trackers import missing as tracker_missing
from r1lab.lineage import chat_template_problem, tokenizer_problem

DEFAULT_CONFIG = "r1-tiny"

Stage = Annotated[Union[tuple(module.Config for module in STAGES.values())], Field(discriminator="kind")]


class RunConfig(BaseModel):
    """A whole run: what to learn (task) and the stages that learn it, in order."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: PlainName = Field(description="Run name; the default run directory is runs/<name>.")
    seed: int = Field(0, description="The one seed that drives data, init and sampling.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' takes CUDA when present.")
    data_parallel: Literal["ddp", "fsdp2"] = Field("ddp", description="Under torchrun: a whole model on each "
                                                   "rank (ddp), or sharded over the ranks (fsdp2).")
    bad_rows: Literal["fail", "skip"] = Field("fail", description="A bad row in a data file: stop naming its "
                                              "file:line:field (fail), or skip it, logging how many were skipped (skip).")
    report_to: list[Literal[tuple(TRACKERS)]] = Field([], description="Trackers that also receive every "
                                                     "metrics.jsonl value: tensorboard, trackio, wandb, mlflow.")
    stall_timeout_s: float | None = Field(1800, gt=0, description="A stage that makes no progress (a step, a "
                                          "decode step, a data chunk) for this long dumps every thread's stack to "
                                          "its stall.log and stops the run (None: never).")
    task: Task = Field(description="The verifiable task every stage reads its data from.")

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, names):
        for name in names:
            if problem := tracker_missing(name):
                raise ValueError(problem)
        return list(dict.fromkeys(names))
    stages: list[Stage] = Field(min_length=1, description="Stages, run in order.")

    @field_validator("stages")
    @classmethod
    def _names_unique(cls, stages):
        names = [s.name for s in stages]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"stage names must be unique, repeated: {sorted(dup)}")
        return stages

    def problems(self) -> list[tuple[list, str]]:
        """(location, message) of what would fail only once work has started, the first of each
        kind: a reference (one of a stage's ``references()``) naming neither an earlier stage
        that writes that kind of output nor an existing path, a task whose verifier names no
        reward, a task a stage cannot run on, a data file that is not there, models that must
        share a tokenizer and do not (r1lab/lineage.py), or a device this machine lacks."""
        found = [self._dangling_reference(), self._task_problem(), tokenizer_problem(self), chat_template_problem(self),
                 self._device_problem()]
        return [p for p in found if p is not None]

    def _device_problem(self) -> tuple[list, str] | None:
        if self.device == "cuda":
            import torch
            if not torch.cuda.is_available():
                return ["device"], "cuda, but this machine has no CUDA device (use auto or cpu)"
        return None

    def _dangling_reference(self) -> tuple[list, str] | None:
        names = [s.name for s in self.stages]
        writers: dict[str, tuple] = {}
        for i, stage in enumerate(self.stages):
            for where, ref, artifact in stage.references():
                if artifact in writers.get(ref, ()):
                    continue
                loc = ["stages", i, *where]
                if ref in writers:
                    return loc, f"{ref!r} is an earlier stage, but it writes no {artifact}"
                if ref in names:
                    return loc, (f"{ref!r} is a later stage (stages[{names.index(ref)}]); "
                                 f"a stage reads only what an earlier stage wrote")
                if ref.startswith(PACKAGED) and (missing := locate_problem(ref)):
                    return loc, missing
                if not resolve(ref).exists():
                    producers = [n for n, w in writers.items() if artifact in w]
                    return loc, (f"{ref!r} is neither an earlier stage that writes a {artifact} "
                                 f"({', '.join(producers) or 'none'}) nor an existing path")
            writers[stage.name] = stage.writes
        return None

    def _task_problem(self) -> tuple[list, str] | None:
        tasks = [(["task"], self.task)] + [(["stages", i, "task"], s.task) for i, s in enumerate(self.stages)
                                           if getattr(s, "task", None) is not None]
        for loc, task in tasks:
            if task.verifier not in REWARDS:
                return loc + ["verifier"], f"unknown reward {task.verifier!r}; known: {sorted(REWARDS)}"
            if problem := task.problem():
                return loc + problem[0], problem[1]
            for field in task.data_fields:
                path = getattr(task, field)
                if path is not None and not Path(path).expanduser().exists():
                    return loc + [field], f"{path!r}: no such data file"
        for i, stage in enumerate(self.stages):
            own = getattr(stage, "task", None)
            if getattr(stage, "draws_training", False) and not (own or self.task).has_train:
                return ["stages", i] + (["task"] if own else ["kind"]), (
                    f"a {stage.kind} stage trains on its task, and a {(own or self.task).kind} task is a "
                    f"test set with no training split")
            problem = stage.task_problem(own or self.task)
            if problem:
                return ["stages", i] + (["task"] if own else ["kind"]), problem
        return None


class ConfigError(R1labError, ValueError):
    """A config the user wrote is wrong; the message names file, line and field."""


def config_path(name_or_path: str | None) -> Path:
    """A path on disk, or the name of a config shipped in ``r1lab/configs``."""
    if name_or_path is None:
        name_or_path = DEFAULT_CONFIG
    p = Path(name_or_path).expanduser()
    if p.exists():
        return p
    shipped = importlib.resources.files("r1lab") / "configs" / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return Path(str(shipped))
    raise ConfigError(f"{name_or_path}: no such file, and no shipped config of that name")


MAX_CONFIG_BYTES = 1 << 20        # a run config is a page or two of YAML
MAX_CONFIG_NODES = 100_000        # values once anchors and aliases are expanded


def read_yaml(path: Path):
    """The YAML document of a config file; a ConfigError names the line of bad YAML, and refuses a
    file too large, or whose aliases expand it past MAX_CONFIG_NODES (an "alias bomb")."""
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes; a config may hold at most {MAX_CONFIG_BYTES:,}")
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}) > MAX_CONFIG_NODES:
            raise ConfigError(f"{path}: its aliases expand it past {MAX_CONFIG_NODES:,} values")
        return text, yaml.safe_load(text)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        place = f"{path}:{line + 1}" if line is not None else str(path)
        raise ConfigError(f"{place}: not valid YAML: {getattr(e, 'problem', e)}") from None


def _expanded_size(node, memo: dict) -> int:
    """Values under ``node`` with every alias expanded (an alias is the node it names, shared)."""
    if id(node) not in memo:
        memo[id(node)] = 0                                       # a cycle counts once
        if isinstance(node, yaml.MappingNode):
            memo[id(node)] = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            memo[id(node)] = 1 + sum(_expanded_size(v, memo) for v in node.value)
        else:
            memo[id(node)] = 1
    return memo[id(node)]


def load_config(name_or_path: str | None = None, overrides: list[str] = ()) -> RunConfig:
    """Read, override (``key.sub=value``, stages addressable by index or name), validate; every
    field error at once (one line each), then the first problem of each kind (``problems``)."""
    path = config_path(name_or_path)
    text, data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the config must be a mapping of keys to values")
    overridden: dict[tuple, str] = {}
    for item in overrides:
        key_path = apply_override(data, item, path)
        overridden[key_path] = item
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_lines([where(yaml_location(err["loc"], data), _message(err), text, path, overridden)
                                  for err in e.errors()])) from None
    problems = config.problems()
    if problems:
        raise ConfigError(_lines([where(*problem, text, path, overridden) for problem in problems]))
    return config


def _message(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    msg = err["msg"]
    if "input" in err and err["type"] not in ("missing", "value_error"):
        shown = repr(err["input"])
        msg += f" (got {shown[:80] + '...' if len(shown) > 80 else shown})"
    return msg


def _lines(messages: list[str]) -> str:
    """One message, or several: the first on the error's line, each after it on its own."""
    unique = list(dict.fromkeys(messages))
    if len(unique) == 1:
        return unique[0]
    return f"{len(unique)} problems:\n  " + "\n  ".join(unique)


def apply_override(data: dict, item: str, path: Path) -> tuple:
    """Set ``a.b.c=value`` (value parsed as YAML) in ``data``; returns the resolved key path."""
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected key=value")
    dotted, raw = item.split("=", 1)
    keys: list = dotted.split(".")
    node = data
    for depth, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            key = resolve_stage_key(node, key, item)
            keys[depth] = key
        elif key not in node or not isinstance(node[key], (dict, list)):
            node[key] = {}
        node = node[key]
    last = keys[-1]
    if isinstance(node, list):
        last = keys[-1] = resolve_stage_key(node, last, item)
    node[last] = yaml.safe_load(raw) if raw != "" else ""
    return tuple(keys)


def resolve_stage_key(items: list, key: str, item: str) -> int:
    if key.lstrip("-").isdigit() and -len(items) <= int(key) < len(items):
        return int(key) % len(items)                # -1: the last stage
    for i, entry in enumerate(items):
        if isinstance(entry, dict) and entry.get("name") == key:
            return i
    raise ConfigError(f"--set {item}: no stage with index or name {key!r}")


def where(loc: list, msg: str, text: str, path: Path, overridden: dict) -> str:
    """'file:line: field.path: msg', or '--set k=v: field.path: msg' when an override set it."""
    field = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in loc).lstrip(".") or "(top level)"
    for key_path, item in overridden.items():
        if tuple(loc[:len(key_path)]) == key_path:
            return f"--set {item}: {field}: {msg}"
    return f"{path}:{yaml_line(text, loc)}: {field}: {msg}"


def yaml_location(loc: tuple, data) -> list:
    """Drop pydantic's union-tag parts (``('stages', 1, 'grpo', 'lr')`` -> ``['stages', 1, 'lr']``) and
    the union members named past a value (``(..., 'accuracy', 'float')`` -> ``[..., 'accuracy']``)."""
    out, node = [], data
    for key in loc:
        if isinstance(node, dict) and isinstance(key, str) and key not in node and node.get("kind") == key:
            continue
        if node is not None and not isinstance(node, (dict, list)):
            break                                    # past a value: a union member's name ('float')
        out.append(key)
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            node = None
    return out


def yaml_line(text: str, loc: list) -> int:
    """1-based line of the deepest node on ``loc`` that the YAML text holds."""
    node = yaml.compose(text)
    line = 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == str(key)]
            if not match:
                break
            line = match[0][0].start_mark.line + 1
            node = match[0][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line
