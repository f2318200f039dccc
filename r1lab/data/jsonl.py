"""JSONL data files, validated line by line: question/answer tasks, SFT rows and preference pairs.

Every reader fails on the first bad line with ``file:line: field 'name': problem`` and keeps
the fields it does not check (e.g. ``lang``, ``category``), so they reach rewards and stages.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


class DataError(ValueError):
    """A data file the user gave is wrong; the message names file, line and field."""


MAX_LINE_BYTES = 4 << 20     # one row; longer lines are refused before parsing


def _decode(where: str, raw: bytes, first: bool) -> str:
    """Text of a file's line (or whole file): UTF-8, a byte-order mark at its start dropped."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{where}: the file is UTF-16; r1lab reads UTF-8 (convert it, e.g. iconv -f UTF-16 -t UTF-8)")
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})") from None


def _no_surrogates(where: str, value) -> None:
    """JSON may spell a lone UTF-16 surrogate (``"\\ud800"``), which no tokenizer can encode."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"{where}: text holds a lone surrogate (an invalid \\ud800-\\udfff escape)") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_surrogates(where, k)
            _no_surrogates(where, v)
    elif isinstance(value, list):
        for v in value:
            _no_surrogates(where, v)


def parse_json(where: str, text: str, *, one_line: bool = True):
    """``json.loads`` with every failure (bad syntax, nesting too deep, lone surrogates) as a
    DataError; for a whole file (``one_line=False``) the message names the line."""
    try:
        value = json.loads(text)
        _no_surrogates(where, value)
    except json.JSONDecodeError as e:
        at = f"column {e.colno}" if one_line else f"line {e.lineno}, column {e.colno}"
        raise DataError(f"{where}: not valid JSON: {e.msg} ({at})") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply") from None
    return value


def read_jsonl(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(``file:line`` for messages, object) for each non-blank line that is a JSON object."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    with path.open("rb") as f:
        for lineno, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), 1):
            where = f"{path}:{lineno}"
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(f"{where}: line longer than {MAX_LINE_BYTES:,} bytes (is this a JSONL file?)")
            line = _decode(where, raw, first=lineno == 1)
            if not line.strip():
                continue
            obj = parse_json(where, line)
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield where, obj


def require(where: str, obj: dict, field: str, kinds: tuple[type, ...], what: str):
    """``obj[field]`` when it is one of ``kinds`` (never a bool), else a DataError naming the place."""
    if field not in obj:
        raise DataError(f"{where}: field {field!r}: missing")
    value = obj[field]
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise DataError(f"{where}: field {field!r}: expected {what}, got {type(value).__name__}")
    return value


def read_qa_jsonl(path: str | Path, question_field: str, answer_field: str) -> list[dict]:
    """Rows ``{"question": str, "answer": str, ...other fields}`` from a JSONL file.

    Both fields must hold text or a number; blank lines are skipped.
    """
    rows = []
    for where, obj in read_jsonl(path):
        question = require(where, obj, question_field, (str, int, float), "text or a number")
        answer = require(where, obj, answer_field, (str, int, float), "text or a number")
        rest = {k: v for k, v in obj.items() if k not in (question_field, answer_field)}
        rows.append({**rest, "question": str(question), "answer": str(answer)})
    if not rows:
        raise DataError(f"{Path(path).expanduser()}: holds no examples")
    return rows


def read_sft_jsonl(path: str | Path) -> list[dict]:
    """SFT rows: ``{"prompt": str, "completion": str}`` or chat ``{"messages": [{"role", "content"}, ...]}``
    ending with an assistant message (the completion); other fields are kept."""
    rows = []
    for where, obj in read_jsonl(path):
        if "messages" in obj:
            messages = require(where, obj, "messages", (list,), "a list of messages")
            for j, m in enumerate(messages):
                if not isinstance(m, dict):
                    raise DataError(f"{where}: field 'messages[{j}]': expected an object, got {type(m).__name__}")
                require(where, m, "role", (str,), "text")
                require(where, m, "content", (str,), "text")
            if not messages or messages[-1]["role"] != "assistant":
                raise DataError(f"{where}: field 'messages': must end with an assistant message (the completion)")
        else:
            require(where, obj, "prompt", (str,), "text")
            require(where, obj, "completion", (str,), "text")
        rows.append(obj)
    if not rows:
        raise DataError(f"{Path(path).expanduser()}: holds no rows")
    return rows


ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately "
          "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                "{instruction}\n\n### Input:\n{input}\n\n### Response:\n")


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt style of preference JSONs such as rasbt's instruction-data-with-preference:

    >>> alpaca_prompt("Name a colour.").endswith("### Instruction:\\nName a colour.\\n\\n### Response:\\n")
    True
    """
    return (ALPACA_INPUT if input else ALPACA).format(instruction=instruction, input=input)


def _json_array(path: Path) -> Iterator[tuple[str, dict]]:
    """(``file:item i`` for messages, object) for each element of a JSON array file."""
    items = parse_json(str(path), _decode(str(path), path.read_bytes(), first=True), one_line=False)
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON array of preference objects, got {type(items).__name__}")
    for i, obj in enumerate(items):
        if not isinstance(obj, dict):
            raise DataError(f"{path}: item {i}: expected a JSON object, got {type(obj).__name__}")
        yield f"{path}: item {i}", obj


def read_pairs(path: str | Path) -> list[dict]:
    """Preference pairs ``{"prompt", "chosen", "rejected", ...other fields}`` from JSONL (or a
    ``.json`` array), in either shape:

    - ``{"prompt": str, "chosen": str, "rejected": str}`` (TRL's preference shape), or
    - ``{"instruction": str, "input": str (may be empty or absent), "output": str, "chosen": str,
      "rejected": str}``, the prompt then rendered in the Alpaca style (:func:`alpaca_prompt`).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    rows = []
    for where, obj in (_json_array(path) if path.suffix == ".json" else read_jsonl(path)):
        if "prompt" in obj:
            prompt = require(where, obj, "prompt", (str,), "text")
        else:
            instruction = require(where, obj, "instruction", (str,), "text (or give 'prompt')")
            extra = obj.get("input", "")
            if not isinstance(extra, str):
                raise DataError(f"{where}: field 'input': expected text, got {type(extra).__name__}")
            prompt = alpaca_prompt(instruction, extra)
        chosen = require(where, obj, "chosen", (str,), "text")
        rejected = require(where, obj, "rejected", (str,), "text")
        rows.append({**obj, "prompt": prompt, "chosen": chosen, "rejected": rejected})
    if not rows:
        raise DataError(f"{path}: holds no preference pairs")
    return rows
