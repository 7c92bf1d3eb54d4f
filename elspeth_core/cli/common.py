"""Shared CLI plumbing: error rendering, exit codes, opening the landscape, JSON output."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from elspeth_core.errors import ElspethError

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_RUN_FAILED = 2
EXIT_RESUME_REFUSED = 3
DEFAULT_DATABASE = "sqlite:///runs/audit.db"

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

T = TypeVar("T")


def fail(message: str, hint: str | None, code: int) -> typer.Exit:
    err.print(f"[bold red]Error:[/] {escape(message)}", markup=True)
    if hint:
        err.print(f"[yellow]Hint:[/] {escape(hint)}", markup=True)
    return typer.Exit(code)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn project errors into a one-line reason + hint on stderr and the documented exit code."""
    try:
        yield
    except typer.Exit:
        raise
    except ElspethError as exc:
        raise fail(exc.message, exc.hint, exc.exit_code) from None
    except KeyboardInterrupt:
        raise fail(
            "interrupted", "Resume the run with 'elspeth resume RUN_ID --execute'.", 130
        ) from None
    except Exception as exc:  # noqa: BLE001 - never a bare traceback for operators
        if os.environ.get("ELSPETH_DEBUG"):
            raise
        if type(exc).__module__.startswith("sqlalchemy"):
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise fail(
                f"landscape database error: {type(exc).__name__}: {reason}",
                "Nothing after the last commit was recorded; when the database is back, run "
                "'elspeth resume RUN_ID --execute'.",
                EXIT_RUN_FAILED,
            ) from None
        raise fail(
            f"internal error: {type(exc).__name__}: {exc}",
            "Set ELSPETH_DEBUG=1 for a traceback and report it.",
            EXIT_RUN_FAILED,
        ) from None


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=_default) + "\n")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return str(value)


class _OneLineFormatter(logging.Formatter):
    """Log records as one line each: operators get reasons, not tracebacks (ELSPETH_DEBUG=1 does)."""

    def format(self, record: logging.LogRecord) -> str:
        if os.environ.get("ELSPETH_DEBUG"):
            return super().format(record)
        saved = record.exc_info, record.exc_text
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.msg} ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        record.exc_info, record.exc_text = None, None
        try:
            return super().format(record).splitlines()[0]
        finally:
            record.exc_info, record.exc_text = saved


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])


def guarded(func: Callable[..., T]) -> Callable[..., T]:
    return func
