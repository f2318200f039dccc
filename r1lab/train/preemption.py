"""Polite stops: SIGTERM, SIGUSR1 (SLURM's ``--signal``) and SIGINT end a run at the next safe point.

A cluster that takes a machine back usually signals first (SIGTERM, then SIGKILL after a grace
period; SLURM sends whatever ``--signal`` names, ahead of the time limit). While
:func:`stop_on_signals` is in force (r1lab/pipeline.py holds it around a run) the first of these
signals only records its name. The training step under way finishes, the loop writes a
checkpoint at that step and raises :class:`Preempted` (r1lab/train/loop.py); a data stage stops
after the chunk it is writing (r1lab/data/chunked.py); any other stage runs to its end and the
run stops before the next one. The command then exits with :data:`EXIT_PREEMPTED` and one line,
and the same command resumes with nothing lost. A second signal stops at once, as it would
without r1lab: SIGINT raises ``KeyboardInterrupt``, SIGTERM and SIGUSR1 kill the process. Only
a signal :data:`REPEAT_S` or more after the first counts as a second one: a scheduler signals
every process of a job, and torchrun forwards what it gets to its ranks, so a rank often gets
the same request twice at once.

Under torchrun every rank gets the signal, not always at the same moment, so the ranks agree
(:func:`agreed`, one all-reduce a step) and all stop after the same step. torchrun forwards
SIGTERM, SIGINT, SIGHUP and SIGQUIT, and waits ``--shutdown-timeout`` seconds (30 by default)
before it kills the ranks: give it the length of a step, and add SIGUSR1 to its
``--signals-to-handle`` where the scheduler sends that one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

from r1lab.errors import R1labError

# EX_TEMPFAIL of sysexits.h: stopped cleanly, to be run again (a SLURM job can requeue on it)
EXIT_PREEMPTED = 75
SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, name))

REPEAT_S = 1.0                     # a signal this soon after the first is the same request again
_received: list[tuple[str, float]] = []   # the first signal's name and when it came, once one did


class Preempted(R1labError):
    """The run stopped on a signal at a safe point; the message says where and what was saved."""
    exit_code = EXIT_PREEMPTED


def requested() -> str | None:
    """The name of the signal that asked this process to stop, or None."""
    return _received[0][0] if _received else None


def agreed(dist, *flags: bool) -> list[bool]:
    """Each flag, true when it is true on any rank (as it is without torchrun)."""
    if not dist.active:
        return list(flags)
    return [x > 0 for x in dist.sum_each(flags)]


def stopped(where: str, subject: str = "") -> Preempted:
    """The error of a stop at ``where`` (e.g. "after step 5 of 30"); ``subject`` (e.g. "stage
    'rl': ") says what stopped."""
    return Preempted(f"{subject}stopped by {requested() or 'a signal to another rank'} {where}; "
                     f"run the same command to resume")


def check(dist, where: str) -> None:
    """Raise :class:`Preempted` at ``where`` (a safe point: nothing is half done) when a stop
    was asked for on any rank."""
    (stop,) = agreed(dist, requested() is not None)
    if stop:
        raise stopped(where)


def _handle(signum, frame) -> None:
    if _received and time.monotonic() - _received[0][1] < REPEAT_S:
        return                                     # the same request, delivered twice
    if _received:                                  # a second signal: at once
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _received.append((signal.Signals(signum).name, time.monotonic()))
    print(f"r1lab: {requested()}: finishing the current step, then a checkpoint and exit "
          f"(send it again, a second or more from now, to stop at once)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn the first SIGTERM, SIGUSR1 or SIGINT into a request to stop (module docstring), and
    restore the previous handlers after. Outside the main thread (where Python cannot take
    signals) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received.clear()
