"""JSONL question/answer files, validated line by line."""

from __future__ import annotations

import json
from pathlib import Path


class DataError(ValueError):
    """A data file the user gave is wrong; the message names file, line and field."""


def read_qa_jsonl(path: str | Path, question_field: str, answer_field: str) -> list[dict]:
    """Rows ``{"question": str, "answer": str}`` from a JSONL file.

    Every line must be a JSON object holding both fields as strings or numbers; the first
    line that is not fails with ``file:line: field 'name': problem``. Blank lines are skipped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    rows = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON: {e.msg}") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            for field in (question_field, answer_field):
                if field not in obj:
                    raise DataError(f"{path}:{lineno}: field {field!r}: missing")
                if not isinstance(obj[field], (str, int, float)) or isinstance(obj[field], bool):
                    raise DataError(f"{path}:{lineno}: field {field!r}: expected text or a number, "
                                    f"got {type(obj[field]).__name__}")
            rows.append({"question": str(obj[question_field]), "answer": str(obj[answer_field])})
    if not rows:
        raise DataError(f"{path}: holds no examples")
    return rows
