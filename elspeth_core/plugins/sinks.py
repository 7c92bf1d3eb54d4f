"""Built-in file sinks (``csv``, ``json``) that publish exactly once across crashes.

How exactly-once works: a sink appends encoded rows to one buffered binary handle; ``flush()``
fsyncs and returns a :class:`Publication` whose ``state["offset"]`` is the byte length of the
output at that moment. The engine commits that publication in the landscape in the same
transaction as the outcomes of the rows it contains. After a crash, ``restore(publication)`` cuts
the file back to the committed offset — bytes written after it belong to rows whose outcomes were
never committed and will be written again — and reloads the format state (CSV header, JSON
bracket) from ``state``. Because each row's bytes depend only on the row and that state, the final
file is byte-identical however writes, flushes, crashes and restores interleave.

Life cycle (an explicit state machine): ``restore`` → (``write``* → ``flush``)* → ``finish`` →
``close``. ``finish`` completes the output (closes a JSON array); writing after it is an error.

Pitfall for append mode: ``restore(None)`` takes the file's current end as its base, so the engine
must commit the publication returned by a ``flush()`` right after ``restore(None)`` (before any
row is written). Otherwise a crash before the first commit leaves uncommitted rows that a second
``restore(None)`` would mistake for pre-existing content.

Sinks never import SQLAlchemy and never touch the landscape; they never decide what was committed.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from elspeth_core.errors import ConfigError, SinkError
from elspeth_core.files import fsync_directory
from elspeth_core.plugins.protocols import PluginConfig, Publication, Row, validated_options

_BUFFER_BYTES = 1 << 20
_HASH_CHUNK = 1 << 20
_NESTED = (dict, list)
_json_row = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False
).encode


class CsvSinkOptions(PluginConfig):
    path: str = Field(min_length=1)
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    encoding: str = "utf-8"
    mode: Literal["write", "append"] = "write"


class JsonSinkOptions(PluginConfig):
    path: str = Field(min_length=1)
    format: Literal["json", "jsonl"] | None = None


class _FileSink:
    """The publication state machine shared by file sinks; subclasses encode rows.

    State: ``_offset`` (bytes in the file that this sink vouches for), ``_rows`` (rows this run
    published), ``_base`` (where this run's output starts: > 0 only when appending to an existing
    file), ``_fieldnames`` (CSV header), ``_opened`` (header / opening bracket written),
    ``_closed`` (``finish`` done).
    """

    version: ClassVar[str] = "1.0.0"
    mode: str = "write"
    _text_encoding: str = "utf-8"

    def __init__(self, path: str) -> None:
        self.path = Path(os.path.abspath(path))
        self._handle: io.BufferedRandom | None = None
        self._broken = False
        self._offset = 0
        self._rows = 0
        self._base = 0
        self._fieldnames: list[str] | None = None
        self._opened = False
        self._closed = False

    # -- life cycle -------------------------------------------------------------------------

    def restore(self, publication: Publication | None, *, run_id: str) -> None:
        """Open the output so that it holds exactly what ``publication`` vouches for.

        ``run_id`` is part of the protocol for sinks that keep a per-run ledger (databases); a
        file's publication state is all a file sink needs.

        Raises:
            SinkError: the file is missing or shorter than the publication says (it was modified
                outside ELSPETH), or the publication belongs to another file.
        """
        self.close()
        self._reset()
        if publication is None:
            self._start_fresh()
        else:
            self._resume(publication)
        self._broken = False

    def write(self, rows: list[Row]) -> None:
        """Append ``rows`` (buffered; durable only after ``flush``).

        Raises:
            SinkError: a row cannot be encoded (then nothing of this call is written), the
                output is finished, or the file could not be written.
        """
        handle = self._writable()
        if self._closed:
            raise SinkError(f"output {self.path} is already finished; cannot write more rows")
        if not rows:
            return
        data, fieldnames = self._encode(rows)
        self._append(handle, data)
        self._rows += len(rows)
        self._fieldnames = fieldnames
        self._opened = True

    def flush(self) -> Publication:
        """Make everything written so far durable and return the publication to commit."""
        publication, sync = self.flush_deferred()
        sync()
        return publication

    def flush_deferred(self) -> tuple[Publication, Callable[[], None]]:
        """``flush`` in two steps: the bytes go to the OS now; the returned call makes them
        durable (fsync). The engine runs that call on its commit thread while it reads the next
        rows; nothing is written to this sink until the call has returned.

        Raises:
            SinkError: the bytes could not be handed to the OS (now) or made durable (the call).
        """
        handle = self._writable()
        try:
            handle.flush()
        except OSError as exc:
            self._broken = True
            raise SinkError(f"cannot flush {self.path}: {exc}") from exc
        fd = handle.fileno()

        def sync() -> None:
            try:
                os.fsync(fd)
            except OSError as exc:
                self._broken = True
                raise SinkError(f"cannot flush {self.path}: {exc}") from exc

        return self._publication(), sync

    def finish(self) -> Publication:
        """Complete the output (idempotent), make it durable and return the final publication."""
        handle = self._writable()
        if not self._closed:
            self._append(handle, self._ending())
            self._closed = True
        return self.flush()

    def close(self) -> None:
        """Release the file handle (uncommitted bytes are harmless: ``restore`` cuts them)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.close()
            except OSError:
                self._broken = True

    def content_hash(self) -> str | None:
        """SHA-256 hex of the whole output file (streamed), or None when it does not exist."""
        if self._handle is not None and not self._broken:
            self._handle.flush()
        digest = hashlib.sha256()
        try:
            with self.path.open("rb") as stream:
                while chunk := stream.read(_HASH_CHUNK):
                    digest.update(chunk)
        except FileNotFoundError:
            return None
        return digest.hexdigest()

    # -- hooks for the formats ----------------------------------------------------------------

    def _encode(self, rows: list[Row]) -> tuple[bytes, list[str] | None]:
        """Bytes for ``rows`` given the current state, and the field names after them."""
        raise NotImplementedError

    def _ending(self) -> bytes:
        """Bytes that complete the output at ``finish``."""
        return b""

    def _after_fresh_open(self, handle: io.BufferedRandom) -> None:
        """Adjust state after ``restore(None)`` opened the file (append mode reads the header)."""

    # -- internals ----------------------------------------------------------------------------

    def _reset(self) -> None:
        self._offset = 0
        self._rows = 0
        self._base = 0
        self._fieldnames = None
        self._opened = False
        self._closed = False

    def _start_fresh(self) -> None:
        if self.mode == "append" and self.path.exists():
            try:
                handle = _open_binary(self.path, "r+")
            except OSError as exc:
                raise SinkError(f"cannot open output file {self.path}: {exc}") from exc
            self._base = self._offset = handle.seek(0, os.SEEK_END)
        else:
            handle = self._create()
        self._handle = handle
        self._after_fresh_open(handle)

    def _create(self) -> io.BufferedRandom:
        """Create (or truncate) the output file, making its directory entry durable."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = _open_binary(self.path, "w+")
        except OSError as exc:
            raise SinkError(f"cannot create output file {self.path}: {exc}") from exc
        fsync_directory(self.path.parent)
        return handle

    def _resume(self, publication: Publication) -> None:
        state = publication.state
        offset = _state_int(state, "offset", self.path)
        if os.path.abspath(publication.uri) != str(self.path):
            raise SinkError(
                f"the audit trail's publication is for {publication.uri}, but this sink writes "
                f"{self.path}",
                hint="Resume from the directory the run started in, or fix the sink path.",
            )
        handle = self._open_existing(offset)
        self._handle = handle
        self._offset = offset
        self._rows = publication.rows
        self._base = int(state.get("base", 0))
        fieldnames = state.get("fieldnames")
        self._fieldnames = list(fieldnames) if fieldnames is not None else None
        self._opened = bool(state.get("opened", False))
        self._closed = bool(state.get("closed", False))

    def _open_existing(self, offset: int) -> io.BufferedRandom:
        try:
            handle = _open_binary(self.path, "r+")
        except FileNotFoundError as exc:
            if offset == 0:  # nothing was published yet: recreating loses nothing
                return self._create()
            raise SinkError(
                f"output file {self.path} is missing, but the audit trail says {offset} bytes "
                "were published to it: it was modified outside ELSPETH",
                hint="Restore the file from a backup, or start a fresh run with --force-new.",
            ) from exc
        except OSError as exc:
            raise SinkError(f"cannot open output file {self.path}: {exc}") from exc
        size = handle.seek(0, os.SEEK_END)
        if size < offset:
            handle.close()
            raise SinkError(
                f"output file {self.path} is shorter than the audit trail says "
                f"({size} < {offset} bytes): it was modified outside ELSPETH",
                hint="Restore the file from a backup, or start a fresh run with --force-new.",
            )
        if size > offset:  # bytes of rows whose outcomes were never committed
            handle.truncate(offset)
            os.fsync(handle.fileno())
        handle.seek(offset)
        return handle

    def _writable(self) -> io.BufferedRandom:
        if self._handle is None:
            raise SinkError(f"sink for {self.path} is not open: call restore() first")
        if self._broken:
            raise SinkError(f"a write to {self.path} failed earlier: call restore() first")
        return self._handle

    def _append(self, handle: io.BufferedRandom, data: bytes) -> None:
        try:
            handle.write(data)
        except OSError as exc:
            self._broken = True
            raise SinkError(f"cannot write to {self.path}: {exc}") from exc
        self._offset += len(data)

    def _publication(self) -> Publication:
        return Publication(
            uri=str(self.path),
            rows=self._rows,
            size_bytes=self._offset,
            state={
                "offset": self._offset,
                "fieldnames": list(self._fieldnames) if self._fieldnames is not None else None,
                "opened": self._opened,
                "closed": self._closed,
                "base": self._base,
            },
        )

    def _encode_text(self, text: str) -> bytes:
        try:
            return text.encode(self._text_encoding)
        except UnicodeEncodeError as exc:
            bad = exc.object[exc.start : exc.end]
            raise SinkError(
                f"{bad!r} cannot be written to {self.path} in encoding {self._text_encoding}"
            ) from exc


class CsvSink(_FileSink):
    """Delimited text; the header (first row's fields, in order) is written once per file.

    A later row with a field that is not in the header is refused (``SinkError``); missing fields
    are written empty. ``None`` is written empty, dicts and lists as compact JSON, other values with
    ``str``. Lines end with ``\\n``. ``mode: append`` appends to an existing file under its existing
    header (a missing final newline is added first). ``encoding: utf-8-sig`` writes a byte order
    mark at the start of a new file only.
    """

    name: ClassVar[str] = "csv"
    config_model: ClassVar[type[PluginConfig]] = CsvSinkOptions

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.config = validated_options(CsvSinkOptions, options)
        self.mode = self.config.mode
        self._text_encoding, self._bom = _sink_encoding(self.config.encoding)
        super().__init__(self.config.path)

    def _encode(self, rows: list[Row]) -> tuple[bytes, list[str] | None]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=self.config.delimiter, lineterminator="\n")
        fieldnames = self._fieldnames
        if fieldnames is None:
            fieldnames = [str(key) for key in rows[0]]
            if not fieldnames:
                raise SinkError(f"cannot start {self.path}: the first row has no fields")
            writer.writerow(fieldnames)
        known = frozenset(fieldnames)
        for row in rows:
            if not row.keys() <= known:
                self._refuse_extra(row, fieldnames, known)
            values = [row.get(name) for name in fieldnames]
            writer.writerow([_json_cell(v) if type(v) in _NESTED else v for v in values])
        data = self._encode_text(buffer.getvalue())
        if self._offset == 0 and self._bom:
            data = self._bom + data
        return data, fieldnames

    def _refuse_extra(self, row: Row, fieldnames: list[str], known: frozenset[str]) -> None:
        extra = next(key for key in row if key not in known)
        raise SinkError(
            f"row has field {extra!r} that is not in the CSV header of {self.path} "
            f"({', '.join(fieldnames)})"
        )

    def _after_fresh_open(self, handle: io.BufferedRandom) -> None:
        if self._base == 0:
            return
        handle.seek(self._base - 1)
        if handle.read(1) != b"\n":  # don't glue our first row onto the last existing line
            self._append(handle, b"\n")
            handle.flush()
            self._base = self._offset
        self._fieldnames = self._existing_header()
        self._opened = True

    def _existing_header(self) -> list[str]:
        try:
            with self.path.open(encoding=self.config.encoding, errors="replace", newline="") as f:
                header = next(csv.reader(f, delimiter=self.config.delimiter), None)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise SinkError(
                f"cannot read the header of {self.path} to append to it: {exc}"
            ) from exc
        if not header:
            raise SinkError(f"cannot append to {self.path}: its first line is not a CSV header")
        return header


class JsonSink(_FileSink):
    """JSON Lines (one compact object per line) or one JSON array of compact objects.

    The array is written as ``[\\n`` + rows joined by ``,\\n`` + ``\\n]\\n`` (one row per line).

    ``format`` defaults from the extension (``.jsonl``/``.ndjson`` → ``jsonl``, else ``json``).
    Output is UTF-8, non-ASCII written as is; NaN and Infinity are refused (``SinkError``). An
    empty array output is ``[]\\n``.
    """

    name: ClassVar[str] = "json"
    config_model: ClassVar[type[PluginConfig]] = JsonSinkOptions

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.config = validated_options(JsonSinkOptions, options)
        self.format = self.config.format or _infer_format(self.config.path)
        super().__init__(self.config.path)

    def _encode(self, rows: list[Row]) -> tuple[bytes, list[str] | None]:
        try:
            encoded = [_json_row(row) for row in rows]
        except (TypeError, ValueError) as exc:
            raise SinkError(f"a row cannot be written as JSON to {self.path}: {exc}") from exc
        if self.format == "jsonl":
            text = "\n".join(encoded) + "\n"
        else:
            text = (",\n" if self._opened else "[\n") + ",\n".join(encoded)
        return self._encode_text(text), None

    def _ending(self) -> bytes:
        if self.format == "jsonl":
            return b""
        return b"\n]\n" if self._opened else b"[]\n"


def _open_binary(path: Path, mode: Literal["r+", "w+"]) -> io.BufferedRandom:
    """One buffered read/write handle: ``r+`` keeps the content, ``w+`` creates or truncates."""
    return io.BufferedRandom(io.FileIO(path, mode), buffer_size=_BUFFER_BYTES)


def _json_cell(value: Any) -> str:
    try:
        return _json_row(value)
    except (TypeError, ValueError) as exc:
        raise SinkError(f"a nested value cannot be written as JSON: {exc}") from exc


def _sink_encoding(encoding: str) -> tuple[str, bytes]:
    """The codec to encode batches with, and the BOM to write once at the start of a file."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError as exc:
        raise ConfigError(f"unknown encoding {encoding!r}", key="encoding") from exc
    if name == "utf-8-sig":
        return "utf-8", codecs.BOM_UTF8
    if "\n".encode(name) != b"\n" or "".encode(name) != b"":
        raise ConfigError(
            f"encoding {encoding!r} is not supported by file sinks (use an ASCII-compatible "
            "encoding such as utf-8, utf-8-sig or latin-1)",
            key="encoding",
        )
    return name, b""


def _state_int(state: Mapping[str, Any], key: str, path: Path) -> int:
    value = state.get(key)
    if type(value) is not int or value < 0:
        raise SinkError(f"publication state for {path} has no valid {key!r} (got {value!r})")
    return value


def _infer_format(path: str) -> Literal["json", "jsonl"]:
    return "jsonl" if Path(path).suffix.lower() in (".jsonl", ".ndjson") else "json"
