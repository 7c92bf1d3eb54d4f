"""Row schemas from the settings' ``schema:`` option: validation and coercion of source rows.

``{fields: dynamic}`` accepts any row. ``{mode: strict|free, fields: ["id: int", "note: str?"]}``
checks and coerces each declared field (strict: exactly these fields; free: at least these). The
engine calls :meth:`RowSchema.validate` on every source row and quarantines the row with the
returned reason when it fails. This module is pure: it never does I/O, never imports SQLAlchemy and
never touches the landscape. It runs per row, so converters are chosen once per field up front.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from elspeth_core.errors import ConfigError

Converter = Callable[[Any], Any]

FIELD_TYPES = ("str", "int", "float", "bool", "any")
# Keys ELSPETH 0.1 accepts for DAG contracts; they do not change row validation.
_CONTRACT_KEYS = ("guaranteed_fields", "required_fields", "audit_fields")
_SCHEMA_KEYS = frozenset({"mode", "fields", *_CONTRACT_KEYS})
_FIELD_SPEC = re.compile(r"^\s*([A-Za-z_]\w*)\s*:\s*(\w+)\s*(\?)?\s*$")
_INT_TEXT = re.compile(r"^\s*[+-]?[0-9]+\s*$")
_FLOAT_TEXT = re.compile(r"^\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*$")
_NON_FINITE_TEXT = re.compile(r"^\s*[+-]?(?:nan|inf|infinity)\s*$", re.IGNORECASE)
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


class _Invalid(Exception):
    """Raised by a converter; carries the reason without the field name."""


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One declared field: ``name: type`` or ``name: type?`` (optional)."""

    name: str
    type: str
    optional: bool
    convert: Converter


class RowSchema:
    """A parsed ``schema:`` option that validates and coerces rows.

    Attributes:
        mode: ``dynamic``, ``strict`` or ``free``.
        fields: the declared fields in declaration order (empty when dynamic).
    """

    def __init__(self, mode: str, fields: tuple[FieldSpec, ...] = ()) -> None:
        self.mode = mode
        self.fields = fields
        self._by_name = {spec.name: spec for spec in fields}
        self._strict = mode == "strict"

    @property
    def is_dynamic(self) -> bool:
        return self.mode == "dynamic"

    @classmethod
    def from_options(cls, schema_options: Mapping[str, Any] | None) -> RowSchema:
        """Parse the ``schema:`` option (``None`` means dynamic).

        Raises:
            ConfigError: a malformed schema or field spec, naming it (key ``schema...``).
        """
        if schema_options is None:
            return cls("dynamic")
        if not isinstance(schema_options, Mapping):
            raise ConfigError("must be a mapping with 'fields'", key="schema")
        unknown = sorted(set(schema_options) - _SCHEMA_KEYS)
        if unknown:
            raise ConfigError(
                f"unknown schema key {unknown[0]!r} (allowed: {', '.join(sorted(_SCHEMA_KEYS))})",
                key="schema",
            )
        if "fields" not in schema_options:
            raise ConfigError("'fields' is required ('dynamic' or a list)", key="schema.fields")
        fields = schema_options["fields"]
        mode = schema_options.get("mode")
        if fields == "dynamic" or mode == "dynamic":
            return cls("dynamic")
        if mode not in ("strict", "free"):
            raise ConfigError(
                f"mode must be 'strict' or 'free' with explicit fields (got {mode!r})",
                key="schema.mode",
            )
        return cls(mode, _parse_fields(fields))

    def validate(self, row: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """Check and coerce one row.

        Returns:
            ``(coerced_row, None)`` — a new dict in the row's own field order, with missing
            optional fields appended as ``None`` — or ``(None, reason)`` with a one-line reason.
        """
        if self.mode == "dynamic":
            return dict(row), None
        by_name = self._by_name
        out: dict[str, Any] = {}
        seen = 0
        for key, value in row.items():
            spec = by_name.get(key)
            if spec is None:
                if self._strict:
                    return None, f"unexpected field {key!r} (strict schema)"
                out[key] = value
                continue
            seen += 1
            if value is None or (value == "" and spec.optional):
                if not spec.optional:
                    return None, f"field {key!r}: a value is required (got null)"
                out[key] = None
                continue
            try:
                out[key] = spec.convert(value)
            except _Invalid as exc:
                return None, f"field {key!r}: {exc}"
        if seen < len(by_name):
            return self._fill_missing(row, out)
        return out, None

    def _fill_missing(
        self, row: Mapping[str, Any], out: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, str | None]:
        for spec in self.fields:
            if spec.name in row:
                continue
            if not spec.optional:
                return None, f"missing required field {spec.name!r}"
            out[spec.name] = None
        return out, None


def _parse_fields(fields: Any) -> tuple[FieldSpec, ...]:
    if not isinstance(fields, list) or not fields:
        raise ConfigError(
            "must be 'dynamic' or a non-empty list like ['id: int', 'note: str?']",
            key="schema.fields",
        )
    specs: list[FieldSpec] = []
    for index, raw in enumerate(fields):
        spec = parse_field_spec(raw, key=f"schema.fields[{index}]")
        if any(existing.name == spec.name for existing in specs):
            raise ConfigError(f"duplicate field {spec.name!r}", key=f"schema.fields[{index}]")
        specs.append(spec)
    return tuple(specs)


def parse_field_spec(raw: Any, *, key: str = "schema.fields") -> FieldSpec:
    """Parse ``"name: type"`` / ``"name: type?"`` (or the YAML form ``{name: type}``).

    Raises:
        ConfigError: the spec is malformed or names an unknown type.
    """
    if isinstance(raw, Mapping) and len(raw) == 1:
        ((name, type_text),) = raw.items()
        raw = f"{name}: {type_text}"
    if not isinstance(raw, str):
        raise ConfigError(f"field spec must be a string like 'id: int' (got {raw!r})", key=key)
    match = _FIELD_SPEC.match(raw)
    if match is None:
        raise ConfigError(f"malformed field spec {raw!r} (expected 'name: type[?]')", key=key)
    name, type_name, optional = match.groups()
    if type_name not in _CONVERTERS:
        raise ConfigError(
            f"unknown type {type_name!r} in field spec {raw!r} (allowed: {', '.join(FIELD_TYPES)})",
            key=key,
        )
    return FieldSpec(name, type_name, optional is not None, _CONVERTERS[type_name])


def _to_int(value: Any) -> int:
    kind = type(value)
    if kind is int:
        return value  # type: ignore[no-any-return]
    if kind is str and _INT_TEXT.match(value):
        try:
            return int(value)
        except ValueError:  # more digits than int() accepts
            raise _Invalid(f"cannot convert {value[:40]!r}... to int (too many digits)") from None
    if kind is float and value.is_integer():
        return int(value)
    raise _Invalid(f"cannot convert {value!r} to int")


def _to_float(value: Any) -> float:
    kind = type(value)
    if kind is float:
        result: float = value
    elif kind is int or kind is str and _FLOAT_TEXT.match(value):
        result = float(value)
    elif kind is str and _NON_FINITE_TEXT.match(value):
        raise _Invalid(f"{_non_finite_name(value)} is not allowed (got {value!r})")
    else:
        raise _Invalid(f"cannot convert {value!r} to float")
    if not math.isfinite(result):
        raise _Invalid(f"{_non_finite_name(str(result))} is not allowed (got {value!r})")
    return result


def _non_finite_name(text: str) -> str:
    return "NaN" if "nan" in text.lower() else "Infinity"


def _to_bool(value: Any) -> bool:
    kind = type(value)
    if kind is bool:
        return value  # type: ignore[no-any-return]
    if kind is str:
        folded = value.strip().lower()
        if folded in _TRUE:
            return True
        if folded in _FALSE:
            return False
    elif kind is int and value in (0, 1):
        return bool(value)
    raise _Invalid(f"cannot convert {value!r} to bool")


def _to_str(value: Any) -> str:
    if type(value) is str:
        return value  # type: ignore[no-any-return]
    raise _Invalid(f"expected a string, got {type(value).__name__} {value!r}")


def _to_any(value: Any) -> Any:
    return value


_CONVERTERS: dict[str, Converter] = {
    "str": _to_str,
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
    "any": _to_any,
}
