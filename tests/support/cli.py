"""Run the real ``elspeth`` CLI in a subprocess, and build pipelines for tests."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELSPETH_")}
    env.update({"DO_NOT_TRACK": "1", "ELSPETH_LEASE_TIMEOUT": "30", "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def elspeth_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "elspeth_core.cli.app", *args]


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> Result:
    proc = subprocess.run(
        elspeth_cmd(*args),
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def popen_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        elspeth_cmd(*args),
        cwd=cwd,
        env=cli_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def write_settings(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def gate_pipeline(workdir: Path, input_csv: Path, **overrides: object) -> dict:
    """A gate + three sinks (two CSV, one JSONL) pipeline, with quarantine to a fourth sink."""
    out = workdir / "out"
    data: dict = {
        "datasource": {
            "plugin": "csv",
            "options": {
                "path": str(input_csv),
                "schema": {"mode": "free", "fields": ["id: int", "amount: float", "status: str"]},
                "on_validation_failure": "quarantine",
            },
        },
        "row_plugins": [{"plugin": "field_mapper", "options": {"mapping": {"status": "state"}}}],
        "gates": [
            {
                "name": "flagged",
                "condition": "row['state'] == 'flagged'",
                "routes": {"true": "flagged", "false": "continue"},
            },
            {
                "name": "big",
                "condition": "row['amount'] >= 500",
                "routes": {"true": "high", "false": "continue"},
            },
        ],
        "sinks": {
            "normal": {"plugin": "csv", "options": {"path": str(out / "normal.csv")}},
            "high": {"plugin": "csv", "options": {"path": str(out / "high.csv")}},
            "flagged": {"plugin": "json", "options": {"path": str(out / "flagged.jsonl")}},
            "quarantine": {"plugin": "json", "options": {"path": str(out / "quarantine.jsonl")}},
        },
        "output_sink": "normal",
        "landscape": {"url": f"sqlite:///{workdir / 'audit.db'}"},
        "checkpoint": {"enabled": True, "frequency": "every_n", "checkpoint_interval": 100},
        "payload_store": {"base_path": str(workdir / "payloads")},
    }
    data.update(overrides)
    return data


def sink_files(workdir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((workdir / "out").glob("*")) if p.is_file()}


def query(db: Path | str, sql: str) -> list[tuple]:
    """Run SQL against a landscape: a SQLite file's path, or any landscape URL."""
    if isinstance(db, str):
        return url_query(db, sql)
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def run_ids(db: Path | str) -> list[str]:
    if isinstance(db, str):
        return url_run_ids(db)
    if not db.exists():
        return []
    try:
        return [r[0] for r in query(db, "SELECT run_id FROM runs ORDER BY started_at")]
    except sqlite3.OperationalError:
        return []


def assert_landscape_invariants(db: Path | str, run_id: str, source_rows: int) -> None:
    """SPEC §3 invariants after completion."""
    (status,) = query(db, f"SELECT status FROM runs WHERE run_id = '{run_id}'")[0]
    assert status == "completed"
    assert query(db, f"SELECT count(*) FROM rows WHERE run_id = '{run_id}'")[0][0] == source_rows
    bad = query(
        db,
        f"""SELECT t.token_id, count(o.outcome_id) FROM tokens t
            LEFT JOIN token_outcomes o ON o.token_id = t.token_id AND o.is_terminal
            WHERE t.run_id = '{run_id}' GROUP BY t.token_id HAVING count(o.outcome_id) != 1""",
    )
    assert bad == [], f"tokens without exactly one terminal outcome: {bad[:5]}"
    assert query(db, f"SELECT count(*) FROM checkpoints WHERE run_id = '{run_id}'")[0][0] == 0
    no_tokens = query(
        db,
        f"""SELECT count(*) FROM rows r WHERE r.run_id = '{run_id}'
            AND NOT EXISTS (SELECT 1 FROM tokens t WHERE t.row_id = r.row_id)""",
    )[0][0]
    assert no_tokens == 0


def url_query(url: str, sql: str, **params: object) -> list[tuple]:
    """Run SQL against any landscape URL (SQLite or PostgreSQL)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def url_execute(url: str, sql: str, **params: object) -> None:
    """Run one SQL statement against any landscape URL and commit it."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), params)
    finally:
        engine.dispose()


def url_run_ids(url: str) -> list[str]:
    """The landscape's runs, oldest first; none when it has no landscape yet."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return []
    from sqlalchemy import create_engine, inspect

    engine = create_engine(url)
    try:
        if not inspect(engine).has_table("runs"):
            return []
    finally:
        engine.dispose()
    return [r[0] for r in url_query(url, "SELECT run_id FROM runs ORDER BY started_at")]


def url_invariants(url: str, run_id: str, source_rows: int) -> None:
    """SPEC §3 invariants after completion, on any backend."""
    p = {"r": run_id}
    assert url_query(url, "SELECT status FROM runs WHERE run_id = :r", **p) == [("completed",)]
    assert url_query(url, "SELECT count(*) FROM rows WHERE run_id = :r", **p)[0][0] == source_rows
    bad = url_query(
        url,
        """SELECT t.token_id FROM tokens t
           LEFT JOIN token_outcomes o ON o.token_id = t.token_id AND o.is_terminal
           WHERE t.run_id = :r GROUP BY t.token_id HAVING count(o.outcome_id) <> 1""",
        **p,
    )
    assert bad == [], f"tokens without exactly one terminal outcome: {bad[:5]}"
    assert url_query(url, "SELECT count(*) FROM checkpoints WHERE run_id = :r", **p)[0][0] == 0
    orphans = url_query(
        url,
        """SELECT count(*) FROM rows r WHERE r.run_id = :r
           AND NOT EXISTS (SELECT 1 FROM tokens t WHERE t.row_id = r.row_id)""",
        **p,
    )
    assert orphans[0][0] == 0
