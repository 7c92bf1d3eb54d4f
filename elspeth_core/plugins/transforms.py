"""Built-in row transforms: ``passthrough``, ``field_mapper``, ``truncate``, ``keyword_filter``,
``json_explode``.

A transform turns one row into a ``TransformResult``: one row, an expansion into new rows, or a
per-row failure (``TransformResult.fail``) that the engine routes to the transform's ``on_error``.
Transforms never mutate their input row (the engine has already hashed it), hold no per-run state,
never import SQLAlchemy and never touch the landscape. ``on_error`` is accepted in every option
model because it lives in the same ``options:`` block, but only the engine reads it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from elspeth_core.errors import ConfigError
from elspeth_core.plugins.protocols import PluginConfig, Row, TransformResult, validated_options


class TransformOptions(PluginConfig):
    """Options every transform accepts; ``on_error`` is read by the engine (a sink or 'discard')."""

    on_error: str | None = None


class FieldMapperOptions(TransformOptions):
    mapping: dict[str, str] = Field(default_factory=dict)
    select_only: bool = False
    strict: bool = False

    @field_validator("mapping")
    @classmethod
    def _targets_unique(cls, mapping: dict[str, str]) -> dict[str, str]:
        targets = list(mapping.values())
        duplicates = sorted({name for name in targets if targets.count(name) > 1})
        if duplicates:
            raise ValueError(f"two fields are renamed to {duplicates[0]!r}")
        return mapping


class TruncateOptions(TransformOptions):
    max_length: int = Field(ge=0)
    fields: list[str] | None = None
    suffix: str = ""

    @field_validator("suffix")
    @classmethod
    def _suffix_fits(cls, suffix: str, info: ValidationInfo) -> str:
        max_length = info.data.get("max_length")
        if max_length is not None and len(suffix) > max_length:
            raise ValueError(f"suffix is longer than max_length {max_length}")
        return suffix


class KeywordFilterOptions(TransformOptions):
    keywords: list[str] = Field(min_length=1)
    fields: list[str] | Literal["all"] = "all"
    case_sensitive: bool = False

    @field_validator("keywords")
    @classmethod
    def _keywords_not_empty(cls, keywords: list[str]) -> list[str]:
        if any(not keyword for keyword in keywords):
            raise ValueError("an empty keyword would match every value")
        return keywords


class JsonExplodeOptions(TransformOptions):
    array_field: str = Field(min_length=1)
    output_field: str = Field(default="item", min_length=1)
    include_index: bool = False


class _Transform:
    version: ClassVar[str] = "1.0.0"
    config_model: ClassVar[type[TransformOptions]] = TransformOptions

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.config = validated_options(self.config_model, options)


class Passthrough(_Transform):
    """Returns the very same row object (no copy, no change)."""

    name: ClassVar[str] = "passthrough"

    def process(self, row: Row) -> TransformResult:
        return TransformResult.ok(row)


class FieldMapper(_Transform):
    """Renames fields (``mapping: {old: new}``); renamed fields keep their position.

    ``select_only`` drops fields that are not mapped. ``strict`` fails a row missing a mapped field.
    Renaming onto an existing, unmapped field fails the row instead of overwriting it silently.
    """

    name: ClassVar[str] = "field_mapper"
    config_model: ClassVar[type[TransformOptions]] = FieldMapperOptions
    config: FieldMapperOptions

    def process(self, row: Row) -> TransformResult:
        mapping = self.config.mapping
        if self.config.strict:
            missing = [old for old in mapping if old not in row]
            if missing:
                return TransformResult.fail(f"missing field {missing[0]!r}")
        out: Row = {}
        for key, value in row.items():
            new = mapping.get(key)
            if new is not None:
                if new in row and new not in mapping and not self.config.select_only:
                    return TransformResult.fail(
                        f"renaming {key!r} to {new!r} would overwrite the existing field {new!r}"
                    )
                out[new] = value
            elif not self.config.select_only:
                out[key] = value
        return TransformResult.ok(out)


class Truncate(_Transform):
    """Cuts string values longer than ``max_length`` so that, with ``suffix``, they fit exactly.

    ``fields: None`` means every string field; non-string values and absent fields are left alone.
    """

    name: ClassVar[str] = "truncate"
    config_model: ClassVar[type[TransformOptions]] = TruncateOptions
    config: TruncateOptions

    def process(self, row: Row) -> TransformResult:
        limit = self.config.max_length
        names = row.keys() if self.config.fields is None else self.config.fields
        long = [n for n in names if isinstance(row.get(n), str) and len(row[n]) > limit]
        if not long:
            return TransformResult.ok(row)
        suffix = self.config.suffix
        keep = limit - len(suffix)
        out = dict(row)
        for field_name in long:
            out[field_name] = out[field_name][:keep] + suffix
        return TransformResult.ok(out)


class KeywordFilter(_Transform):
    """Fails (routes to ``on_error``) rows whose string fields contain one of ``keywords``.

    Matching is by substring; ``case_sensitive: false`` ignores case. Non-string values are not
    searched. The reason names the keyword and the field.
    """

    name: ClassVar[str] = "keyword_filter"
    config_model: ClassVar[type[TransformOptions]] = KeywordFilterOptions
    config: KeywordFilterOptions

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        keywords = sorted(set(self.config.keywords), key=lambda k: (-len(k), k))
        flags = 0 if self.config.case_sensitive else re.IGNORECASE
        self._pattern = re.compile("|".join(re.escape(k) for k in keywords), flags)
        self._by_folded = {k.casefold(): k for k in reversed(keywords)}

    def process(self, row: Row) -> TransformResult:
        names = row.keys() if self.config.fields == "all" else self.config.fields
        search = self._pattern.search
        for field_name in names:
            value = row.get(field_name)
            if type(value) is not str:
                continue
            match = search(value)
            if match:
                keyword = self._keyword(match.group(0))
                return TransformResult.fail(f"matched keyword {keyword!r} in field {field_name!r}")
        return TransformResult.ok(row)

    def _keyword(self, matched: str) -> str:
        if self.config.case_sensitive:
            return matched
        return self._by_folded.get(matched.casefold(), matched)


class JsonExplode(_Transform):
    """Expands a list field into one row per element (new tokens; the parent is ``expanded``).

    Each output row: the other fields (copied), then ``output_field`` = the element, then
    ``item_index`` (0-based) when ``include_index``. An empty list expands to no rows.
    """

    name: ClassVar[str] = "json_explode"
    config_model: ClassVar[type[TransformOptions]] = JsonExplodeOptions
    config: JsonExplodeOptions

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        if self.config.include_index and self.config.output_field == "item_index":
            raise ConfigError(
                "must not be 'item_index' when include_index is set", key="output_field"
            )

    def process(self, row: Row) -> TransformResult:
        array_field = self.config.array_field
        if array_field not in row:
            return TransformResult.fail(f"array field {array_field!r} is missing")
        items = row[array_field]
        if not isinstance(items, list):
            return TransformResult.fail(
                f"array field {array_field!r} is not a list (got {type(items).__name__})"
            )
        base = {k: v for k, v in row.items() if k != array_field}
        clash = self._clash(base)
        if clash:
            return TransformResult.fail(f"output field {clash!r} already exists in the row")
        return TransformResult.expand([self._child(base, item, i) for i, item in enumerate(items)])

    def _clash(self, base: Row) -> str | None:
        if self.config.output_field in base:
            return self.config.output_field
        if self.config.include_index and "item_index" in base:
            return "item_index"
        return None

    def _child(self, base: Row, item: Any, index: int) -> Row:
        child = {key: _detached(value) for key, value in base.items()}
        child[self.config.output_field] = _detached(item)
        if self.config.include_index:
            child["item_index"] = index
        return child


def _detached(value: Any) -> Any:
    """Sibling rows become independent tokens: they must not share mutable values."""
    return copy.deepcopy(value) if isinstance(value, dict | list) else value
