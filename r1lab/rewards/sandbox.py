"""Run an untrusted Python program: a model's answer to a code task.

Layers, and what each stops (docs/reliability.md):

1. **bubblewrap** (``bwrap``, when installed and user namespaces work): new user, PID, network,
   IPC, UTS and cgroup namespaces (``--unshare-all``); of the host's filesystem only ``/usr`` and
   the interpreter's installation, read-only, with a private ``/tmp``, ``/dev`` and ``/proc``, the
   run's own directory the only writable place (no ``/etc``, ``/home``, ``/root``, ``/var``,
   nor the Unix sockets in ``/run``); every capability dropped; a new session (no terminal
   injection); and the whole PID namespace killed when the program or its watcher ends
   (``--die-with-parent``), so no process outlives a run. Stops: network access (IP and Unix
   sockets), reading host files, writes and deletions outside the run's directory, seeing or
   signalling host processes, daemons left behind.
2. **resource limits** (``setrlimit`` inside the sandbox, always): CPU seconds, address space,
   open files, processes, the size of any file written (stdout and stderr are files, so this
   caps the output too), no core dumps. Stops: busy loops, memory bombs, fork bombs, floods of
   output or of disk.
3. **the watcher** (always): a scrubbed environment (no inherited secrets), ``python -I -S``
   (no site-packages, no ``PYTHON*`` variables), a wall-clock limit after which the process
   group is killed, and, when r1lab runs as root, the program run as ``nobody`` (root is exempt
   from the process limit and from file permissions).

Without bubblewrap only layers 2 and 3 hold: the program then shares the host's network and
can write wherever its user may; :func:`run_program` says so once, and refuses when ``strict``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from r1lab.errors import R1labError

NOBODY = 65534
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxError(R1labError, RuntimeError):
    """The strong layer was required (``strict``) but is not available here."""


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 2                  # CPU seconds, every thread together
    wall_s: float = 5.0             # wall-clock seconds, then the whole run is killed
    memory_mb: int = 512            # address space of each process
    open_files: int = 64
    processes: int = 16             # processes and threads at once
    output_bytes: int = 1 << 20     # largest stdout, stderr or file written


@dataclass(frozen=True)
class Outcome:
    returncode: int | None          # None when killed by the watcher (wall clock)
    stdout: str
    stderr: str
    timed_out: bool
    isolated: bool                  # ran inside bubblewrap


# Runs inside the sandbox: set the limits, then become the program (argv: limits..., path).
_BOOT = """\
import os, resource, sys
cpu, mem, files, procs, fsize = map(int, sys.argv[1:6])
for res, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (mem, mem)),
                   (resource.RLIMIT_NOFILE, (files, files)), (resource.RLIMIT_NPROC, (procs, procs)),
                   (resource.RLIMIT_FSIZE, (fsize, fsize)), (resource.RLIMIT_CORE, (0, 0))):
    resource.setrlimit(res, value)
os.execv(sys.executable, [sys.executable, "-I", "-S", "-B", sys.argv[6]])
"""


def _runs_python(exe: str, prefix: list[str], **user) -> bool:
    try:
        return subprocess.run(prefix + [exe, "-I", "-S", "-c", "pass"], capture_output=True, timeout=30,
                              **user).returncode == 0
    except OSError:
        return False


@cache
def interpreter() -> tuple[str, dict]:
    """The interpreter that runs programs, and the Popen keywords of the user it runs as: root
    drops to ``nobody`` (root is exempt from the process limit and from file permissions), with
    an interpreter ``nobody`` can run: this one, else the system's ``python3``. Only the standard
    library is used (``-S``), so any Python 3 will do."""
    own = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    if os.geteuid() != 0:
        return own, {}
    nobody = dict(user=NOBODY, group=NOBODY, extra_groups=[])
    for exe in (own, shutil.which("python3", path=SYSTEM_PATH)):
        if exe and _runs_python(exe, [], **nobody):
            return exe, nobody
    warnings.warn("r1lab runs as root and user 'nobody' cannot run a Python interpreter here: "
                  "model-written programs run as root (no process limit)", RuntimeWarning, stacklevel=3)
    return own, {}


@cache
def _system_dirs() -> tuple[str, ...]:
    """bwrap arguments for the system's programs and libraries, read-only: ``/usr`` and the
    top-level directories that link into it (or hold libraries on systems that do not merge them)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = f"/{name}"
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return tuple(args)


def _bwrap_prefix(workdir: Path) -> list[str]:
    """Only ``/usr`` (and its links), the interpreter's installation and the run's directory are
    visible; ``/etc``, ``/home``, ``/root``, ``/run`` (its sockets), ``/var`` and the rest are not."""
    exe, _ = interpreter()
    home = str(Path(exe).parent.parent)
    python = [] if home == "/usr" else ["--ro-bind", home, home]
    return ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            *_system_dirs(), *python, "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--bind", str(workdir), str(workdir), "--chdir", str(workdir)]


@cache
def bubblewrap_works() -> bool:
    """Whether ``bwrap`` is installed and runs the interpreter in its namespaces here (checked once)."""
    if shutil.which("bwrap") is None:
        return False
    exe, user = interpreter()
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o777)
        return _runs_python(exe, _bwrap_prefix(Path(d)), **user)


@cache
def _warn_weak() -> None:
    warnings.warn("bubblewrap (bwrap) is not available here: model-written programs run with resource "
                  "limits only, on the host's network and filesystem. Install bubblewrap, or set "
                  "strict: true to refuse.", RuntimeWarning, stacklevel=3)


def run_program(source: str, stdin: str = "", limits: Limits = Limits(), *, strict: bool = False,
                isolate: bool = True) -> Outcome:
    """Run ``source`` as a Python program on ``stdin`` inside the sandbox; never raises for what
    the program does. ``isolate=False`` skips bubblewrap (for the benchmark's comparison only)."""
    strong = isolate and bubblewrap_works()
    if not strong and isolate:
        if strict:
            raise SandboxError("strict sandbox: bubblewrap (bwrap) is not installed or cannot create "
                               "namespaces here; install bubblewrap or set strict: false")
        _warn_weak()
    exe, user = interpreter()
    workdir = Path(tempfile.mkdtemp(prefix="r1lab-code-"))
    try:
        program = workdir / "main.py"
        program.write_text(source, encoding="utf-8", errors="surrogateescape")
        if user:
            os.chown(workdir, NOBODY, NOBODY)
            os.chmod(workdir, 0o700)
        argv = [exe, "-I", "-S", "-c", _BOOT, str(limits.cpu_s), str(limits.memory_mb << 20),
                str(limits.open_files), str(limits.processes), str(limits.output_bytes), str(program)]
        env = {"PATH": SYSTEM_PATH, "HOME": str(workdir), "TMPDIR": str(workdir),
               "LANG": "C.UTF-8"}
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen((_bwrap_prefix(workdir) if strong else []) + argv, stdin=subprocess.PIPE,
                                    stdout=out, stderr=err, cwd=workdir, env=env, start_new_session=True,
                                    **user)
            timed_out = False
            try:
                proc.communicate(stdin.encode("utf-8", "replace"), timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc.pid)
                proc.wait()
            return Outcome(None if timed_out else proc.returncode, _read(out, limits.output_bytes),
                           _read(err, limits.output_bytes), timed_out, strong)
    finally:
        _remove(workdir)


def _remove(workdir: Path) -> None:
    """Delete the run's directory, whatever modes the program left on it."""
    for top, dirs, _ in os.walk(workdir):
        for d in dirs:
            os.chmod(os.path.join(top, d), 0o700)
    shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read(f, limit: int) -> str:
    f.seek(0)
    return f.read(limit).decode("utf-8", "replace")
