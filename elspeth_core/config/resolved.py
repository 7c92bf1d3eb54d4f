"""Settings as the audit trail stores them: secrets fingerprinted, hashed, comparable.

``resolve_for_audit`` turns validated settings into the JSON that goes into ``runs.settings_json``;
no secret appears there in clear, only an HMAC-SHA256 fingerprint that proves whether two runs used
the same secret without revealing it. ``config_hash`` hashes the part of that JSON that decides a
run's outputs, and ``diff_settings`` explains, over the same part, why two hashes differ (the
"Configuration mismatch" message of resume).

This module must not read files or the database, and must not import SQLAlchemy or Prefect.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from typing import Any

from elspeth_core.config.models import ElspethSettings
from elspeth_core.config.paths import KeyPath, format_key_path
from elspeth_core.hashing import canonical_json, stable_hash

FINGERPRINT_KEY_ENV = "ELSPETH_FINGERPRINT_KEY"
DEFAULT_FINGERPRINT_KEY = b"elspeth-settings-fingerprint-default-v1"
FINGERPRINT_PREFIX = "hmac-sha256:"

SECRET_NAMES = frozenset({"api_key", "token", "password", "secret", "credential"})
SECRET_SUFFIXES = ("_key", "_token", "_password", "_secret", "_credential")

CONFIG_HASH_EXCLUDES: tuple[KeyPath, ...] = (
    ("landscape", "url"),
    ("landscape", "backend"),
    ("landscape", "enabled"),
    ("concurrency",),
    ("checkpoint",),
    ("rate_limit",),
    ("retry",),
    ("payload_store",),
)

# scheme://user:password@host - the password runs to the last "@" before the path.
_URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*:)(?P<password>[^\s/?#]+)@"
)
_MAX_SHOWN_VALUE = 80


def fingerprint_key(environ: Mapping[str, str] | None = None) -> bytes:
    """The HMAC key for secret fingerprints.

    Operators should set ``ELSPETH_FINGERPRINT_KEY`` to a private value of their own: with the
    public project default (``DEFAULT_FINGERPRINT_KEY``,
    ``b"elspeth-settings-fingerprint-default-v1"``) anyone holding the audit database can test
    guesses of a weak secret against its fingerprint.
    Keep the key stable: fingerprints are part of the configuration hash, so changing the key
    between a run and its resume with ``--settings`` reports a configuration mismatch.

    Args:
        environ: the environment to read; ``os.environ`` when omitted.

    Returns:
        The key as UTF-8 bytes.
    """
    env = os.environ if environ is None else environ
    configured = env.get(FINGERPRINT_KEY_ENV)
    return configured.encode("utf-8") if configured else DEFAULT_FINGERPRINT_KEY


def fingerprint_secret(value: Any, key: bytes) -> str:
    """HMAC-SHA256 fingerprint of a secret value.

    Args:
        value: the secret; strings are used as they are, other values as canonical JSON.
        key: the HMAC key (see :func:`fingerprint_key`).

    Returns:
        ``"hmac-sha256:<hex>"``.
    """
    data = value.encode("utf-8") if isinstance(value, str) else canonical_json(value)
    return FINGERPRINT_PREFIX + hmac.new(key, data, hashlib.sha256).hexdigest()


def is_secret_name(name: str) -> bool:
    """Whether an option name looks like it holds a secret (case-insensitive).

    Args:
        name: an option name.

    Returns:
        True for ``api_key``, ``token``, ``password``, ``secret``, ``credential`` and names ending
        in ``_key``, ``_token``, ``_password``, ``_secret`` or ``_credential``.
    """
    lowered = name.lower()
    return lowered in SECRET_NAMES or lowered.endswith(SECRET_SUFFIXES)


def resolve_for_audit(settings: ElspethSettings, key: bytes) -> dict[str, Any]:
    """The settings as JSON-able data with every secret replaced by its fingerprint.

    Secret-looking names anywhere inside plugin ``options`` become
    ``{"fingerprint": "hmac-sha256:<hex>"}`` (a ``null`` value stays ``null``: there is nothing to
    hide). In every string of the settings, the password of a URL such as
    ``postgresql+psycopg://user:pw@host/db`` is replaced by its fingerprint.

    Args:
        settings: validated settings.
        key: the HMAC key (see :func:`fingerprint_key`).

    Returns:
        A new plain dict; ``settings`` is not changed.
    """
    resolved = _scrub(settings.model_dump(mode="json"), key, in_options=False)
    assert isinstance(resolved, dict)
    return resolved


def _scrub(value: Any, key: bytes, *, in_options: bool) -> Any:
    if isinstance(value, dict):
        return {name: _scrub_entry(name, item, key, in_options) for name, item in value.items()}
    if isinstance(value, list):
        return [_scrub(item, key, in_options=in_options) for item in value]
    if isinstance(value, str):
        return _scrub_url(value, key)
    return value


def _scrub_entry(name: str, value: Any, key: bytes, in_options: bool) -> Any:
    if in_options and value is not None and is_secret_name(name):
        return {"fingerprint": fingerprint_secret(value, key)}
    return _scrub(value, key, in_options=in_options or name == "options")


def _scrub_url(text: str, key: bytes) -> str:
    def replace(match: re.Match[str]) -> str:
        return f"{match.group('head')}{fingerprint_secret(match.group('password'), key)}@"

    return _URL_PASSWORD.sub(replace, text)


def config_hash(resolved: Mapping[str, Any]) -> str:
    """Stable hash of the part of the resolved settings that decides a run's outputs.

    Left out (``CONFIG_HASH_EXCLUDES``): ``landscape.url``, ``landscape.backend``,
    ``landscape.enabled``, ``concurrency``, ``checkpoint``, ``rate_limit``, ``retry`` and
    ``payload_store``. They say where the audit trail lives and how fast, how often durably or how
    patiently the run works, never what it outputs; so a run may be resumed with another checkpoint
    frequency, database URL or worker count and still count as the same configuration.

    Args:
        resolved: the result of :func:`resolve_for_audit` (or its stored JSON read back).

    Returns:
        The SHA-256 hex digest of the canonical JSON of the covered part.
    """
    return stable_hash(_hashed_part(resolved))


def diff_settings(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Readable differences between two resolved settings, over the part the hash covers.

    Args:
        a: the recorded settings (from the audit trail).
        b: the given settings (from ``--settings``).

    Returns:
        Lines such as ``"row_plugins[0].options.mapping.a: 'x' != 'y'"`` (recorded value first) or
        ``"sinks.extra: only in the given settings"``; empty when the hashes would be equal.
    """
    differences: list[str] = []
    _diff(_hashed_part(a), _hashed_part(b), (), differences)
    return differences


def _hashed_part(resolved: Mapping[str, Any]) -> dict[str, Any]:
    part = dict(resolved)
    for path in CONFIG_HASH_EXCLUDES:
        _drop(part, path)
    return part


def _drop(data: dict[str, Any], path: KeyPath) -> None:
    head, *rest = path
    if not isinstance(head, str) or head not in data:
        return
    if not rest:
        del data[head]
    elif isinstance(data[head], dict):
        data[head] = dict(data[head])
        _drop(data[head], tuple(rest))


def _diff(a: Any, b: Any, path: KeyPath, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for name in sorted(a.keys() | b.keys()):
            _diff_member(a, b, name, name in a, name in b, (*path, name), out)
    elif isinstance(a, list) and isinstance(b, list):
        for index in range(max(len(a), len(b))):
            _diff_member(a, b, index, index < len(a), index < len(b), (*path, index), out)
    elif a != b or (type(a) is not type(b) and not _same_number(a, b)):
        out.append(f"{format_key_path(path)}: {_shown(a)} != {_shown(b)}")


def _diff_member(
    a: Any, b: Any, member: Any, in_a: bool, in_b: bool, path: KeyPath, out: list[str]
) -> None:
    if in_a and in_b:
        _diff(a[member], b[member], path, out)
    elif in_a:
        out.append(f"{format_key_path(path)}: only in the recorded settings")
    else:
        out.append(f"{format_key_path(path)}: only in the given settings")


def _same_number(a: Any, b: Any) -> bool:
    """1 and 1.0 hash alike in canonical JSON, so they are not a difference either."""
    numbers = (int, float)
    return (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
    )


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= _MAX_SHOWN_VALUE else shown[: _MAX_SHOWN_VALUE - 3] + "..."
