"""``elspeth health``: is this installation able to run and audit pipelines right now?

Checks, each reported with its reason: the landscape database is reachable and at the schema
revision this code needs (Alembic head), the payload store path is writable (or creatable), and,
when ``PREFECT_API_URL`` is set, the Prefect API answers ``GET {url}/health``. Nothing is created
or migrated: a health check must not change what it checks. Prefect is reached over plain HTTP
(urllib); the core never imports Prefect.
"""

from __future__ import annotations

import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from elspeth_core.landscape.access import probe

PREFECT_TIMEOUT_SECONDS = 3.0


def check_health(
    database_url: str,
    payloads_path: str | Path,
    *,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run every check; ``healthy`` is True only when all of them pass."""
    env = os.environ if environ is None else environ
    database = probe(database_url)
    database["ok"] = bool(database["reachable"] and database["up_to_date"])
    if database["reachable"] and not database["up_to_date"]:
        database["error"] = (
            f"schema at revision {database['revision']}, this version needs {database['head']}: "
            f"run 'elspeth db upgrade --database {database['url']}'"
        )
    checks = {
        "database": database,
        "payload_store": check_payload_store(Path(payloads_path)),
        "prefect": check_prefect(env.get("PREFECT_API_URL")),
    }
    healthy = all(check["ok"] for check in checks.values() if check.get("ok") is not None)
    return {"healthy": healthy, "version": _versions(), **checks}


def check_payload_store(path: Path) -> dict[str, Any]:
    """Writable when a file can be created in it, or (not there yet) in its nearest ancestor."""
    report: dict[str, Any] = {
        "path": str(path),
        "exists": path.is_dir(),
        "ok": False,
        "error": None,
    }
    if path.exists() and not path.is_dir():
        report["error"] = f"{path} exists and is not a directory"
        return report
    if path.is_dir():
        try:
            with tempfile.NamedTemporaryFile(dir=path, prefix=".elspeth-health-"):
                pass
        except OSError as exc:
            report["error"] = f"cannot write in {path}: {exc.strerror or exc}"
            return report
        report["ok"] = True
        return report
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if ancestor.is_dir() and os.access(ancestor, os.W_OK | os.X_OK):
        report["ok"] = True
        report["note"] = f"does not exist yet; will be created under {ancestor}"
    else:
        report["error"] = f"does not exist and {ancestor} is not writable"
    return report


def check_prefect(api_url: str | None) -> dict[str, Any]:
    """``GET {PREFECT_API_URL}/health``; ``ok`` is None (not checked) when no URL is set."""
    if not api_url:
        return {"configured": False, "ok": None, "url": None, "error": None}
    url = api_url.rstrip("/") + "/health"
    report: dict[str, Any] = {
        "configured": True,
        "url": url,
        "ok": False,
        "status": None,
        "error": None,
    }
    try:
        with urllib.request.urlopen(url, timeout=PREFECT_TIMEOUT_SECONDS) as response:  # noqa: S310
            report["status"] = response.status
            report["ok"] = 200 <= response.status < 300
    except urllib.error.HTTPError as exc:
        report["status"] = exc.code
        report["error"] = f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        report["error"] = f"unreachable: {reason}"
    return report


def _versions() -> dict[str, str]:
    try:
        version = metadata.version("elspeth-prefect")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"elspeth": version, "python": sys.version.split()[0]}
