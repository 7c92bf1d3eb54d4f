"""Errors of the audit export and its verification (all under ``ElspethError``)."""

from __future__ import annotations

from elspeth_core.errors import ElspethError


class ExportError(ElspethError):
    """An export could not be written or read (bad settings, missing key, unreadable file)."""

    exit_code = 1


class RunExportFailed(ExportError):
    """A run ended (final status recorded, outputs durable) but its run-end audit export failed.

    Nothing about the run is undone: the error says so and how to write the export again.

    Attributes:
        run_id: the run.
        status: the final status already recorded (``completed`` or ``failed``).
        result: what the run's caller would have got back (the engine's ``RunResult``).
    """

    exit_code = 2

    def __init__(
        self, message: str, *, run_id: str, status: str, hint: str, result: object = None
    ) -> None:
        super().__init__(message, hint=hint, run_id=run_id, status=status)
        self.run_id = run_id
        self.status = status
        self.result = result


class SigningKeyMissing(ExportError):
    """Signing or verifying a signed export needs ``ELSPETH_SIGNING_KEY``."""


class ExportTampered(ExportError):
    """A verified export does not match its signatures.

    Attributes:
        index: position of the first record that fails (``None`` for the manifest).
        table: that record's table, when it could be read.
        record_id: that record's primary key, when it could be read.
    """

    def __init__(
        self,
        message: str,
        *,
        index: int | None,
        table: str | None = None,
        record_id: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint, index=index, table=table, record_id=record_id)
        self.index = index
        self.table = table
        self.record_id = record_id
