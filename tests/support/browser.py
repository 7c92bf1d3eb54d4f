"""Headless Chromium for tests that check what the Prefect UI shows.

`render_dom` returns the DOM after the single-page app has run; `visible_text` turns it
into the whitespace-normalised text a person would read, which is what tests assert on.
Each call uses a fresh profile directory and its own process group, killed on timeout,
so no browser outlives the call. Needs the `chromium` Debian package (or Chrome on PATH).

The Prefect 3.8.8 server serves two UIs: the React UI under `/v2/` (the default; `/`
redirects there) and the legacy Vue UI at `/`. Useful React pages:
`/v2/runs/flow-run/<id>` (name, state, logs), `...?tab=Artifacts` (artifact keys and
descriptions), `/v2/artifacts/artifact/<artifact-id>` (the rendered markdown/table/progress).
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

__all__ = ["BrowserError", "chromium_path", "render_dom", "screenshot", "visible_text"]

# The SPA needs a few seconds of virtual time to fetch from the API and render; 15 s
# of virtual time costs about 5 s of wall time on the dev VM.
DEFAULT_BUDGET_MS = 15_000

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


class BrowserError(RuntimeError):
    """Chromium is missing, failed, or timed out."""


def chromium_path() -> str | None:
    """The Chromium (or Chrome) executable on PATH, if any."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def _run(args: list[str], timeout: float) -> bytes:
    binary = chromium_path()
    if binary is None:
        raise BrowserError("no chromium on PATH; apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [binary, *_FLAGS, f"--user-data-dir={profile}", *args]
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            stdout, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise BrowserError(f"chromium timed out after {timeout}s: {command}") from exc
        finally:
            # Kill helpers (zygote, renderer) that may outlive the main process.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if process.returncode != 0:
        raise BrowserError(f"chromium exited {process.returncode}: {command}")
    return stdout


def render_dom(url: str, *, budget_ms: int = DEFAULT_BUDGET_MS, timeout: float = 90.0) -> str:
    """The serialised DOM of `url` after `budget_ms` of virtual time."""
    dom = _run(["--dump-dom", f"--virtual-time-budget={budget_ms}", url], timeout)
    return dom.decode("utf-8", errors="replace")


def screenshot(
    url: str,
    path: Path | str,
    *,
    width: int = 1400,
    height: int = 1000,
    budget_ms: int = DEFAULT_BUDGET_MS,
    timeout: float = 90.0,
) -> Path:
    """Save a PNG of `url` to `path` and return the path."""
    target = Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    _run(
        [
            f"--screenshot={target}",
            f"--window-size={width},{height}",
            f"--virtual-time-budget={budget_ms}",
            url,
        ],
        timeout,
    )
    if not target.exists():
        raise BrowserError(f"chromium wrote no screenshot for {url}")
    return target


def visible_text(dom: str) -> str:
    """Text of a DOM without scripts, styles and tags, whitespace collapsed."""
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    text = re.sub(r"<[^>]+>", " ", text)
    return re.sub(r"\s+", " ", html.unescape(text)).strip()
