"""math-verify in a worker process, with a time budget per call.

A model's answer can make sympy work for minutes (``10**10**10**10``, a tower of exponents),
in C code that no signal interrupts; math-verify's own timeouts rely on ``SIGALRM``, which only
the main thread of a process can use. So the equivalence check runs in one long-lived worker
process (``python -m r1lab.rewards.verify_worker``: JSON lines in, JSON lines out); a call that
overruns its budget kills the worker and counts as "not equivalent"; a spare worker, started
beforehand, takes the next call. Answers longer than ``MAX_CHARS`` are refused without being parsed.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading

BUDGET_S = 2.0        # seconds one check may take
MAX_CHARS = 1000      # longest answer (or reference) parsed at all
START_S = 60.0        # seconds a fresh worker may take to import math-verify


class _Process:
    """One worker process; ready once it has imported math-verify."""

    def __init__(self) -> None:
        self.popen = subprocess.Popen([sys.executable, "-m", "r1lab.rewards.verify_worker"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.ready = False

    def reply(self, seconds: float) -> str | None:
        ready, _, _ = select.select([self.popen.stdout], [], [], seconds)
        return self.popen.stdout.readline() if ready else None

    def ask(self, gold: str, pred: str, budget_s: float) -> bool | None:
        """Whether they are equivalent; None when the budget ran out."""
        if not self.ready:
            if self.reply(START_S) != "ready\n":
                raise RuntimeError("the math-verify worker did not start (is math-verify installed?)")
            self.ready = True
        self.popen.stdin.write(json.dumps([gold, pred]) + "\n")
        self.popen.stdin.flush()
        line = self.reply(budget_s)
        return None if line is None else json.loads(line) is True

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait()


class Worker:
    """The worker and a spare started beside it, so that a call after a kill does not wait for
    a fresh one to import math-verify; :meth:`equivalent` is safe to call from any thread."""

    def __init__(self) -> None:
        self._active: _Process | None = None
        self._spare: _Process | None = None
        self._lock = threading.Lock()
        atexit.register(self.close)

    def equivalent(self, gold: str, pred: str, budget_s: float = BUDGET_S) -> bool:
        if len(gold) > MAX_CHARS or len(pred) > MAX_CHARS:
            return False
        with self._lock:
            if self._active is None or self._active.popen.poll() is not None:
                self._active, self._spare = self._spare or _Process(), None
            if self._spare is None:
                self._spare = _Process()
            answer = self._active.ask(gold, pred, budget_s)
            if answer is None:                        # over budget: kill it, the spare takes over
                self._active.kill()
                self._active = None
            return bool(answer)

    def close(self) -> None:
        for proc in (self._active, self._spare):
            if proc is not None:
                proc.kill()
        self._active = self._spare = None


WORKER = Worker()


def main() -> None:
    replies = os.fdopen(os.dup(1), "w", buffering=1)   # the protocol's own copy of stdout;
    os.dup2(2, 1)                                      # whatever math-verify prints goes to stderr
    sys.stdout = sys.stderr
    from math_verify import parse, verify
    print("ready", file=replies)
    for line in sys.stdin:
        gold, pred = json.loads(line)
        try:
            g, p = parse(gold), parse(pred)
            ok = bool(g and p and verify(g, p))
        except Exception:                             # any failure to parse or compare: not equivalent
            ok = False
        print(json.dumps(ok), file=replies)


if __name__ == "__main__":
    main()
