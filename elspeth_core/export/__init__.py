"""Audit export: a run's landscape records, chained and HMAC-signed, and their verification.

Key contracts: the export is a stream (flat memory for any run size); every record is signed in
a chain and the manifest seals the chain, so ``verify`` names the first record that was changed,
removed, added or reordered. No SQL here: records come from ``landscape.audit_records``.
Pitfall: the signing key is read from ``ELSPETH_SIGNING_KEY`` only, never from settings files (a
key in the settings would sit next to the exports it is meant to protect).
"""

from elspeth_core.export.exceptions import (
    ExportError,
    ExportTampered,
    RunExportFailed,
    SigningKeyMissing,
)
from elspeth_core.export.verify import VerifyReport, verify_export
from elspeth_core.export.writer import (
    check_export_ready,
    export_command_for,
    export_if_configured,
    export_run,
)

__all__ = [
    "ExportError",
    "ExportTampered",
    "RunExportFailed",
    "SigningKeyMissing",
    "VerifyReport",
    "check_export_ready",
    "export_command_for",
    "export_if_configured",
    "export_run",
    "verify_export",
]
