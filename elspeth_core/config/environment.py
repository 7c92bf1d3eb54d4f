"""What the environment contributes to settings: ``${VAR}`` expansion and ``ELSPETH_`` overrides.

Expansion happens first, in string scalars only: ``${VAR}`` must be set, ``${VAR:-default}`` uses
the default when the variable is unset or empty (as the shell does). Overrides come second:
``ELSPETH_<SECTION>__<KEY>[__<SUBKEY>...]=value`` sets one value, matching keys case-insensitively
onto the keys present in the document or declared by the models, and reading the value as a YAML
scalar so ``true``, ``5`` and ``2.5`` get their types. Variables without ``__``
(``ELSPETH_SIGNING_KEY``) belong to other parts of ELSPETH and are ignored.

The environment is always passed in (a mapping), never read from a global here. This module must
not validate the settings and must not import SQLAlchemy or Prefect.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from elspeth_core.config.models import settings_declares_list, settings_model_at
from elspeth_core.config.paths import KeyPath, format_key_path, key_text, line_of
from elspeth_core.errors import ConfigError

OVERRIDE_PREFIX = "ELSPETH_"
OVERRIDE_SEPARATOR = "__"

_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<fallback>:-(?P<default>[^}]*))?\}")
_SCALAR_TYPES = (str, int, float, bool)


def expand_variables(
    data: Any, environ: Mapping[str, str], *, file: str, lines: Mapping[KeyPath, int]
) -> Any:
    """Return a copy of ``data`` with ``${VAR}`` and ``${VAR:-default}`` expanded in strings.

    Mapping keys come out as strings (see :func:`~elspeth_core.config.paths.key_text`).

    Args:
        data: parsed settings (mappings, lists, scalars).
        environ: the environment to read.
        file: the name to show in messages.
        lines: key path to line, for messages.

    Returns:
        The expanded copy; ``data`` itself is not changed.

    Raises:
        ConfigError: a ``${VAR}`` without default names an unset variable.
    """
    return _expand(data, (), environ, file, lines)


def _expand(
    value: Any, path: KeyPath, environ: Mapping[str, str], file: str, lines: Mapping[KeyPath, int]
) -> Any:
    if isinstance(value, dict):
        return {
            key_text(k): _expand(v, (*path, key_text(k)), environ, file, lines)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_expand(v, (*path, i), environ, file, lines) for i, v in enumerate(value)]
    if isinstance(value, str):
        return _expand_string(value, path, environ, file, lines)
    return value


def _expand_string(
    text: str, path: KeyPath, environ: Mapping[str, str], file: str, lines: Mapping[KeyPath, int]
) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group("name")
        current = environ.get(name)
        if match.group("fallback") is not None:
            return current if current else match.group("default")
        if current is None:
            raise ConfigError(
                f"environment variable {name} is not set "
                f"(write ${{{name}:-default}} to allow that)",
                file=file,
                key=format_key_path(path),
                line=line_of(lines, path),
            )
        return current

    return _VARIABLE.sub(substitute, text)


def apply_env_overrides(
    data: dict[str, Any], environ: Mapping[str, str], *, file: str
) -> dict[KeyPath, str]:
    """Apply ``ELSPETH_<SECTION>__<KEY>...`` variables to ``data`` in place.

    Variables are applied in sorted order so the result never depends on the environment's order.

    Args:
        data: expanded settings; changed in place.
        environ: the environment to read.
        file: the name to show in messages.

    Returns:
        The key path each variable set, mapped to the variable's name (for messages about values
        that did not come from the file).

    Raises:
        ConfigError: a variable names a key the settings do not declare, or walks through a value
            that is not a mapping or list.
    """
    applied: dict[KeyPath, str] = {}
    for name in sorted(environ):
        if not name.startswith(OVERRIDE_PREFIX) or OVERRIDE_SEPARATOR not in name:
            continue
        segments = name[len(OVERRIDE_PREFIX) :].split(OVERRIDE_SEPARATOR)
        if not all(segments):
            raise ConfigError("override variable has an empty key segment", file=file, key=name)
        path = _set_path(data, segments, parse_override_value(environ[name]), name, file)
        applied[path] = name
    return applied


def parse_override_value(text: str) -> Any:
    """Read an override's value as a YAML scalar (``true`` -> True, ``5`` -> 5, ``2.5`` -> 2.5).

    Args:
        text: the variable's value.

    Returns:
        A str, int, float, bool or None; anything else YAML would build (lists, dates) stays text.
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if value is None or isinstance(value, _SCALAR_TYPES) else text


def _set_path(
    data: dict[str, Any], segments: list[str], value: Any, name: str, file: str
) -> KeyPath:
    node: Any = data
    path: KeyPath = ()
    for position, segment in enumerate(segments):
        key = _step(node, segment, path, name, file)
        path = (*path, key)
        if position == len(segments) - 1:
            node[key] = value
        else:
            node = _child(node, key, path)
    return path


def _step(node: Any, segment: str, path: KeyPath, name: str, file: str) -> str | int:
    if isinstance(node, dict):
        return _mapping_key(node, segment, path, name, file)
    if isinstance(node, list) and segment.isdigit() and int(segment) < len(node):
        return int(segment)
    where = format_key_path(path)
    kind = f"a list of {len(node)} items" if isinstance(node, list) else "not a mapping"
    raise ConfigError(f"cannot set {segment.lower()!r}: {where} is {kind}", file=file, key=name)


def _child(node: Any, key: str | int, path: KeyPath) -> Any:
    child = node.get(key) if isinstance(node, dict) else node[key]
    if child is None:
        child = [] if settings_declares_list(path) else {}
        node[key] = child
    return child


def _mapping_key(node: dict[str, Any], segment: str, path: KeyPath, name: str, file: str) -> str:
    wanted = segment.lower()
    for existing in node:
        if existing.lower() == wanted:
            return existing
    model = settings_model_at(path)
    if model is None or wanted in model.model_fields:
        return wanted
    where = f" under {format_key_path(path)}" if path else ""
    raise ConfigError(
        f"no settings key {wanted!r}{where} (allowed: {', '.join(model.model_fields)})",
        file=file,
        key=name,
        hint="Fix or unset the variable; ELSPETH_<SECTION>__<KEY> must name a declared key.",
    )
