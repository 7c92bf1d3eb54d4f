"""Verifying an audit export: recompute the chain and name the first record that does not match.

Verification needs no database: an auditor holding the export file and the key can run it
anywhere. The manifest is read first (it names the algorithm and the key ID), then every record
is re-signed in order; the first mismatch is reported with its position, table and primary key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elspeth_core.export.exceptions import ExportError, ExportTampered
from elspeth_core.export.formats import FORMAT, Entry, read_entries
from elspeth_core.export.signing import SIGNED, UNSIGNED, SignatureChain, key_id, same, signing_key

_HINT = (
    "The export no longer matches what ELSPETH wrote. Keep this copy as evidence; compare the "
    "named record with the landscape (elspeth explain) or re-export the run."
)


@dataclass
class VerifyReport:
    """The result of a successful verification."""

    path: Path
    run_id: str
    records: int
    signed: bool
    algorithm: str
    key_id: str | None
    tables: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "verified": True,
            "run_id": self.run_id,
            "records": self.records,
            "signed": self.signed,
            "algorithm": self.algorithm,
            "key_id": self.key_id,
            "tables": self.tables,
        }


def verify_export(path: str | Path, *, environ: Mapping[str, str] | None = None) -> VerifyReport:
    """Check every record's signature, the order, the count and the manifest of an export.

    Raises:
        ExportTampered: the first record (or the manifest) that does not match, by index, table, id.
        SigningKeyMissing: a signed export, and no ``ELSPETH_SIGNING_KEY``.
        ExportError: not an export file, or signed with another key.
    """
    file = Path(path)
    if not file.is_file():
        raise ExportError(f"no export at {file}", hint="Give the path of an export file.")
    manifest_entry = _manifest(file)
    manifest = manifest_entry.manifest
    algorithm = manifest.get("algorithm")
    if manifest.get("format") != FORMAT or algorithm not in (SIGNED, UNSIGNED):
        raise ExportTampered(
            f"the manifest is not an {FORMAT} manifest (format {manifest.get('format')!r}, "
            f"algorithm {algorithm!r})",
            index=None,
            table="manifest",
            hint=_HINT,
        )
    key = signing_key(environ, purpose="verifying a signed export") if algorithm == SIGNED else None
    if key is not None and manifest.get("key_id") != key_id(key):
        raise ExportError(
            f"the export was signed with another key (key id {manifest.get('key_id')}, "
            f"ELSPETH_SIGNING_KEY has key id {key_id(key)})",
            hint="Set ELSPETH_SIGNING_KEY to the key that was in use when the run was exported.",
        )
    chain = SignatureChain(key)
    tables: Counter[str] = Counter()
    count = 0
    for entry in read_entries(file):
        if entry.kind == "manifest":
            break
        _check_record(entry, count, chain)
        tables[str(entry.table)] += 1
        count += 1
    _check_manifest(manifest_entry, manifest, chain, count, tables)
    return VerifyReport(
        path=file,
        run_id=str(manifest.get("run_id")),
        records=count,
        signed=key is not None,
        algorithm=str(algorithm),
        key_id=manifest.get("key_id"),
        tables={k: v for k, v in manifest.get("tables", {}).items()},
    )


def _manifest(file: Path) -> Entry:
    """The manifest, which must be the last entry (so nothing was appended or cut off)."""
    last: Entry | None = None
    records = 0
    for entry in read_entries(file):
        if last is not None and last.kind == "manifest":
            raise ExportTampered(
                f"entry {entry.position} follows the manifest: something was appended",
                index=entry.position,
                table=entry.table,
                record_id=entry.record_id,
                hint=_HINT,
            )
        if (
            entry.kind == "unreadable"
            and entry.position == 0
            and entry.problem
            and entry.problem.startswith("not an audit export")
        ):
            raise ExportError(f"{file} is {entry.problem}", hint="Give the path of an export file.")
        records += entry.kind != "manifest"
        last = entry
    if last is None or last.kind != "manifest":
        raise ExportTampered(
            f"the export has no manifest: it was cut off after {records} record(s)",
            index=records,
            hint=_HINT,
        )
    return last


def _check_record(entry: Entry, expected: int, chain: SignatureChain) -> None:
    where = f"record {expected} ({entry.table or '?'} {entry.record_id or '?'})"
    if entry.kind == "unreadable":
        raise ExportTampered(
            f"{where} is unreadable: {entry.problem}",
            index=expected,
            table=entry.table,
            record_id=entry.record_id,
            hint=_HINT,
        )
    if entry.index != expected:
        raise ExportTampered(
            f"{where} carries index {entry.index!r}: a record was removed, inserted or moved "
            "before it",
            index=expected,
            table=entry.table,
            record_id=entry.record_id,
            hint=_HINT,
        )
    if not isinstance(entry.record, dict) or entry.table is None or entry.record_id is None:
        raise ExportTampered(
            f"{where} is not a record",
            index=expected,
            table=entry.table,
            record_id=entry.record_id,
            hint=_HINT,
        )
    signature = chain.link(expected, entry.table, entry.record_id, entry.record)
    if not same(signature, entry.signature):
        raise ExportTampered(
            f"{where} does not match its signature: tampered",
            index=expected,
            table=entry.table,
            record_id=entry.record_id,
            hint=_HINT,
        )


def _check_manifest(
    entry: Entry, manifest: dict[str, Any], chain: SignatureChain, count: int, tables: Counter[str]
) -> None:
    if not same(chain.seal(manifest), entry.signature):
        raise ExportTampered(
            "the manifest does not match its signature: tampered",
            index=None,
            table="manifest",
            hint=_HINT,
        )
    if manifest.get("records") != count or manifest.get("chain_head") != chain.previous:
        raise ExportTampered(
            f"the manifest seals {manifest.get('records')} record(s), the file holds {count}: "
            f"records were removed or added at the end",
            index=count,
            hint=_HINT,
        )
    declared = {k: v for k, v in manifest.get("tables", {}).items() if v}
    if declared != {k: v for k, v in tables.items() if v}:
        raise ExportTampered(
            "the per-table counts differ from the manifest",
            index=None,
            table="manifest",
            hint=_HINT,
        )
