"""``elspeth health``: version, landscape reachability and schema, payload store, Prefect API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from elspeth_core.cli.common import DEFAULT_DATABASE, EXIT_USAGE, cli_errors, emit_json, out
from elspeth_core.config import load_settings
from elspeth_core.health import check_health

DEFAULT_PAYLOADS = ".elspeth/payloads"  # the settings' payload_store.base_path default


def health_command(
    database: str | None = typer.Option(
        None, "--database", "-d", help="Landscape URL (default: the settings', else runs/audit.db)."
    ),
    settings: Path | None = typer.Option(
        None,
        "--settings",
        "-s",
        help="Take the landscape URL and payload store from a settings file.",
    ),
    payloads: Path | None = typer.Option(None, "--payloads", help="Payload store path."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Check the installation: exit 0 when healthy, 1 otherwise."""
    with cli_errors():
        url, store = database, payloads
        if settings is not None:
            loaded = load_settings(settings).settings
            url = url or loaded.landscape.url
            store = store or Path(loaded.payload_store.base_path)
        report = check_health(url or DEFAULT_DATABASE, store or Path(DEFAULT_PAYLOADS))
    if as_json:
        emit_json(report)
    else:
        _print(report)
    if not report["healthy"]:
        raise typer.Exit(EXIT_USAGE)


def _print(report: dict[str, Any]) -> None:
    version = report["version"]
    out.print(f"elspeth {version['elspeth']} (python {version['python']})")
    db = report["database"]
    detail = (
        f"revision {db['revision']} (head {db['head']}), {db['runs']} run(s), {db['latency_ms']} ms"
        if db["reachable"]
        else ""
    )
    _line("database", db["ok"], f"{db['url']} {detail}".strip(), db.get("error"))
    store = report["payload_store"]
    _line(
        "payloads",
        store["ok"],
        store["path"] + (f" ({store['note']})" if store.get("note") else ""),
        store.get("error"),
    )
    prefect = report["prefect"]
    if prefect["configured"]:
        _line("prefect", prefect["ok"], prefect["url"], prefect.get("error"))
    else:
        out.print("  [dim]-[/]  prefect   PREFECT_API_URL not set (not checked)", markup=True)
    out.print("healthy" if report["healthy"] else "[red]unhealthy[/]", markup=True)


def _line(name: str, ok: bool, detail: str, error: str | None) -> None:
    mark = "[green]ok[/]" if ok else "[red]FAIL[/]"
    out.print(
        f"  {mark}  {name:<9} {detail}" + (f": {error}" if error and not ok else ""), markup=True
    )
