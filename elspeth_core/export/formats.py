"""The on-disk layout of an audit export, shared by the writer and ``verify``.

``json`` is JSON Lines: one object per record, ``{"index", "table", "id", "record",
"signature"}``, then one final line ``{"manifest": {...}, "signature": "..."}``.
``csv`` has the columns ``index,table,id,record,signature`` (``record`` holds the record as JSON,
since tables differ in columns), then a final row whose ``index`` is ``manifest`` and whose
``record`` holds the manifest as JSON. Both stream: neither writing nor reading holds the export
in memory. Documented for auditors in ``docs/audit-export.md``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

FORMAT = "elspeth.audit-export/v1"
FORMATS = ("json", "csv")
CSV_COLUMNS = ("index", "table", "id", "record", "signature")
MANIFEST = "manifest"

# csv's default field limit (128 KiB) is smaller than a large settings_json record.
csv.field_size_limit(1 << 30)


def _dumps(value: Any) -> str:
    return json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
    )


class ExportWriter:
    """Writes records and the manifest in one of the two layouts."""

    def __init__(self, handle: TextIO, fmt: str) -> None:
        self.handle = handle
        self.fmt = fmt
        self._csv = csv.writer(handle, lineterminator="\n") if fmt == "csv" else None
        if self._csv is not None:
            self._csv.writerow(CSV_COLUMNS)

    def record(
        self, index: int, table: str, record_id: str, record: dict[str, Any], signature: str
    ) -> None:
        if self._csv is not None:
            self._csv.writerow([index, table, record_id, _dumps(record), signature])
            return
        self.handle.write(
            _dumps(
                {
                    "index": index,
                    "table": table,
                    "id": record_id,
                    "record": record,
                    "signature": signature,
                }
            )
            + "\n"
        )

    def manifest(self, manifest: dict[str, Any], signature: str) -> None:
        if self._csv is not None:
            self._csv.writerow([MANIFEST, "", "", _dumps(manifest), signature])
            return
        self.handle.write(_dumps({"manifest": manifest, "signature": signature}) + "\n")


@dataclass
class Entry:
    """One line of an export as read back; ``problem`` says why it could not be parsed."""

    position: int
    kind: str  # record | manifest | unreadable
    index: Any = None
    table: str | None = None
    record_id: str | None = None
    record: Any = None
    signature: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None


def detect_format(path: Path) -> str:
    with open(path, encoding="utf-8") as handle:
        first = handle.read(1)
    return "json" if first == "{" else "csv"


def read_entries(path: Path) -> Iterator[Entry]:
    """Every entry of an export file, in file order (the CSV header is skipped)."""
    fmt = detect_format(path)
    with open(path, encoding="utf-8", newline="") as handle:
        if fmt == "json":
            for position, line in enumerate(handle):
                yield _json_entry(position, line)
            return
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is not None and tuple(header) != CSV_COLUMNS:
            yield Entry(0, "unreadable", problem=f"not an audit export (header {header!r})")
            return
        for position, row in enumerate(reader):
            yield _csv_entry(position, row)


def _json_entry(position: int, line: str) -> Entry:
    try:
        value = json.loads(line)
    except ValueError:
        return Entry(position, "unreadable", problem="not valid JSON")
    if not isinstance(value, dict):
        return Entry(position, "unreadable", problem="not a JSON object")
    if "manifest" in value:
        manifest = value.get("manifest")
        return Entry(
            position,
            "manifest",
            manifest=manifest if isinstance(manifest, dict) else {},
            signature=str(value.get("signature", "")),
        )
    return Entry(
        position,
        "record",
        index=value.get("index"),
        table=_text(value.get("table")),
        record_id=_text(value.get("id")),
        record=value.get("record"),
        signature=str(value.get("signature", "")),
    )


def _csv_entry(position: int, row: list[str]) -> Entry:
    if len(row) != len(CSV_COLUMNS):
        return Entry(position, "unreadable", problem=f"{len(row)} columns instead of 5")
    index, table, record_id, text, signature = row
    try:
        value = json.loads(text)
    except ValueError:
        return Entry(
            position,
            "unreadable",
            table=table,
            record_id=record_id,
            problem="record column is not valid JSON",
        )
    if index == MANIFEST:
        return Entry(
            position,
            "manifest",
            manifest=value if isinstance(value, dict) else {},
            signature=signature,
        )
    try:
        number: Any = int(index)
    except ValueError:
        number = index
    return Entry(
        position,
        "record",
        index=number,
        table=table,
        record_id=record_id,
        record=value,
        signature=signature,
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
