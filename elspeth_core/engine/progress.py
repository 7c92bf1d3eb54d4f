"""The progress port: the engine reports rows processed; the CLI or a Prefect flow renders it."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def advance(self, rows: int, *, run_id: str) -> None: ...

    def note(self, message: str) -> None: ...


class NullProgress:
    """Reports nothing (the default)."""

    def advance(self, rows: int, *, run_id: str) -> None:
        return None

    def note(self, message: str) -> None:
        return None
