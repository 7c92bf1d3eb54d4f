"""A rich progress display (rows and rows/s) for terminals; silent elsewhere."""

from __future__ import annotations

from typing import Any

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from elspeth_core.cli.common import err


class RichProgress:
    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task: Any = None
        self._rows = 0

    def __enter__(self) -> RichProgress:
        if self.enabled:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TextColumn("{task.completed:,.0f} rows"),
                TextColumn("{task.speed} rows/s" if False else "{task.fields[rate]}"),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("processing", total=None, rate="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, rows: int, *, run_id: str) -> None:
        self._rows += rows
        if self._progress is not None:
            task = self._progress.tasks[0]
            elapsed = task.elapsed or 0.0
            rate = f"{self._rows / elapsed:,.0f} rows/s" if elapsed > 0 else ""
            self._progress.update(self._task, advance=rows, description=run_id, rate=rate)

    def note(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message)
