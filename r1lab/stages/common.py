"""What every stage config shares: its kind, a plain name, and what it reads and writes.

A stage declares the fields that name another stage's output (``reads``) and what it writes
itself (``writes``); the config loader checks every reference against them before any work
starts, so a typo or a reference to a later stage fails at load time with file and line.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from r1lab.data.tasks import Task
from r1lab.settings import LoraBlock

Artifact = Literal["model", "data", "eval"]


@dataclass(frozen=True)
class Panel:
    """One panel of a stage's training-curve plot: the metrics it draws over steps."""
    title: str
    metrics: tuple[str, ...]                    # metrics.jsonl keys, fnmatch patterns
    scale: Literal["linear", "log"] = "linear"  # log: linear when a value is <= 0


@dataclass(frozen=True)
class ReportEntries:
    """What ``r1lab report`` shows of a stage of this kind (r1lab/report/): the panels of its
    curves, and the final values (fnmatch patterns over the last metrics line, eval.json and
    stats.json) in the stage table. A stage module declares its own as ``REPORT``."""
    panels: tuple[Panel, ...] = ()
    final: tuple[str, ...] = ()


RL_REPORT = ReportEntries(
    panels=(Panel("reward", ("reward/mean", "reward/*")), Panel("accuracy and format", ("accuracy", "format_rate")),
            Panel("completion length (tokens)", ("completion_len/mean",)),
            Panel("language consistency", ("reward/language",)), Panel("KL(policy || reference)", ("kl",))),
    final=("step", "reward/mean", "accuracy", "format_rate", "reward/language", "completion_len/mean", "kl",
           "reward/reward_model", "reward/judge"))
LOSS_REPORT = ReportEntries(panels=(Panel("loss", ("loss", "val_loss", "val/*"), "log"),),
                            final=("step", "loss", "val_loss", "val/*"))

_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _plain_name(value: str) -> str:
    if not _PLAIN.fullmatch(value):
        raise ValueError(f"{value!r} is not a plain name: it names a folder, so use letters, digits, "
                         f"'.', '_' and '-' only, not starting with '.' (at most 100 characters)")
    return value


PlainName = Annotated[str, AfterValidator(_plain_name)]


def block(cls: type[BaseModel], description: str, **defaults: Any) -> Any:
    """A nested settings block (``optim:``, ``sampling:``) of type ``cls`` with this stage's
    defaults: keys the user leaves out take ``defaults``, then ``cls``'s own.

        optim: block(Optim, "Optimizer and schedule.", lr=3e-3, warmup_steps=30)
    """
    merge = lambda value: {**defaults, **value} if isinstance(value, dict) else value
    return Annotated[cls, BeforeValidator(merge),
                     Field(default_factory=lambda: cls(**defaults), description=description)]


def checkpoint_seconds():
    """The ``checkpoint_every_s`` field of every training stage (beside its ``checkpoint_every``)."""
    return Field(900, gt=0, description="Seconds between resumable checkpoints too, whichever comes first "
                 "(None: by steps only).")


def reference_offload():
    """The ``reference_offload`` field of the RL stages that keep a frozen reference (grpo, ppo)."""
    return Field(False, description="Keep the frozen reference's weights in a file of the stage's folder "
                 "between its forwards: less memory for one read of them a step (r1lab/train/offload.py). "
                 "Needs a reference model of its own: a KL weight > 0 and no lora.")


def reference_offload_problem(cfg, kl_weight: str) -> str | None:
    """Why ``cfg.reference_offload`` cannot be honoured, or None."""
    if cfg.reference_offload and (getattr(cfg, kl_weight) == 0 or cfg.lora is not None):
        return (f"reference_offload needs a reference model of its own, which {kl_weight} = 0 or a lora "
                "block (whose reference is the policy's own weights) does not load")
    return None


def reference_in_memory(ref, cfg, loop):
    """What a stage enters around the reference's forwards: a context in which the weights are
    back from the file when ``cfg.reference_offload`` (they are written once, here), else nothing."""
    if not cfg.reference_offload:
        return contextlib.nullcontext
    from r1lab.train.offload import OffloadedWeights
    return OffloadedWeights(ref, loop.scratch("reference")).loaded


class StageConfig(BaseModel):
    """Base of every stage's typed config (``r1lab/stages/<kind>.py`` subclasses it)."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    reads: ClassVar[dict[str, Artifact]] = {}     # field -> what it names: an earlier stage's output or a path
    writes: ClassVar[tuple[Artifact, ...]] = ()   # what later stages may read from this one
    # model fields whose models must share one tokenizer, checked at load (r1lab/lineage.py);
    # a stage that writes a model is traced back through its ``init`` field
    same_tokenizer: ClassVar[tuple[str, ...]] = ()
    # runs on every rank under torchrun, each on its share of the batch (r1lab/train/distributed.py);
    # False: rank 0 runs it alone while the other ranks wait
    data_parallel: ClassVar[bool] = False

    kind: str
    name: PlainName = Field(description="Stage name: its folder, and how later stages refer to its output.")

    def references(self) -> list[tuple[tuple, str, Artifact]]:
        """(location in this config, reference, what it names) of every earlier stage's output or
        path this stage reads: its ``reads`` fields that are set; stages with nested references
        (a reward model inside ``rewards:``) add theirs."""
        return [((field,), getattr(self, field), artifact) for field, artifact in self.reads.items()
                if isinstance(getattr(self, field), str)]

    def task_problem(self, task) -> str | None:
        """Why this stage cannot run on ``task`` (its own or the run's), or None."""
        return None


class TaskStageConfig(StageConfig):
    """A stage that draws questions from a task: the run's, unless it names its own;
    ``draws_training`` when it draws from the task's training split (not only the held-out one)."""
    draws_training: ClassVar[bool] = False
    task: Task | None = Field(None, description="This stage's own task; default: the run's task.")


class SupervisedStageConfig(StageConfig):
    """A stage that trains the model ``init`` names on the rows of ``data``, in epochs of shuffled
    batches with a held-out share for validation (sft, distill, dpo, reward_model; the shared
    code is r1lab/train/supervised.py). Each sets its own ``optim:`` defaults and may override
    any default here."""
    reads = {"init": "model", "data": "data"}
    writes = ("model",)
    data_parallel = True
    init: str = Field(description="Model to train: an earlier stage's name or a model path.")
    data: str = Field(description="Rows: an earlier stage that writes data.jsonl, or a JSONL path.")
    epochs: int = Field(2, gt=0, description="Passes over the training rows.")
    batch_size: int = Field(16, gt=0, description="Rows per optimizer step.")
    micro_batch_size: int = Field(0, ge=0, description="Rows per forward/backward (0 = the whole batch); "
                                  "gradients accumulate to the full batch's.")
    max_length: int = Field(512, gt=1, description="Prompt + completion tokens at most; longer completions are cut.")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="Share of rows held out for validation.")
    eval_every: int = Field(50, gt=0, description="Steps between validation passes (and at the end).")
    lora: LoraBlock = None
    checkpoint_every: int = Field(50, gt=0, description="Steps between resumable checkpoints.")
    checkpoint_every_s: float | None = checkpoint_seconds()
