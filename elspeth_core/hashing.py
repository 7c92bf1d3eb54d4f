"""Canonical JSON (RFC 8785) and the stable SHA-256 hashes the landscape stores.

Every hash in the audit trail is ``sha256(rfc8785(value))`` so that an auditor can recompute it with
any RFC 8785 implementation. NaN and infinities have no canonical form and are rejected, never hashed
silently. This module must not import anything else of the project but ``errors``.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import rfc8785

from elspeth_core.errors import CanonicalizationError

CANONICAL_VERSION = "sha256-rfc8785-v1"

_SAFE_INT = 2**53 - 1
_json_fast = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode


def _fast_path_ok(value: Any) -> bool:
    """True when Python's json output is already RFC 8785 canonical for this value.

    That holds for flat dicts of str/bool/None/small-int/mid-range-float values whose keys and strings stay in the
    Basic Multilingual Plane below the surrogates (sort order by code point equals UTF-16 order
    there) and contain no U+2028/U+2029 edge cases (both encoders write those literally).
    """
    if type(value) is not dict:
        return False
    for key, item in value.items():
        if type(key) is not str or not _bmp(key):
            return False
        kind = type(item)
        if kind is str:
            if not _bmp(item):
                return False
        elif kind is int:
            if not -_SAFE_INT <= item <= _SAFE_INT:
                return False
        elif kind is float:
            # Python's repr equals ECMAScript's Number-to-string for non-integral values in this
            # range (no exponent in either, same shortest round-trip digits).
            if item.is_integer() or not 1e-4 <= abs(item) < 1e15:
                return False
        elif item is not None and kind is not bool:
            return False
    return True


def _bmp(text: str) -> bool:
    return text.isascii() or max(text) < "\ud800"


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` as RFC 8785 canonical JSON.

    Raises:
        CanonicalizationError: for NaN, +/-Infinity or a type JSON cannot represent.
    """
    if _fast_path_ok(value):
        return _json_fast(value).encode("utf-8")
    try:
        return rfc8785.dumps(value)
    except (rfc8785.FloatDomainError, ValueError) as exc:
        raise CanonicalizationError(
            f"value cannot be hashed canonically: {_describe_bad_float(value) or exc}",
            hint="NaN and Infinity have no JSON form; clean or quarantine the row upstream.",
        ) from exc
    except (rfc8785.CanonicalizationError, TypeError) as exc:
        raise CanonicalizationError(f"value cannot be hashed canonically: {exc}") from exc


def _describe_bad_float(value: Any, path: str = "$") -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} at {path}"
    if isinstance(value, dict):
        for key, item in value.items():
            found = _describe_bad_float(item, f"{path}.{key}")
            if found:
                return found
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _describe_bad_float(item, f"{path}[{index}]")
            if found:
                return found
    return None


def stable_hash(value: Any) -> str:
    """SHA-256 hex digest of the canonical JSON of ``value``."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def hash_bytes(data: bytes) -> str:
    """SHA-256 hex digest of raw bytes (sink artifacts, payload packs)."""
    return hashlib.sha256(data).hexdigest()
