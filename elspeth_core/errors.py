"""The one exception root of ELSPETH and its typed descendants.

Every error the engine raises on purpose derives from :class:`ElspethError`. Context travels as
attributes (``run_id``, ``row_id``, ``node_id``) so the recorder can store it and the CLI can render
it; retry policy is data (``transient``), never string matching. This module imports nothing of the
project and must stay that way.
"""

from __future__ import annotations

from typing import Any


class ElspethError(Exception):
    """Root of every error ELSPETH raises deliberately.

    Attributes:
        hint: what the operator should do next (rendered by the CLI after the reason).
        transient: True when retrying the same operation may succeed.
        context: extra key/value context (run_id, row_id, node_id, ...).
    """

    exit_code: int = 1
    transient: bool = False

    def __init__(self, message: str, *, hint: str | None = None, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.context = {k: v for k, v in context.items() if v is not None}

    def __str__(self) -> str:
        return self.message


class TerminalError(ElspethError):
    """Retrying cannot help (bad data, bad configuration, a plugin's deliberate refusal)."""


class TransientError(ElspethError):
    """Retrying may help (I/O hiccup, timeout, a busy service)."""

    transient = True


class ConfigError(TerminalError, ValueError):
    """A settings file, option or pipeline graph is invalid.

    Attributes (in ``context``): ``file``, ``key`` (dotted path), ``line`` (1-based) when known.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        location = ""
        if file:
            location = f"{file}"
            if line:
                location += f":{line}"
            location += ": "
        if key:
            location += f"{key}: "
        super().__init__(f"{location}{message}", hint=hint, file=file, key=key, line=line)
        self.reason = message
        self.file = file
        self.key = key
        self.line = line


class ExpressionError(ConfigError):
    """A gate or trigger expression is not allowed or does not parse (position in the message)."""


class CanonicalizationError(TerminalError, ValueError):
    """A value cannot be hashed canonically (NaN, Infinity, an unsupported type)."""


class PluginError(TerminalError):
    """A plugin failed terminally for one row or batch; the reason is recorded."""


class TransientPluginError(TransientError):
    """A plugin failed in a way that a retry may fix (recorded per attempt)."""


class SinkError(TerminalError):
    """A sink could not write or restore its output."""


class LandscapeError(ElspethError):
    """The audit database refused an operation or is in an unexpected state."""

    exit_code = 2


class LandscapeNotFound(LandscapeError):
    """No landscape at the URL: no SQLite file, or a database without the landscape's tables."""

    exit_code = 1


class SchemaVersionError(LandscapeError):
    """The landscape schema is older or newer than this version of ELSPETH expects."""

    exit_code = 1


class RunFailedError(ElspethError):
    """A run ended failed (some rows failed terminally, or the engine stopped)."""

    exit_code = 2


class LeaseLostError(ElspethError):
    """Another process took over this run's lease; this process must stop writing at once."""

    exit_code = 3


class ResumeRefused(ElspethError):
    """Resume is not possible; the message uses the runbook's phrase and says what to do."""

    exit_code = 3


class RunNotFound(ResumeRefused):
    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"Run not found: {run_id}",
            hint="Check the run ID with 'elspeth runs list' and the --database URL.",
            run_id=run_id,
        )


class RunAlreadyCompleted(ResumeRefused):
    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"Run already completed: {run_id}",
            hint="Nothing to resume. Start a new run with 'elspeth run -s SETTINGS --execute'.",
            run_id=run_id,
        )


class RunInProgress(ResumeRefused):
    def __init__(self, run_id: str, owner: str, expires: str) -> None:
        super().__init__(
            f"Run already in progress: {run_id} (lease held by {owner} until {expires})",
            hint="Wait for it to finish, or for its lease to expire if its process died, then retry.",
            run_id=run_id,
        )


class NoCheckpoint(ResumeRefused):
    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"No checkpoint available for run {run_id}",
            hint="This run cannot be resumed; start a new run with "
            "'elspeth run -s SETTINGS --execute' (or 'elspeth resume RUN_ID --force-new').",
            run_id=run_id,
        )


class ConfigurationMismatch(ResumeRefused):
    def __init__(self, run_id: str, differences: list[str]) -> None:
        shown = "; ".join(differences[:10]) + (" ..." if len(differences) > 10 else "")
        super().__init__(
            f"Configuration mismatch for run {run_id}: {shown}",
            hint="Resume without --settings to use the recorded configuration, or start a fresh "
            "run with --force-new.",
            run_id=run_id,
        )
        self.differences = differences


class SourceChanged(ResumeRefused):
    def __init__(self, run_id: str, detail: str) -> None:
        super().__init__(
            f"Source changed since run {run_id} read it: {detail}",
            hint="Restore the original input, or start a fresh run with --force-new.",
            run_id=run_id,
        )
