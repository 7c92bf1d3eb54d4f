"""Built-in sources: ``csv``, ``json`` (array or JSON Lines) and ``null``.

Sources only READ: they yield each record as a ``Row`` (a dict, in a stable order) or, when a
record cannot even be parsed (undecodable bytes, a broken line, a wrong field count, NaN), as a
``BadRow`` with a reason naming the line, so that the engine quarantines it — a source never
crashes on one bad record and never drops one silently. Sources do NOT apply the ``schema``
option: the engine validates rows with :class:`~elspeth_core.plugins.schema.RowSchema` built from
``config.schema_`` and routes failures to ``config.on_validation_failure``. Sources never import
SQLAlchemy and never touch the landscape.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

from pydantic import Field

from elspeth_core.errors import ConfigError, PluginError
from elspeth_core.plugins.protocols import BadRow, PluginConfig, Row, validated_options
from elspeth_core.plugins.schema import RowSchema
from elspeth_core.plugins.source_position import PrefixDigest, seekable_encoding

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_INTEGER = re.compile(r"-?[0-9]+")
_MAX_SAFE_INTEGER = 2**53 - 1  # the largest integer RFC 8785 (I-JSON) hashes exactly


class SourceOptions(PluginConfig):
    """Options every source accepts: the schema and where rows that fail it go."""

    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    on_validation_failure: str = Field(default="discard", min_length=1)


class CsvSourceOptions(SourceOptions):
    path: str = Field(min_length=1)
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    encoding: str = "utf-8"
    skip_rows: int = Field(default=0, ge=0)


class JsonSourceOptions(SourceOptions):
    path: str = Field(min_length=1)
    format: Literal["json", "jsonl"] | None = None
    data_key: str | None = None
    encoding: str = "utf-8"


class _Source:
    """Shared construction: validate options, parse the schema early so mistakes surface first."""

    version: ClassVar[str] = "1.0.0"
    config_model: ClassVar[type[SourceOptions]] = SourceOptions

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.config = validated_options(self.config_model, options)
        self.row_schema = RowSchema.from_options(self.config.schema_)


class NullSource(_Source):
    """Yields nothing (pipelines driven by something else, tests)."""

    name: ClassVar[str] = "null"

    def read(self) -> Iterator[Row | BadRow]:
        return iter(())


class CsvSource(_Source):
    """Streams a delimited text file; the header row names the fields; values stay strings.

    ``skip_rows`` physical lines are skipped before the header (report preambles). A UTF-8 byte
    order mark at the start of the file is dropped. Blank lines are skipped. Quoting is parsed
    strictly: a malformed quote, an unterminated quoted field or a field over the csv module's
    size limit (128 KiB) becomes a ``BadRow`` for that record. Line numbers in reasons are the
    physical line on which the record starts, counting skipped lines.

    Seekable (in an ASCII-compatible, stateless encoding): after each record it yields,
    ``position`` is ``(byte offset past the record, next physical line)``; ``read(start=...)``
    continues from such a position (the header is read from the top first), and
    ``prefix_digest``/``verify_prefix`` hash the bytes before an offset (see
    :mod:`~elspeth_core.plugins.source_position`).
    """

    name: ClassVar[str] = "csv"
    config_model: ClassVar[type[SourceOptions]] = CsvSourceOptions
    config: CsvSourceOptions

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        _check_encoding(self.config.encoding)
        self.seekable = seekable_encoding(self.config.encoding)
        self.position: tuple[int, int] | None = None
        self._prefix: PrefixDigest | None = None
        self._header: list[str] | None = None
        # Bytes per decoded character run are counted in the file's own encoding; a UTF-8 BOM
        # is only ever at byte 0.
        name = codecs.lookup(self.config.encoding).name
        self._byte_encoding = "utf-8" if name in ("utf-8", "utf-8-sig") else self.config.encoding

    def read(self, start: tuple[int, int] | None = None) -> Generator[Row | BadRow, None, None]:
        """Yield the file's records, from the top or from ``start`` (a ``position`` seen before).

        Raises:
            PluginError: the header is malformed, or ``start`` is given for an encoding that
                cannot seek.
        """
        path = Path(self.config.path)
        if start is not None:
            if not self.seekable:
                raise PluginError(f"{path}: encoding {self.config.encoding} cannot seek")
            header = self._read_header()
            offset, line = start
            with _open_text_at(path, self._byte_encoding, offset) as handle:
                yield from self._records(handle, first_line=line, offset=offset, header=header)
            return
        with _open_text(path, self.config.encoding, newline="") as handle:
            offset = _bom_length(path) if self._byte_encoding == "utf-8" else 0
            for _ in range(self.config.skip_rows):
                skipped = handle.readline()
                if not skipped:
                    return
                offset += self._nbytes(skipped)
            yield from self._records(handle, first_line=self.config.skip_rows + 1, offset=offset)

    def prefix_digest(self, offset: int) -> str:
        """SHA-256 of the file's bytes before ``offset`` (incremental across calls)."""
        if self._prefix is None:
            self._prefix = PrefixDigest(Path(self.config.path))
        return self._prefix.up_to(offset)

    def verify_prefix(self, offset: int, sha256: str) -> bool:
        """Whether the bytes before ``offset`` still hash to ``sha256`` (False if shorter)."""
        digest = PrefixDigest(Path(self.config.path))
        try:
            same = digest.up_to(offset) == sha256
        except (EOFError, OSError):
            same = False
        if not same:
            digest.close()
            return False
        self.close()
        self._prefix = digest  # later commits extend this digest
        return True

    def close(self) -> None:
        if self._prefix is not None:
            self._prefix.close()
            self._prefix = None

    def _read_header(self) -> list[str]:
        records = self.read()
        try:
            for _ in records:
                break
        finally:
            records.close()
        if self._header is None:
            raise PluginError(f"{self.config.path}: no header row")
        return self._header

    def _nbytes(self, text: str) -> int:
        if text.isascii():
            return len(text)
        return len(text.encode(self._byte_encoding, "surrogateescape"))

    def _records(
        self,
        handle: IO[str],
        *,
        first_line: int,
        offset: int,
        header: list[str] | None = None,
    ) -> Iterator[Row | BadRow]:
        lines: list[str] = []
        reader = csv.reader(_tracked(handle, lines), delimiter=self.config.delimiter, strict=True)
        line = first_line
        self._header = header
        seekable = self.seekable
        while True:
            error: csv.Error | None = None
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                record, error = [], exc
            raw = "".join(lines)
            start, line = line, line + len(lines)
            lines.clear()
            if seekable:
                offset += len(raw) if raw.isascii() else self._nbytes(raw)
                self.position = (offset, line)
            if error is not None:
                yield self._malformed(error, raw, start, header_read=self._header is not None)
            elif not record:
                continue
            elif self._header is None:
                self._header = self._parse_header(record, raw, start)
            else:
                yield self._row(self._header, record, raw, start)

    def _malformed(self, error: csv.Error, raw: str, line: int, *, header_read: bool) -> BadRow:
        if not header_read:
            raise PluginError(f"{self.config.path}: header (line {line}) is malformed: {error}")
        return BadRow(f"line {line}: malformed CSV: {error}", _printable(raw))

    def _parse_header(self, record: list[str], raw: str, line: int) -> list[str]:
        problem = _undecodable(raw, self.config.encoding)
        if problem:
            raise PluginError(f"{self.config.path}: header (line {line}) {problem}")
        duplicates = sorted({name for name in record if record.count(name) > 1})
        if duplicates:
            raise PluginError(
                f"{self.config.path}: header (line {line}) repeats column {duplicates[0]!r}"
            )
        return record

    def _row(self, header: list[str], record: list[str], raw: str, line: int) -> Row | BadRow:
        if not raw.isascii():
            problem = _undecodable(raw, self.config.encoding)
            if problem:
                return BadRow(f"line {line}: {problem}", _printable(raw))
        if len(record) != len(header):
            return BadRow(f"line {line}: {_count_mismatch(header, record)}", _printable(raw))
        return dict(zip(header, record, strict=True))


def _count_mismatch(header: list[str], record: list[str]) -> str:
    """Why a record's field count is wrong, naming the header fields it lacks."""
    expected = f"expected {len(header)} fields, got {len(record)}"
    if len(record) < len(header):
        missing = ", ".join(repr(name) for name in header[len(record) :])
        return f"{expected} (missing {missing})"
    return f"{expected} ({len(record) - len(header)} more than the header names)"


class JsonSource(_Source):
    """Reads a JSON array of objects (``json``) or one object per line (``jsonl``).

    ``format`` defaults from the extension: ``.jsonl``/``.ndjson`` → ``jsonl``, else ``json``.
    The ``json`` format reads the whole document into memory (JSON arrays cannot be streamed with
    the standard library); use ``jsonl`` for large inputs, which is streamed line by line. With
    ``data_key`` the array is taken from that key of a top-level object. ``NaN``/``Infinity``
    tokens, numbers that overflow to infinity (``1e999``), undecodable bytes, lone surrogates and
    non-object records become ``BadRow``\\ s whose reason names the field.
    """

    name: ClassVar[str] = "json"
    config_model: ClassVar[type[SourceOptions]] = JsonSourceOptions
    config: JsonSourceOptions

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        _check_encoding(self.config.encoding)
        self.format = self.config.format or _infer_format(self.config.path)
        if self.format == "jsonl" and self.config.data_key is not None:
            raise ConfigError("data_key applies only to the 'json' (array) format", key="data_key")

    def read(self) -> Generator[Row | BadRow, None, None]:
        path = Path(self.config.path)
        with _open_text(path, self.config.encoding, newline=None) as handle:
            if self.format == "jsonl":
                yield from self._lines(handle)
            else:
                yield from self._array(handle)

    def _lines(self, handle: IO[str]) -> Iterator[Row | BadRow]:
        constants: list[str] = []
        decode = _decoder(constants).decode
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            constants.clear()
            yield _json_line(decode, line, number, self.config.encoding, constants)

    def _array(self, handle: IO[str]) -> Iterator[Row | BadRow]:
        text = handle.read()
        constants: list[str] = []
        decoder = _decoder(constants)
        try:
            document = decoder.decode(text)
        except json.JSONDecodeError as exc:
            raise PluginError(
                f"{self.config.path}: invalid JSON at line {exc.lineno} column {exc.colno}: "
                f"{exc.msg}"
            ) from exc
        items = self._items(document)
        suspicious = bool(constants) or not text.isascii()
        for index, item in enumerate(items):
            yield _json_item(item, index, check=suspicious)

    def _items(self, document: Any) -> list[Any]:
        key = self.config.data_key
        if key is not None:
            if not isinstance(document, dict) or key not in document:
                raise PluginError(f"{self.config.path}: no key {key!r} in the top-level object")
            document = document[key]
        if not isinstance(document, list):
            hint = "" if key else " (set data_key to read an array inside an object)"
            raise PluginError(
                f"{self.config.path}: expected a JSON array, got {type(document).__name__}{hint}"
            )
        return document


class _Constant:
    """Stands in for a number that canonical JSON cannot hash — a ``NaN``/``Infinity`` token, a
    number such as ``1e999`` that overflows a float, an integer beyond ±(2**53 - 1) — while
    parsing, so that only its record is bad and the reason can name the field. ``seen`` tells the
    reader that a record needs the slower check."""

    __slots__ = ("token",)

    def __init__(self, token: str, seen: list[str]) -> None:
        self.token = token
        seen.append(token)

    def describe(self) -> str:
        if self.token in ("NaN", "Infinity", "-Infinity"):
            return f"{_constant_name(self.token)} is not allowed"
        if _INTEGER.fullmatch(self.token):
            shown = self.token if len(self.token) <= 40 else f"{self.token[:40]}..."
            return (
                f"integer {shown} is outside the range canonical JSON can hash "
                f"(±{_MAX_SAFE_INTEGER})"
            )
        sign = "-" if self.token.startswith("-") else ""
        return f"{self.token} overflows to {sign}Infinity, which is not allowed"


def _decoder(seen: list[str]) -> json.JSONDecoder:
    """A decoder that parses non-finite numbers to :class:`_Constant` markers listed in ``seen``.

    Canonical hashing rejects NaN and infinities, so they must be caught here, per record.
    """

    def parse_float(text: str) -> float | _Constant:
        value = float(text)
        return _Constant(text, seen) if math.isinf(value) else value

    def parse_int(text: str) -> int | _Constant:
        # The length test first: int() refuses more than 4,300 digits with a ValueError.
        if len(text) > 17 or abs(value := int(text)) > _MAX_SAFE_INTEGER:
            return _Constant(text, seen)
        return value

    return json.JSONDecoder(
        parse_constant=lambda token: _Constant(token, seen),
        parse_float=parse_float,
        parse_int=parse_int,
    )


def _json_line(
    decode: Callable[[str], Any], line: str, number: int, encoding: str, constants: list[str]
) -> Row | BadRow:
    if not line.isascii():
        problem = _undecodable(line, encoding)
        if problem:
            return BadRow(f"line {number}: {problem}", _printable(line.rstrip("\n")))
    try:
        value = decode(line)
    except json.JSONDecodeError as exc:
        return BadRow(f"line {number}: invalid JSON: {exc.msg} (column {exc.colno})", line.rstrip())
    if isinstance(value, _Constant):
        return BadRow(f"line {number}: {value.describe()}", line.rstrip())
    if type(value) is not dict:
        return BadRow(
            f"line {number}: expected a JSON object, got {type(value).__name__}", line.rstrip()
        )
    if constants or ("\\u" in line and _find_problem(value)):
        return BadRow(f"line {number}: {_find_problem(value)}", _printable(line.rstrip()))
    return value


def _json_item(item: Any, index: int, *, check: bool) -> Row | BadRow:
    problem = _find_problem(item) if check else None
    if problem:
        return BadRow(f"array index {index}: {problem}", _dump_raw(item))
    if type(item) is not dict:
        return BadRow(
            f"array index {index}: expected a JSON object, got {type(item).__name__}",
            _dump_raw(item),
        )
    return item


def _find_problem(value: Any, path: tuple[str | int, ...] = ()) -> str | None:
    """Why a parsed value cannot be a row — a non-finite number or a string with bad characters —
    naming the field where it is (``field 'x[1]': ...``)."""
    if isinstance(value, _Constant):
        return f"{_field(path)}{value.describe()}"
    if isinstance(value, str):
        if _has_surrogate(value):
            return f"{_field(path)}contains a lone surrogate or undecodable bytes"
        return None
    children: Iterable[tuple[str | int, Any]]
    if isinstance(value, dict):
        for key in value:
            if _has_surrogate(key):
                return f"{_field(path)}a field name contains a lone surrogate or undecodable bytes"
        children = value.items()
    elif isinstance(value, list):
        children = enumerate(value)
    else:
        return None
    for step, child in children:
        problem = _find_problem(child, (*path, step))
        if problem:
            return problem
    return None


def _field(path: tuple[str | int, ...]) -> str:
    """``field 'a.b[2]': `` for a path into a record; empty for the record itself."""
    if not path:
        return ""
    text = "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path)
    return f"field {text.removeprefix('.')!r}: "


def _constant_name(token: str) -> str:
    return "NaN" if token == "NaN" else "Infinity"


def _dump_raw(item: Any) -> str:
    """The element as JSON text again, for the quarantine record; a non-finite number keeps its
    source text (``NaN``, ``-Infinity``, ``1e999``)."""
    tokens: list[str] = []
    text = json.dumps(_with_placeholders(item, tokens), ensure_ascii=False, default=repr)
    for index, token in enumerate(tokens):
        text = text.replace(json.dumps(_placeholder(index), ensure_ascii=False), token, 1)
    return _printable(text)


def _with_placeholders(value: Any, tokens: list[str]) -> Any:
    if isinstance(value, _Constant):
        tokens.append(value.token)
        return _placeholder(len(tokens) - 1)
    if isinstance(value, dict):
        return {key: _with_placeholders(child, tokens) for key, child in value.items()}
    if isinstance(value, list):
        return [_with_placeholders(child, tokens) for child in value]
    return value


def _placeholder(index: int) -> str:
    # Private-use characters around a counter: not something a JSON source row plausibly holds.
    return f"\ue000elspeth-number-{index}\ue000"


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and _LONE_SURROGATE.search(text) is not None


def _undecodable(text: str, encoding: str) -> str | None:
    """Describe the bytes that ``surrogateescape`` smuggled into ``text``, if any."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        escaped = _ESCAPED_BYTE.findall(text)
        if not escaped:
            return "contains a lone surrogate"
        shown = bytes(ord(ch) - 0xDC00 for ch in escaped[:8])
        return f"bytes not valid {encoding}: {shown!r}"
    return None


def _printable(text: str) -> str:
    """``text`` with undecodable bytes and lone surrogates shown as escapes (safe to store)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _tracked(handle: IO[str], lines: list[str]) -> Iterator[str]:
    """Feed ``handle``'s lines to the csv reader, keeping the current record's raw lines."""
    for line in handle:
        lines.append(line)
        yield line


def _bom_length(path: Path) -> int:
    """3 when the file starts with a UTF-8 byte order mark (which the decoder drops)."""
    try:
        with path.open("rb") as handle:
            return 3 if handle.read(3) == codecs.BOM_UTF8 else 0
    except OSError:
        return 0


def _open_text_at(path: Path, encoding: str, offset: int) -> IO[str]:
    """Open for reading as text from byte ``offset`` (a record boundary), lines untranslated."""
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise PluginError(f"cannot open source file {path}: {exc.strerror or exc}") from exc
    raw.seek(offset)
    return io.TextIOWrapper(raw, encoding=encoding, errors="surrogateescape", newline="")


def _open_text(path: Path, encoding: str, *, newline: str | None) -> IO[str]:
    """Open for reading; undecodable bytes become lone surrogates (checked per record)."""
    if codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"  # same decoding, but a leading byte order mark is dropped
    try:
        return path.open(encoding=encoding, errors="surrogateescape", newline=newline)
    except FileNotFoundError as exc:
        raise ConfigError(f"source file not found: {path}", key="path") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"source path is a directory: {path}", key="path") from exc
    except OSError as exc:
        raise PluginError(f"cannot open source file {path}: {exc.strerror or exc}") from exc


def _check_encoding(encoding: str) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError as exc:
        raise ConfigError(f"unknown encoding {encoding!r}", key="encoding") from exc


def _infer_format(path: str) -> Literal["json", "jsonl"]:
    return "jsonl" if Path(path).suffix.lower() in (".jsonl", ".ndjson") else "json"
