"""The stall watchdog: a stage that makes no progress for ``stall_timeout_s`` ends, loudly.

A run can hang with no error: a collective whose peer is gone, a weight sync, a reward worker,
a deadlock. While :func:`watching` is in force (r1lab/pipeline.py holds it around each stage a
process runs) a thread waits for :func:`progress` calls: each training step and micro-batch,
each decode step of the native decoder and each generate call, each committed chunk of a data
stage. When none comes for the timeout, it appends a line naming the stage and the last
progress, then every thread's Python stack (``faulthandler``), to the stage's ``stall.log``,
prints the line to stderr, and ends the process with :data:`EXIT_STALLED`. Nothing is written
half: the run resumes from its last checkpoint. Under torchrun the rank's exit makes torchrun
stop (or, with ``--max-restarts``, restart) the group.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

EXIT_STALLED = 124                 # as timeout(1) exits

_current: list[Watchdog] = []      # the watchdog of the stage this process runs, if any
_where = ["its start"]             # the last place progress() named


def progress(where: str | None = None) -> None:
    """Tell the watchdog (if one runs) that work moved on; ``where`` (e.g. "step 3 of 10") is
    named if it stalls after this (and by :func:`last_place`). Cheap enough for every decode step."""
    if where is not None:
        _where[0] = where
    if _current:
        _current[0].last = time.monotonic()


def last_place() -> str:
    """Where the stage under way last made progress, e.g. "the start of step 6 of 30"."""
    return _where[0]


class Watchdog:
    def __init__(self, timeout_s: float, log: Path, stage: str):
        self.timeout_s, self.log, self.stage = timeout_s, Path(log), stage
        self.last = time.monotonic()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="r1lab-stall-watchdog", daemon=True)

    def _watch(self) -> None:
        while not self.done.wait(max(0.0, self.last + self.timeout_s - time.monotonic())):
            idle = time.monotonic() - self.last
            if idle >= self.timeout_s:
                self._fire(idle)

    def _fire(self, idle: float) -> None:
        line = (f"r1lab: stage {self.stage!r}: no progress for {idle:.0f} s after {last_place()} "
                f"(stall_timeout_s: {self.timeout_s:g}); every thread's stack is in {self.log}; stopping")
        with open(self.log, "a") as f:
            f.write(line + "\n")
            f.flush()
            faulthandler.dump_traceback(file=f, all_threads=True)
        print(line, file=sys.stderr, flush=True)
        os._exit(EXIT_STALLED)


@contextlib.contextmanager
def watching(timeout_s: float | None, log: Path, stage: str) -> Iterator[None]:
    """Watch the stage ``stage`` for stalls of ``timeout_s`` seconds (None: not at all)."""
    _where[0] = "its start"
    if timeout_s is None:
        yield
        return
    dog = Watchdog(timeout_s, log, stage)
    _current.append(dog)
    dog.thread.start()
    try:
        yield
    finally:
        dog.done.set()
        _current.remove(dog)
