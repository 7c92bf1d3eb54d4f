"""Byte positions in a seekable text source, and the digest of the bytes before one.

A source that can seek (the CSV source, in an ASCII-compatible, stateless encoding) reports after
each record it yields the byte offset just past that record and the physical line that follows.
The engine records it with every commit, next to the ingest count, together with the SHA-256 of
the file's bytes before that offset. A resume then proves that everything already ingested is
unchanged with ONE digest over those bytes and seeks there, instead of re-parsing and re-hashing
every recorded row: resume cost follows the work left, not the size of the run.

Pitfalls:
- A digest that does not match proves nothing about rows (a re-encoded line ending changes bytes,
  not values): the engine then falls back to the row-by-row check, which is the authority.
- Seeking is only sound where a record boundary is a clean decoder boundary: ASCII-compatible,
  stateless encodings (UTF-8, Latin-1, cp125x, ...), never UTF-16/32, UTF-7 or ISO-2022.
"""

from __future__ import annotations

import codecs
import hashlib
from pathlib import Path
from typing import IO

_PROBE = 'id,a;b|c\t"x"\r\n'
_STATEFUL_PREFIXES = ("iso2022", "utf-7", "utf_7", "hz")
_READ_BYTES = 1 << 20


def seekable_encoding(encoding: str) -> bool:
    """Whether a record boundary found by counting encoded lengths is a safe place to seek to."""
    try:
        name = codecs.lookup(encoding).name
        same = _PROBE.encode(encoding) == _PROBE.encode("ascii")
    except (LookupError, UnicodeError):
        return False
    return same and not name.startswith(_STATEFUL_PREFIXES)


class PrefixDigest:
    """SHA-256 of a file's bytes ``[0, offset)``, extended incrementally as ``offset`` grows.

    Each commit asks for the digest at the current source offset; only the bytes read since the
    previous commit are hashed (through a handle of its own, the source's reader is untouched).
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._sha = hashlib.sha256()
        self._upto = 0
        self._handle: IO[bytes] | None = None

    def up_to(self, offset: int) -> str:
        """The digest of the bytes before ``offset``.

        Raises:
            EOFError: the file is shorter than ``offset``.
            ValueError: ``offset`` is before a digest already taken (offsets only grow).
        """
        if offset < self._upto:
            raise ValueError(f"offset {offset} is before {self._upto}")
        if offset > self._upto:
            handle = self._open()
            handle.seek(self._upto)
            remaining = offset - self._upto
            while remaining:
                chunk = handle.read(min(remaining, _READ_BYTES))
                if not chunk:
                    raise EOFError(f"{self._path} ends before byte {offset}")
                self._sha.update(chunk)
                remaining -= len(chunk)
            self._upto = offset
        return self._sha.copy().hexdigest()

    def _open(self) -> IO[bytes]:
        if self._handle is None:
            self._handle = self._path.open("rb")
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
