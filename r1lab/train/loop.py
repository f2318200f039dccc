"""The plumbing around a stage's training loop: optimizer and schedule, resume from the last
checkpoint, metrics, progress bar, periodic checkpoints and the final save.

The loop body (what a step computes) stays written out in each stage (STYLE rule 4)::

    loop = TrainLoop(model, cfg.optim, out, cfg.name, "sft", cfg.steps, cfg.checkpoint_every)
    for step in loop.steps():                    # 0-based index of the step about to run
        loss = ...; loss.backward()
        grad_norm = loop.optimizer_step()
        loop.end_step({"loss": loss.item(), "grad_norm": grad_norm}, show=("loss",))
    loop.finish(tokenizer)                       # writes out/model/
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from r1lab.train.checkpoint import resume_training, save_pretrained_atomic, save_training
from r1lab.train.metrics import MetricsLogger
from r1lab.train.optim import Optim, build_optimizer, build_scheduler, optimizer_step
from r1lab.train.progress import progress_bar, show


class TrainLoop:
    """State shared by every training stage's loop; see the module docstring."""

    def __init__(self, model, optim: Optim, out: Path, stage: str, kind: str, total_steps: int,
                 checkpoint_every: int, optimizer_steps: int | None = None):
        """``total_steps`` loop steps; ``optimizer_steps`` (default: the same) sizes the schedule."""
        self.model, self.optim, self.out = model, optim, Path(out)
        self.total, self.checkpoint_every = total_steps, checkpoint_every
        self.opt = build_optimizer(model, lr=optim.lr, weight_decay=optim.weight_decay)
        self.sched = build_scheduler(self.opt, warmup_steps=optim.warmup_steps,
                                     total_steps=optimizer_steps or total_steps, min_ratio=optim.min_lr_ratio)
        self.step, self.resumed_elapsed = resume_training(self.out / "checkpoint", model, self.opt, self.sched)
        self.log = MetricsLogger(self.out / "metrics.jsonl", stage, resume_step=self.step,
                                 elapsed_s=self.resumed_elapsed)
        self.bar = progress_bar(f"{stage} ({kind})", total_steps, self.step)

    def steps(self) -> Iterator[int]:
        """0-based index of each step still to run (after a resume, from where it stopped)."""
        while self.step < self.total:
            yield self.step

    def optimizer_step(self) -> float:
        """Clip, step, advance the schedule, zero the grads; returns the norm before clipping."""
        return optimizer_step(self.model, self.opt, self.sched, self.optim.grad_clip)

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def end_step(self, values: dict[str, float], show_keys: Iterable[str] = ()) -> None:
        """Count the step, log ``values`` under its 1-based number, update the bar, checkpoint."""
        self.step += 1
        self.log.log(self.step, values)
        show(self.bar, {k: values[k] for k in show_keys})
        self.bar.update(1)
        if self.step % self.checkpoint_every == 0 and self.step < self.total:
            save_training(self.out / "checkpoint", self.model, self.opt, self.sched, self.step, self.log.elapsed())

    def finish(self, tokenizer) -> None:
        """Close the bar and save the trained model (HF format) to ``out/model``."""
        self.bar.close()
        save_pretrained_atomic(self.model, tokenizer, self.out / "model")
