"""The metadata keys of a GGUF file, read from its header without loading tensors or vocabulary
(the ``gguf`` package's reader decodes every token string: seconds for a 49k vocabulary), so a
config can be checked against the file at once. Layout: llama.cpp's docs/gguf.md (version 2+)."""

from __future__ import annotations

import struct
from pathlib import Path

_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}   # type -> bytes
_STRING, _ARRAY = 8, 9


class _Cursor:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, fmt: str):
        value = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value[0]

    def string(self) -> str:
        n = self.take("Q")
        self.at += n
        return self.data[self.at - n:self.at].decode("utf-8", "replace")

    def skip(self, kind: int) -> None:
        if kind in _SCALAR:
            self.at += _SCALAR[kind]
        elif kind == _STRING:
            n = self.take("Q")
            self.at += n
        elif kind == _ARRAY:
            inner, count = self.take("I"), self.take("Q")
            if inner in _SCALAR:
                self.at += _SCALAR[inner] * count
            else:
                for _ in range(count):
                    self.skip(inner)
        else:
            raise ValueError(f"unknown GGUF value type {kind}")


def metadata_keys(path: Path) -> list[str]:
    """The metadata keys of the GGUF file at ``path``; ValueError when it is not one."""
    with open(path, "rb") as f:
        data = f.read(64 << 20)                      # metadata precedes the tensors: a few MB at most
    if data[:4] != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    cursor = _Cursor(data)
    cursor.at = 4
    if cursor.take("I") < 2:
        raise ValueError(f"{path}: GGUF version 1 is not supported")
    cursor.take("Q")                                 # tensor count
    keys = []
    try:
        for _ in range(cursor.take("Q")):
            keys.append(cursor.string())
            cursor.skip(cursor.take("I"))
    except struct.error:
        raise ValueError(f"{path}: GGUF metadata past the first 64 MB, or a truncated file") from None
    return keys
