"""C loops of r1lab's own, compiled on first use and loaded with ctypes.

PyTorch's CPU operators leave some work split into passes that each read and write memory (a
decode step's attention and draw, the training walk's attention over packed sequences, an
LM-head tile's softmax, norms, SwiGLU and the rotary embedding); r1lab writes those as single C
loops beside the Python that calls them (r1lab/rollout/decode_attention.c,
r1lab/rollout/sampling.c, r1lab/forward/packed_attention.c, r1lab/losses/logit_tiles.c,
r1lab/elementwise.c), each with the PyTorch version it is tested against kept as its reference
and fallback (tests/test_compiled.py: the fallback).

A source is compiled with the system's C compiler (``$CC``, which may carry arguments, else
``cc``; ``-O3 -march=native -fopenmp``) into ``$XDG_CACHE_HOME/r1lab`` (``~/.cache/r1lab``),
keyed by the source, the compiler and the processor. The loops run on PyTorch's own OpenMP
threads: the library names libgomp, and the loader resolves it to the copy PyTorch has
already loaded.

    lib = compiled.library(SOURCE, "R1LAB_DECODE_ATTENTION", "decode attention")   # None: use PyTorch's
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-shared", "-fPIC", "-Wl,-z,defs"]


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "r1lab"


def _processor() -> str:
    """What ``-march=native`` compiles for: the CPU's feature flags where Linux lists them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def compiler() -> list[str] | None:
    """The C compiler's command (``$CC``, which may carry arguments, else ``cc``), or None."""
    cc = shlex.split(os.environ.get("CC", "cc"))
    path = shutil.which(cc[0]) if cc else None
    return None if path is None else [path, *cc[1:]]


def build(source: Path) -> Path:
    """The shared library of ``source``, compiled now unless an identical build is cached;
    raises with the compiler's message where it fails."""
    cc = compiler()
    if cc is None:
        raise OSError("no C compiler (cc, or $CC) on PATH")
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True, check=True, timeout=60).stdout
    # OpenMP through libgomp, the runtime PyTorch loads (clang's own would start a second thread pool)
    flags = [f if f != "-fopenmp" or "clang" not in version else "-fopenmp=libgomp" for f in FLAGS]
    key = hashlib.sha256("\0".join([source.read_text(), *cc, version, *flags, _processor()]).encode())
    target = _cache_dir() / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            subprocess.run([*cc, *flags, "-o", tmp, str(source), "-lm"], capture_output=True, text=True, check=True,
                           timeout=300)
            os.replace(tmp, target)                          # whole or not at all, for concurrent ranks
        finally:
            Path(tmp).unlink(missing_ok=True)
    return target


def library(source: Path, switch: str, what: str) -> ctypes.CDLL | None:
    """``source`` built and loaded, or None where it cannot be built (a warning says why) or the
    environment variable ``switch`` is ``torch`` (PyTorch's version asked for)."""
    if os.environ.get(switch) == "torch":
        return None
    try:
        return ctypes.CDLL(str(build(source)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", "") or e           # the compiler's own message where it failed
        warnings.warn(f"{what}: the compiled loop is not available ({detail}); using PyTorch's", stacklevel=3)
        return None
