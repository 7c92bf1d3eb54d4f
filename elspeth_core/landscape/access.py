"""Opening a landscape that must already exist, and probing one without opening it.

Operator commands (``explain``, ``runs``, ``purge``, ``export``, ``health``) read an existing
audit trail: a mistyped ``--database`` must say "no landscape here", not create an empty SQLite
file (and its parent folders) and then report an empty database. ``probe`` answers ``elspeth
health`` without any schema check that could refuse to connect, and without creating anything.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from elspeth_core.errors import LandscapeNotFound
from elspeth_core.landscape import migrations
from elspeth_core.landscape.database import LandscapeDB


class LandscapeMissing(LandscapeNotFound):
    """No landscape database at the URL given (nothing was created)."""


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL; None for other backends and in-memory databases."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def safe_url(url: str) -> str:
    """The URL with any password hidden (for messages)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def open_existing(url: str) -> LandscapeDB:
    """Open a landscape that must exist; never creates a file, a folder or a schema.

    Raises:
        LandscapeMissing: a SQLite URL whose file does not exist.
        LandscapeNotFound: a database without the landscape's tables (e.g. PostgreSQL); exit 1
            like a missing SQLite file, never 2 ("run failed").
        LandscapeError / SchemaVersionError: as ``LandscapeDB`` (unreachable, old schema).
    """
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise LandscapeMissing(
            f"no landscape found at {safe_url(url)} ({path} does not exist)",
            hint="Pass the landscape URL with --database (-d), e.g. -d sqlite:///runs/audit.db, "
            "or run from the directory the pipeline ran in.",
        )
    return LandscapeDB(url, create=False)


def probe(url: str, *, timeout_seconds: float = 5.0) -> dict[str, Any]:
    """Reachability and schema revision of a landscape, without creating or migrating anything.

    Returns:
        ``{"url", "reachable", "revision", "head", "up_to_date", "runs", "latency_ms", "error"}``.
    """
    report: dict[str, Any] = {
        "url": safe_url(url),
        "reachable": False,
        "revision": None,
        "head": migrations.HEAD_REVISION,
        "up_to_date": False,
        "runs": None,
        "latency_ms": None,
        "error": None,
    }
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        report["error"] = f"{path} does not exist"
        return report
    try:
        kwargs: dict[str, Any] = {}
        backend = make_url(url).get_backend_name()
        if backend == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": max(1, int(timeout_seconds))}
        elif backend == "sqlite":
            kwargs["connect_args"] = {"timeout": timeout_seconds}
        engine = create_engine(url, **kwargs)
    except (ArgumentError, SQLAlchemyError, ImportError) as exc:
        report["error"] = f"not a usable database URL: {exc}"
        return report
    started = time.perf_counter()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            report["reachable"] = True
            report["revision"] = migrations.current_revision(conn)
            if inspect(conn).has_table("runs"):
                report["runs"] = conn.execute(text("SELECT count(*) FROM runs")).scalar_one()
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        report["error"] = f"{type(exc).__name__}: {reason}"
    finally:
        report["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
        engine.dispose()
    report["up_to_date"] = report["revision"] == migrations.HEAD_REVISION
    return report
