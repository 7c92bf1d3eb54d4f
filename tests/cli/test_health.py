"""``elspeth health`` through the real CLI: each check can fail on its own, and nothing is created.

The Prefect check is exercised against a real HTTP server on a local port (answering like
Prefect's ``GET /api/health``) and against a port nobody listens on. The landscape checks run on
both landscape backends (SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from elspeth_core.landscape import LandscapeDB
from elspeth_core.landscape.migrations import HEAD_REVISION
from tests.support.cli import run_cli, url_execute


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        ok = self.path == "/api/health"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"true" if ok else b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def prefect_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def landscape(landscape_url: str, tmp_path: Path) -> str:
    """This test's landscape (SQLite or PostgreSQL), empty at the head revision."""
    url = landscape_url
    LandscapeDB(url).close()  # an empty landscape at the head revision
    (tmp_path / "payloads").mkdir()
    return url


def _health(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    result = run_cli("health", "--json", *args, cwd=tmp_path, env=env)
    assert "Traceback" not in result.stderr
    return result.code, json.loads(result.stdout)


def test_healthy_installation(tmp_path: Path, landscape: str) -> None:
    code, report = _health(tmp_path, "-d", landscape, "--payloads", str(tmp_path / "payloads"))
    assert code == 0 and report["healthy"] is True
    assert report["version"]["elspeth"] == "0.1.0"
    db = report["database"]
    assert db["reachable"] is True and db["ok"] is True
    assert db["revision"] == db["head"] == HEAD_REVISION and db["runs"] == 0
    assert report["payload_store"] == {
        "path": str(tmp_path / "payloads"),
        "exists": True,
        "ok": True,
        "error": None,
    }
    assert report["prefect"]["configured"] is False and report["prefect"]["ok"] is None
    text = run_cli(
        "health", "-d", landscape, "--payloads", str(tmp_path / "payloads"), cwd=tmp_path
    )
    assert text.code == 0 and text.stdout.strip().endswith("healthy")


# SQLite-only: a missing .db file (and that no folder is created for it) is SQLite-specific.
def test_missing_landscape_is_unhealthy_and_not_created(tmp_path: Path) -> None:
    code, report = _health(
        tmp_path, "-d", f"sqlite:///{tmp_path / 'no' / 'audit.db'}", "--payloads", str(tmp_path)
    )
    assert code == 1 and report["healthy"] is False
    assert report["database"]["reachable"] is False
    assert "does not exist" in report["database"]["error"]
    assert not (tmp_path / "no").exists()


def test_old_schema_revision_is_unhealthy_with_the_command_to_run(
    tmp_path: Path, landscape: str
) -> None:
    url_execute(landscape, "UPDATE alembic_version SET version_num = '0000_older'")
    code, report = _health(tmp_path, "-d", landscape, "--payloads", str(tmp_path / "payloads"))
    assert code == 1
    db = report["database"]
    assert db["reachable"] is True and db["up_to_date"] is False and db["ok"] is False
    assert db["revision"] == "0000_older"
    assert "elspeth db upgrade" in db["error"]


def test_payload_store_that_cannot_be_written_is_unhealthy(tmp_path: Path, landscape: str) -> None:
    blocker = tmp_path / "payload-file"
    blocker.write_text("not a directory")
    code, report = _health(tmp_path, "-d", landscape, "--payloads", str(blocker))
    assert code == 1 and report["payload_store"]["ok"] is False
    assert "is not a directory" in report["payload_store"]["error"]
    # A store that does not exist yet, under a writable folder, is fine: it will be created.
    code, report = _health(tmp_path, "-d", landscape, "--payloads", str(tmp_path / "new" / "p"))
    assert code == 0 and report["payload_store"]["exists"] is False
    assert not (tmp_path / "new").exists()


def test_prefect_api_is_checked_when_configured(
    tmp_path: Path, landscape: str, prefect_api: str
) -> None:
    store = str(tmp_path / "payloads")
    code, report = _health(
        tmp_path, "-d", landscape, "--payloads", store, env={"PREFECT_API_URL": prefect_api}
    )
    assert code == 0, report
    assert report["prefect"] == {
        "configured": True,
        "url": f"{prefect_api}/health",
        "ok": True,
        "status": 200,
        "error": None,
    }
    down = f"http://127.0.0.1:{_free_port()}/api"
    code, report = _health(
        tmp_path, "-d", landscape, "--payloads", store, env={"PREFECT_API_URL": down}
    )
    assert code == 1 and report["healthy"] is False
    assert report["prefect"]["ok"] is False and "unreachable" in report["prefect"]["error"]
    wrong_path = prefect_api.removesuffix("/api")
    code, report = _health(
        tmp_path, "-d", landscape, "--payloads", store, env={"PREFECT_API_URL": wrong_path}
    )
    assert code == 1 and report["prefect"]["status"] == 404


def test_health_from_a_settings_file(tmp_path: Path, landscape: str) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        "datasource: {plugin: 'null'}\n"
        "sinks: {out: {plugin: csv, options: {path: out.csv}}}\n"
        "output_sink: out\n"
        f"landscape: {{url: '{landscape}'}}\n"
        f"payload_store: {{base_path: '{tmp_path / 'payloads'}'}}\n"
    )
    code, report = _health(tmp_path, "-s", str(settings))
    assert code == 0, report
    assert report["database"]["url"] == landscape
    assert report["payload_store"]["path"] == str(tmp_path / "payloads")
