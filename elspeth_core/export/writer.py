"""Writing a run's audit export (``landscape.export`` at run end, or ``elspeth export``).

The export is written to ``<path>.partial``, fsynced, then renamed over ``<path>``: a reader never
sees half an export under the final name, and a crash leaves at most a ``.partial`` file.
"""

from __future__ import annotations

import os
import shlex
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from elspeth_core.config.models import ElspethSettings
from elspeth_core.errors import RunNotFound
from elspeth_core.export.exceptions import ExportError
from elspeth_core.export.formats import FORMAT, FORMATS, ExportWriter
from elspeth_core.export.signing import SignatureChain, key_id, signing_key
from elspeth_core.files import fsync_directory
from elspeth_core.hashing import CANONICAL_VERSION
from elspeth_core.landscape import LandscapeDB, LandscapeQueries
from elspeth_core.landscape.access import safe_url
from elspeth_core.landscape.audit_records import AUDIT_TABLES, iter_audit_records


def export_run(
    db: LandscapeDB,
    run_id: str,
    sink_options: Mapping[str, Any],
    format: str = "json",  # noqa: A002 - the settings key is called format
    sign: bool = False,
    *,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """Write every audit record of a run, chained and (with ``sign``) HMAC-signed, plus a manifest.

    Args:
        db: the landscape.
        run_id: the run to export.
        sink_options: the export sink's options; ``path`` is the file to write.
        format: ``json`` (JSON Lines) or ``csv``.
        sign: HMAC-SHA256 with the key in ``ELSPETH_SIGNING_KEY``.
        environ: where to read the key (``os.environ`` by default).

    Returns:
        The path written.

    Raises:
        SigningKeyMissing: ``sign`` without ``ELSPETH_SIGNING_KEY``.
        ExportError: no ``path`` option, or an unknown format.
        RunNotFound: no such run.
    """
    return write_export(db, run_id, sink_options, format, sign, environ=environ)[0]


def write_export(
    db: LandscapeDB,
    run_id: str,
    sink_options: Mapping[str, Any],
    format: str = "json",  # noqa: A002 - the settings key is called format
    sign: bool = False,
    *,
    environ: Mapping[str, str] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """``export_run``, also returning the manifest written (record counts, algorithm, key ID)."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r} (use json or csv)")
    raw_path = sink_options.get("path")
    if not raw_path:
        raise ExportError(
            "the export sink has no 'path' option",
            hint="Point landscape.export.sink at a csv or json sink with a path, or pass --output.",
        )
    key = signing_key(environ, purpose="a signed audit export") if sign else None
    if LandscapeQueries(db).get_run(run_id) is None:
        raise RunNotFound(run_id)
    path = Path(str(raw_path))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    chain = SignatureChain(key)
    try:
        with open(partial, "w", encoding="utf-8", newline="") as handle:
            manifest = _write(ExportWriter(handle, format), chain, db, run_id)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    fsync_directory(path.parent)
    return path, manifest


def _write(
    writer: ExportWriter, chain: SignatureChain, db: LandscapeDB, run_id: str
) -> dict[str, Any]:
    tables: Counter[str] = Counter()
    for index, (table, record_id, record) in enumerate(iter_audit_records(db, run_id)):
        writer.record(index, table, record_id, record, chain.link(index, table, record_id, record))
        tables[table] += 1
    manifest = {
        "format": FORMAT,
        "run_id": run_id,
        "exported_at": datetime.now(UTC).isoformat(),
        "records": sum(tables.values()),
        "tables": {name: tables.get(name, 0) for name in AUDIT_TABLES},
        "algorithm": chain.algorithm,
        "key_id": key_id(chain.key) if chain.key is not None else None,
        "canonical_version": CANONICAL_VERSION,
        "chain_head": chain.previous,
    }
    writer.manifest(manifest, chain.seal(manifest))
    return manifest


def export_if_configured(db: LandscapeDB, run_id: str, settings: ElspethSettings) -> Path | None:
    """The run-end export of ``landscape.export``, when enabled; None otherwise.

    The file is the ``path`` option of the sink named by ``landscape.export.sink``.
    """
    export = settings.landscape.export
    if not export.enabled:
        return None
    if export.sink is None or export.sink not in settings.sinks:
        raise ExportError(
            f"landscape.export.sink {export.sink!r} is not a sink",
            hint="Name one of the settings' sinks (a csv or json sink with a path).",
        )
    sink = settings.sinks[export.sink]
    return export_run(db, run_id, sink.options, export.format, export.sign)


def check_export_ready(
    settings: ElspethSettings, *, environ: Mapping[str, str] | None = None
) -> None:
    """Fail before a run starts if its run-end export could not be written.

    Called before anything of a run is recorded (and by ``elspeth validate``), so a run that could
    not be exported at its end is refused instead of being left without its export.

    Raises:
        SigningKeyMissing: ``landscape.export.sign`` without ``ELSPETH_SIGNING_KEY``.
        ExportError: the export sink is missing or has no ``path`` option.
    """
    export = settings.landscape.export
    if not export.enabled:
        return
    sink = settings.sinks.get(export.sink or "")
    if sink is None or not sink.options.get("path"):
        raise ExportError(
            f"the audit export sink {export.sink!r} is not a sink with a 'path' option",
            hint="Name one of the settings' sinks (a csv or json sink with a path).",
        )
    if export.sign:
        signing_key(environ, purpose="a signed run-end audit export")


def export_command_for(run_id: str, settings: ElspethSettings, database_url: str) -> str:
    """The ``elspeth export`` command that writes a run's ``landscape.export`` file again.

    The database URL is shown with its password masked: the hint ends up in logs.
    """
    export = settings.landscape.export
    sink = settings.sinks.get(export.sink or "")
    path = (sink.options.get("path") if sink is not None else None) or "FILE"
    parts = ["elspeth export", shlex.quote(run_id), "--output", shlex.quote(str(path))]
    if export.format != "json":
        parts += ["--format", export.format]
    if export.sign:
        parts.append("--sign")
    parts += ["--database", shlex.quote(safe_url(database_url))]
    return " ".join(parts)
