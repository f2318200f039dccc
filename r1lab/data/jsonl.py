"""Data files, validated row by row: question/answer tasks, SFT rows and preference pairs.

JSONL is read here line by line. Parquet, CSV and a ``datasets`` ``save_to_disk`` folder are read
through Hugging Face ``datasets``, streamed row by row (a file is never loaded whole; a reader
with a ``limit`` stops early), with the same checks and ``file: row i`` in place of a line.

Every reader fails on the first bad line with ``file:line: field 'name': problem`` and keeps
the fields it does not check (e.g. ``lang``, ``category``), so they reach rewards and stages.
Under :func:`skipping_bad_rows` (a run's ``bad_rows: skip``) a bad line is skipped instead, and
the reader reports how many it skipped and the first one's problem; a file that is not there, is
UTF-16, or holds no good row still fails.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path

from r1lab.errors import DataError


MAX_LINE_BYTES = 4 << 20     # one row; longer lines are refused before parsing

# where the readers report skipped rows; None: a bad row is an error
_SKIP_REPORT: ContextVar[Callable[[str], None] | None] = ContextVar("skip_bad_rows", default=None)


@contextlib.contextmanager
def skipping_bad_rows(report: Callable[[str], None]):
    """Within the block, readers skip bad rows and ``report`` a line per file that had some."""
    token = _SKIP_REPORT.set(report)
    try:
        yield
    finally:
        _SKIP_REPORT.reset(token)


def _refuse_utf16(where: str, head: bytes) -> None:
    """A file starting with a UTF-16 byte-order mark is refused whole, not line by line."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{where}: the file is UTF-16; r1lab reads UTF-8 (convert it, e.g. iconv -f UTF-16 -t UTF-8)")


def _decode(where: str, raw: bytes, first: bool) -> str:
    """Text of a file's line (or whole file): UTF-8, a byte-order mark at its start dropped."""
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


def _objects(path: Path) -> Iterator[tuple[str, dict | DataError]]:
    """(``file:line``, the line's JSON object or what is wrong with it) for each non-blank line."""
    with path.open("rb") as f:
        _refuse_utf16(f"{path}:1", f.read(2))
        f.seek(0)
        for lineno, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), 1):
            where = f"{path}:{lineno}"
            if len(raw) > MAX_LINE_BYTES:
                while raw and not raw.endswith(b"\n"):          # the rest of the line is this row too
                    raw = f.readline(MAX_LINE_BYTES)
                yield where, DataError(f"{where}: line longer than {MAX_LINE_BYTES:,} bytes (is this a JSONL file?)")
                continue
            try:
                line = _decode(where, raw, first=lineno == 1)
                if not line.strip():
                    continue
                obj = parse_json(where, line)
                if not isinstance(obj, dict):
                    raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            except DataError as e:
                yield where, e
                continue
            yield where, obj


DATASET_FORMATS = {".parquet": "parquet", ".csv": "csv"}   # file suffix -> datasets builder


def is_dataset_file(path: Path) -> bool:
    """Whether ``path`` is read through HF ``datasets``: parquet, CSV, or a save_to_disk folder."""
    return path.suffix in DATASET_FORMATS or path.is_dir()


def _dataset_objects(path: Path) -> Iterator[tuple[str, dict | DataError]]:
    """(``file: row i``, the row) of a parquet/CSV file or a ``save_to_disk`` folder, streamed."""
    import datasets
    datasets.disable_progress_bars()
    try:
        if path.is_dir():
            rows = datasets.load_from_disk(str(path))         # memory-mapped Arrow
            if isinstance(rows, datasets.DatasetDict):
                raise DataError(f"{path}: a dataset with splits ({', '.join(rows)}); name one split's folder")
        else:
            rows = datasets.load_dataset(DATASET_FORMATS[path.suffix], data_files=str(path), split="train",
                                         streaming=True)
        for i, obj in enumerate(rows):
            yield f"{path}: row {i}", obj
    except DataError:
        raise
    except Exception as e:                                   # datasets/pyarrow raise many kinds
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot read it as {DATASET_FORMATS.get(path.suffix, 'a saved dataset')}: "
                        f"{first[:200]}") from None


def read_rows(path: str | Path, convert: Callable[[str, dict], dict], what: str,
              objects: Callable[[Path], Iterator[tuple[str, dict | DataError]]] = _objects,
              limit: int | None = None) -> list[dict]:
    """``convert(where, obj)`` of each row of a data file (a DataError from it names a bad row),
    skipping bad rows under :func:`skipping_bad_rows`; ``what`` the file should hold, for messages.
    Parquet, CSV and save_to_disk folders are streamed through ``datasets``; with ``limit``, only
    the first ``limit`` good rows are read."""
    path = Path(path).expanduser()
    if is_dataset_file(path):
        objects = _dataset_objects
    if not path.exists():
        raise DataError(f"{path}: no such data file")
    report, rows, bad = _SKIP_REPORT.get(), [], []
    for where, obj in objects(path):
        if limit is not None and len(rows) >= limit:
            break
        try:
            if isinstance(obj, DataError):
                raise obj
            rows.append(convert(where, obj))
        except DataError as e:
            if report is None:
                raise
            bad.append(str(e))
    if bad:
        report(f"{path}: skipped {len(bad)} bad row(s) of {len(bad) + len(rows)} (bad_rows: skip); "
               f"the first: {bad[0]}")
    if not rows:
        raise DataError(f"{path}: holds no {what}")
    return rows


def require(where: str, obj: dict, field: str, kinds: tuple[type, ...], what: str):
    """``obj[field]`` when it is one of ``kinds`` (never a bool), else a DataError naming the place."""
    if field not in obj:
        raise DataError(f"{where}: field {field!r}: missing")
    value = obj[field]
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise DataError(f"{where}: field {field!r}: expected {what}, got {type(value).__name__}")
    return value


def read_qa_jsonl(path: str | Path, question_field: str, answer_field: str, limit: int | None = None) -> list[dict]:
    """Rows ``{"question": str, "answer": str, ...other fields}`` from a data file (the first
    ``limit`` when set).

    Both fields must hold text or a number, the question not empty; blank lines are skipped.
    """
    def convert(where: str, obj: dict) -> dict:
        question = require(where, obj, question_field, (str, int, float), "text or a number")
        answer = require(where, obj, answer_field, (str, int, float), "text or a number")
        if not str(question).strip():
            raise DataError(f"{where}: field {question_field!r}: empty")
        rest = {k: v for k, v in obj.items() if k not in (question_field, answer_field)}
        return {**rest, "question": str(question), "answer": str(answer)}
    return read_rows(path, convert, "examples", limit=limit)


def _messages(where: str, obj: dict, field: str) -> list[dict]:
    """``obj[field]`` as a list of ``{"role": str, "content": str}`` messages."""
    messages = require(where, obj, field, (list,), "a list of messages")
    for j, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DataError(f"{where}: field '{field}[{j}]': expected an object, got {type(m).__name__}")
        require(where, m, "role", (str,), "text")
        require(where, m, "content", (str,), "text")
    return messages


def _reply(where: str, obj: dict, field: str) -> str:
    """A pair's response: text, or (TRL's conversational shape) messages ending with the assistant's."""
    if isinstance(obj.get(field), list):
        messages = _messages(where, obj, field)
        if not messages or messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: field '{field}': must end with an assistant message")
        return messages[-1]["content"]
    return require(where, obj, field, (str,), "text")


def read_sft_jsonl(path: str | Path) -> list[dict]:
    """SFT rows: ``{"prompt": str, "completion": str}`` or chat ``{"messages": [{"role", "content"}, ...]}``
    ending with an assistant message (the completion); other fields are kept."""
    def convert(where: str, obj: dict) -> dict:
        if "messages" in obj:
            messages = _messages(where, obj, "messages")
            if not messages or messages[-1]["role"] != "assistant":
                raise DataError(f"{where}: field 'messages': must end with an assistant message (the completion)")
        else:
            require(where, obj, "prompt", (str,), "text")
            if not require(where, obj, "completion", (str,), "text"):
                raise DataError(f"{where}: field 'completion': empty (nothing to learn)")
        return obj
    return read_rows(path, convert, "rows")


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


def _json_array(path: Path) -> Iterator[tuple[str, dict | DataError]]:
    """(``file: item i``, object or what is wrong with it) for each element of a JSON array file."""
    raw = path.read_bytes()
    _refuse_utf16(f"{path}:1", raw)
    items = parse_json(str(path), _decode(str(path), raw, first=True), one_line=False)
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON array of preference objects, got {type(items).__name__}")
    for i, obj in enumerate(items):
        where = f"{path}: item {i}"
        yield where, obj if isinstance(obj, dict) else DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")


def read_pairs(path: str | Path) -> list[dict]:
    """Preference pairs ``{"prompt", "chosen", "rejected", ...other fields}`` from JSONL (or a
    ``.json`` array), in either shape:

    - ``{"prompt": str, "chosen": str, "rejected": str}`` (TRL's preference shape), or TRL's
      conversational one: ``prompt`` a list of messages (kept as ``prompt_messages``, rendered with
      the model's chat template when the stage tokenizes it), ``chosen``/``rejected`` text or
      messages ending with the assistant's, or
    - ``{"instruction": str, "input": str (may be empty or absent), "output": str, "chosen": str,
      "rejected": str}``, the prompt then rendered in the Alpaca style (:func:`alpaca_prompt`).
    """
    def convert(where: str, obj: dict) -> dict:
        if isinstance(obj.get("prompt"), list):                  # chat: rendered by the stage's tokenizer
            messages = _messages(where, obj, "prompt")
            return {**obj, "prompt": "\n".join(f"{m['role']}: {m['content']}" for m in messages),
                    "prompt_messages": messages, "chosen": _reply(where, obj, "chosen"),
                    "rejected": _reply(where, obj, "rejected")}
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
        return {**obj, "prompt": prompt, "chosen": chosen, "rejected": rejected}
    return read_rows(path, convert, "preference pairs",
                     objects=_json_array if Path(path).suffix == ".json" else _objects)
