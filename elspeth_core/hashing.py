"""Canonical JSON (RFC 8785) and the stable SHA-256 hashes the landscape stores.

Every hash in the audit trail is ``sha256(rfc8785(value))`` so that an auditor can recompute it with
any RFC 8785 implementation. NaN and infinities have no canonical form and are rejected, never hashed
silently. This module must not import anything else of the project but ``errors``.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

import orjson
import rfc8785

from elspeth_core.errors import CanonicalizationError

CANONICAL_VERSION = "sha256-rfc8785-v1"

_SAFE_INT = 2**53 - 1
_MAX_FAST_DEPTH = 8
_STR = frozenset({str})
_PLAIN = frozenset({str, bool, type(None)})
_AT_OR_ABOVE_SURROGATES = re.compile("[\ud800-\U0010ffff]")


def _fast_path_ok(value: Any, depth: int = 0) -> bool:
    """True when orjson's output (sorted keys) is RFC 8785 canonical for ``value``, strings aside.

    That holds for dicts (str keys) and lists, nested up to ``_MAX_FAST_DEPTH``, of str, bool,
    None, integers within +/-(2**53 - 1) and non-integral floats with 1e-4 <= |x| < 1e15: orjson's
    shortest round-trip form of such a float equals ECMAScript's Number-to-string (no exponent in
    either, same digits). Strings (keys included) are checked on the encoded text by the caller:
    orjson sorts keys by code point, which equals UTF-16 order, and escapes exactly the characters
    RFC 8785 escapes, the same way, as long as no character is at or above U+D800 (orjson refuses
    lone surrogates outright).
    """
    kind = type(value)
    if kind is dict:
        if not set(map(type, value)) <= _STR:
            return False
        items: Any = value.values()
    elif kind is list:
        items = value
    else:
        return False
    if set(map(type, items)) <= _PLAIN:  # a source's raw row: strings only, checked in C
        return True
    for item in items:
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if not -_SAFE_INT <= item <= _SAFE_INT:
                return False
        elif kind is float:
            if item.is_integer() or not 1e-4 <= abs(item) < 1e15:
                return False
        elif kind is dict or kind is list:
            if depth >= _MAX_FAST_DEPTH or not _fast_path_ok(item, depth + 1):
                return False
        else:
            return False
    return True


def _below_surrogates(text: str) -> bool:
    """No character at or above U+D800 (cheapest tests first: isascii() is O(1) in CPython)."""
    if text.isascii():
        return True
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return _AT_OR_ABOVE_SURROGATES.search(text) is None
    return True


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` as RFC 8785 canonical JSON.

    Raises:
        CanonicalizationError: for NaN, +/-Infinity or a type JSON cannot represent.
    """
    data = plain_json(value, sort_keys=True)
    if data is not None and (data.isascii() or _below_surrogates(data.decode("utf-8"))):
        return data
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


def plain_json(value: Any, *, sort_keys: bool = False) -> bytes | None:
    """Compact JSON of ``value`` with orjson (about 10x faster than the json module) when that is
    exactly what ``json.dumps(value, ensure_ascii=False, separators=(",", ":"),
    sort_keys=sort_keys)`` would give as UTF-8: the fast path's types (see :func:`_fast_path_ok`),
    no lone surrogate. None otherwise (the caller falls back to ``json`` or ``rfc8785``)."""
    if not _fast_path_ok(value):
        return None
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else None)
    except orjson.JSONEncodeError:  # a lone surrogate
        return None


def stable_hash(value: Any) -> str:
    """SHA-256 hex digest of the canonical JSON of ``value``."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def hash_bytes(data: bytes) -> str:
    """SHA-256 hex digest of raw bytes (sink artifacts, payload packs)."""
    return hashlib.sha256(data).hexdigest()
