"""The signature chain of an audit export: HMAC-SHA256 per record, chained, sealed by a manifest.

Each record is signed as ``HMAC(key, previous_signature + "\\n" + canonical_json(envelope))``
where the envelope is ``{"index", "table", "id", "record"}``, and the first record chains from
``GENESIS``. Changing, removing, inserting or reordering any record therefore breaks the
signature of that record (and of every later one); the manifest (counts, run ID, the last
signature) is signed on its own, so truncating the file or editing the manifest is caught too.
Without a key (``sign: false``) the same chain is built with plain SHA-256: it detects accidental
corruption, but anyone can recompute it, so it proves nothing about who wrote the file.
Canonical JSON is RFC 8785, the same as every hash of the landscape. No I/O here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from typing import Any

from elspeth_core.export.exceptions import SigningKeyMissing
from elspeth_core.hashing import canonical_json

KEY_ENV = "ELSPETH_SIGNING_KEY"
SIGNED = "hmac-sha256-chain-v1"
UNSIGNED = "sha256-chain-v1"
GENESIS = "0" * 64


def signing_key(environ: Mapping[str, str] | None = None, *, purpose: str) -> bytes:
    """The HMAC key from ``ELSPETH_SIGNING_KEY``.

    Raises:
        SigningKeyMissing: the variable is unset or empty.
    """
    env = os.environ if environ is None else environ
    value = env.get(KEY_ENV, "")
    if not value:
        raise SigningKeyMissing(
            f"{purpose} needs a signing key, and {KEY_ENV} is not set",
            hint=f"Export {KEY_ENV} with the audit signing key (keep it in your secret store), "
            "or export without signing (landscape.export.sign: false / no --sign).",
        )
    return value.encode("utf-8")


def key_id(key: bytes) -> str:
    """A short public identifier of a key (tells 'wrong key' from 'tampered' without leaking it)."""
    return hmac.new(key, b"elspeth-audit-export-key-id", hashlib.sha256).hexdigest()[:16]


class SignatureChain:
    """Signs (or re-computes) records in order; ``key=None`` builds the unsigned SHA-256 chain."""

    def __init__(self, key: bytes | None) -> None:
        self.key = key
        self.previous = GENESIS

    @property
    def algorithm(self) -> str:
        return SIGNED if self.key is not None else UNSIGNED

    def link(self, index: int, table: str, record_id: str, record: dict[str, Any]) -> str:
        """The signature of the next record; advances the chain."""
        envelope = canonical_envelope(index, table, record_id, record)
        signature = self._digest(self.previous.encode("ascii") + b"\n" + envelope)
        self.previous = signature
        return signature

    def seal(self, manifest: dict[str, Any]) -> str:
        """The manifest's own signature (it names the chain head, so it seals the whole chain)."""
        return self._digest(b"manifest\n" + canonical_json(manifest))

    def _digest(self, data: bytes) -> str:
        if self.key is None:
            return hashlib.sha256(data).hexdigest()
        return hmac.new(self.key, data, hashlib.sha256).hexdigest()


def canonical_envelope(index: int, table: str, record_id: str, record: dict[str, Any]) -> bytes:
    """RFC 8785 of ``{"index", "table", "id", "record"}``, assembled from its parts.

    The same bytes as ``canonical_json`` of the whole envelope (a test checks it), but the flat
    record takes ``canonical_json``'s fast path instead of the generic serializer: exports of
    millions of records spend their time here. Keys in RFC 8785 order: id, index, record, table.
    """
    return b"".join(
        (
            b'{"id":',
            _canonical_str(record_id),
            b',"index":',
            str(index).encode("ascii"),  # a non-negative int below 2**53 is its own canonical form
            b',"record":',
            canonical_json(record),
            b',"table":',
            _canonical_str(table),
            b"}",
        )
    )


def _canonical_str(text: str) -> bytes:
    # Python's JSON string escaping (ensure_ascii=False) is ECMAScript's, which RFC 8785 uses:
    # the same equivalence hashing.canonical_json's fast path relies on.
    return json.dumps(text, ensure_ascii=False).encode("utf-8")


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two signatures."""
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))
