"""Pipelines and inputs for feature and crash tests that run the real ``elspeth`` CLI.

Settings are plain dicts in the ELSPETH 0.1 format, written to YAML by ``write_settings``. Every
path is absolute inside the test's work directory, so a test never touches the repository.
"""

from __future__ import annotations

import csv
import json
import random
import sqlite3
from pathlib import Path
from typing import Any

from tests.support.cli import Result, query, run_cli, run_ids, write_settings

STATES = ["ok", "ok", "ok", "pending", "flagged"]
WORDS = ["alpha", "beta", "gamma", "delta", "secret", "omega", "urgent", "plain"]


def make_csv(path: Path, rows: int, *, seed: int = 5) -> Path:
    """``id, amount, status, copies, note`` rows (copies 0..3; a few notes hold keywords)."""
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["id", "amount", "status", "copies", "note"])
        for i in range(rows):
            note = " ".join(rng.choice(WORDS) for _ in range(3))
            writer.writerow(
                [
                    i,
                    f"{rng.uniform(0, 1000):.2f}",
                    rng.choice(STATES),
                    rng.randint(0, 3),
                    f"row {i} {note} é",
                ]
            )
    return path


def make_jsonl(path: Path, rows: int, *, seed: int = 9) -> Path:
    """``{"id", "amount", "status", "items": [...]}`` rows with 0..4 items each (JSON Lines)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(rows):
            items = [
                {"sku": f"s{rng.randint(1, 50)}", "qty": rng.randint(1, 9)}
                for _ in range(rng.randint(0, 4))
            ]
            record = {
                "id": i,
                "amount": round(rng.uniform(0, 1000), 2),
                "status": rng.choice(STATES),
                "items": items,
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


TYPED_FIELDS = ["id: int", "amount: float", "status: str", "copies: int", "note: str"]


def pipeline(
    work: Path,
    source: Path,
    *,
    fields: list[str] | None = None,
    row_plugins: list[dict] | None = None,
    aggregations: list[dict] | None = None,
    gates: list[dict] | None = None,
    coalesce: list[dict] | None = None,
    sinks: dict[str, dict] | None = None,
    output_sink: str = "out",
    frequency: str = "every_n",
    interval: int = 100,
    retry: dict | None = None,
    landscape: str | None = None,
) -> dict[str, Any]:
    """A pipeline over ``source`` (CSV or JSON by extension) with the given steps.

    ``landscape``: the landscape URL (default: the SQLite file ``work/audit.db``).

    ``fields``: the source schema's typed fields (default: typed CSV columns; ``[]`` or a JSON
    source: a dynamic schema, values as read).
    """
    out = work / "out"
    plugin = "json" if source.suffix in (".json", ".jsonl") else "csv"
    if fields is None:
        fields = TYPED_FIELDS if plugin == "csv" else []
    schema: dict[str, Any] = {"mode": "free", "fields": fields} if fields else {"fields": "dynamic"}
    data: dict[str, Any] = {
        "datasource": {"plugin": plugin, "options": {"path": str(source), "schema": schema}},
        "row_plugins": row_plugins or [],
        "aggregations": aggregations or [],
        "gates": gates or [],
        "coalesce": coalesce or [],
        "sinks": sinks or {"out": {"plugin": "csv", "options": {"path": str(out / "out.csv")}}},
        "output_sink": output_sink,
        "landscape": {"url": landscape or f"sqlite:///{work / 'audit.db'}"},
        "checkpoint": {"enabled": True, "frequency": frequency, "checkpoint_interval": interval},
        "payload_store": {"base_path": str(work / "payloads")},
    }
    if retry is not None:
        data["retry"] = retry
    return data


def csv_sink(work: Path, name: str) -> dict:
    return {"plugin": "csv", "options": {"path": str(work / "out" / f"{name}.csv")}}


def jsonl_sink(work: Path, name: str) -> dict:
    return {"plugin": "json", "options": {"path": str(work / "out" / f"{name}.jsonl")}}


def database_sink(
    work: Path, table: str, *, if_exists: str = "replace", url: str | None = None
) -> dict:
    """A ``database`` sink into ``url`` (default: the SQLite file ``out/target.db``)."""
    return {
        "plugin": "database",
        "options": {
            "url": url or f"sqlite:///{work / 'out' / 'target.db'}",
            "table": table,
            "if_exists": if_exists,
        },
    }


def run_pipeline(work: Path, data: dict, *, env: dict[str, str] | None = None) -> Result:
    settings = write_settings(work / "settings.yaml", data)
    return run_cli("run", "-s", str(settings), "-x", cwd=work, env=env)


def resume(
    work: Path, run_id: str, *, env: dict[str, str] | None = None, landscape: str | None = None
) -> Result:
    database = landscape or f"sqlite:///{work / 'audit.db'}"
    return run_cli("resume", run_id, "-d", database, "-x", cwd=work, env=env)


def only_run(where: Path | str) -> str:
    """The one run in a work dir's ``audit.db``, or in the landscape at a URL."""
    (run_id,) = run_ids(where if isinstance(where, str) else where / "audit.db")
    return run_id


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def table_rows(db: Path, table: str) -> list[tuple]:
    """A target table's rows without the sink's hidden columns, sorted."""
    with sqlite3.connect(db) as conn:
        cursor = conn.execute(f'SELECT * FROM "{table}"')
        names = [d[0] for d in cursor.description]
        keep = [i for i, n in enumerate(names) if not n.startswith("_elspeth_")]
        rows = [tuple(row[i] for i in keep) for row in cursor.fetchall()]
    return sorted(rows, key=repr)


def url_table_rows(url: str, table: str) -> list[tuple]:
    """``table_rows`` for a target database given by URL (SQLite or PostgreSQL)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            result = conn.execute(text(f'SELECT * FROM "{table}"'))
            keep = [i for i, n in enumerate(result.keys()) if not n.startswith("_elspeth_")]
            rows = [tuple(row[i] for i in keep) for row in result]
    finally:
        engine.dispose()
    return sorted(rows, key=repr)


def outputs(work: Path) -> dict[str, Any]:
    """Every output of a work dir: file bytes, and sorted visible rows of target-database tables."""
    found: dict[str, Any] = {}
    for path in sorted((work / "out").glob("*")):
        if path.suffix == ".db":
            with sqlite3.connect(path) as conn:
                tables = [
                    r[0]
                    for r in conn.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table' "
                        "AND name NOT LIKE '\\_elspeth%' ESCAPE '\\'"
                    )
                ]
            for table in tables:
                found[f"{path.name}:{table}"] = table_rows(path, table)
        elif path.is_file():
            found[path.name] = path.read_bytes()
    return found


def outcome_counts(db: Path | str, run_id: str) -> dict[str, int]:
    return dict(
        query(
            db,
            f"""SELECT outcome, count(*) FROM token_outcomes
                              WHERE run_id = '{run_id}' AND is_terminal GROUP BY outcome""",
        )
    )


def sink_outcomes(db: Path | str, run_id: str) -> dict[str, int]:
    return dict(
        query(
            db,
            f"""SELECT sink_name, count(*) FROM token_outcomes
                              WHERE run_id = '{run_id}' AND is_terminal
                              AND sink_name IS NOT NULL GROUP BY sink_name""",
        )
    )


def assert_every_token_terminal_once(db: Path | str, run_id: str) -> None:
    bad = query(
        db,
        f"""SELECT t.token_id, count(o.outcome_id) FROM tokens t
            LEFT JOIN token_outcomes o ON o.token_id = t.token_id AND o.is_terminal
            WHERE t.run_id = '{run_id}' GROUP BY t.token_id HAVING count(o.outcome_id) != 1""",
    )
    assert bad == [], f"tokens without exactly one terminal outcome: {bad[:5]}"


def assert_sinks_match_outcomes(db: Path | str, run_id: str, files: dict[str, int]) -> None:
    """Each sink's ``completed``/``routed`` outcomes count the rows its output holds."""
    recorded = sink_outcomes(db, run_id)
    for sink, rows in files.items():
        assert recorded.get(sink, 0) == rows, (sink, recorded.get(sink, 0), rows)


def plugin_site(tmp: Path, module: str, source: str, entry_points: dict[str, str]) -> Path:
    """A directory that, on PYTHONPATH, installs ``module`` with ``elspeth.plugins`` entry points.

    importlib.metadata finds ``*.dist-info`` folders on ``sys.path``, so the real CLI in a
    subprocess loads these plugins exactly as it loads an installed third-party package.
    """
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(source, encoding="utf-8")
    dist = site / f"{module}-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {module}:{target}" for name, target in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[elspeth.plugins]\n{lines}\n")
    return site


def python_path(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(site)}
