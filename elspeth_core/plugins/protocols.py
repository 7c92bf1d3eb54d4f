"""What a plugin is: one ``Protocol`` per kind (source, transform, aggregation, sink).

Each plugin class has a ``name`` (the settings' ``plugin:`` value), a ``version`` (recorded in the
``nodes`` table) and a pydantic ``config_model`` (``extra="forbid"``) that validates its options.
Plugins never touch the landscape: the engine records everything about what they did. Sinks are the
one stateful kind: their publication state (byte offset, rows written, ...) is committed in the
landscape in the same transaction as the outcomes it vouches for, which is what makes publication
exactly-once across crashes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError

from elspeth_core.errors import ConfigError

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class BadRow:
    """A source record that could not even be parsed into a row (bad encoding, broken JSON line).

    The engine quarantines it with ``reason``; ``raw`` is what was read, as text, for the audit.
    """

    reason: str
    raw: str


@dataclass(frozen=True, slots=True)
class TransformResult:
    """What a transform returns for one row.

    Exactly one of ``row`` (one output row, possibly the same object when unchanged) or ``rows``
    (an expansion: zero or more output rows, each a new token) is set, unless ``error`` is set:
    a terminal, per-row error routed to the transform's ``on_error``.
    """

    row: Row | None = None
    rows: list[Row] | None = None
    error: str | None = None

    @staticmethod
    def ok(row: Row) -> TransformResult:
        return TransformResult(row=row)

    @staticmethod
    def expand(rows: list[Row]) -> TransformResult:
        return TransformResult(rows=rows)

    @staticmethod
    def fail(reason: str) -> TransformResult:
        return TransformResult(error=reason)


@dataclass(frozen=True, slots=True)
class Publication:
    """A sink's durable publication state, stored in ``artifacts.publication_json``.

    ``rows`` counts rows published; ``state`` is sink-specific (byte offset, header fields, ...)
    and must be enough for ``Sink.restore`` to cut the output back to exactly this point.
    """

    uri: str
    rows: int
    size_bytes: int
    state: dict[str, Any] = field(default_factory=dict)


class PluginConfig(BaseModel):
    """Base for plugin option models: unknown options are errors."""

    model_config = {"extra": "forbid", "frozen": True}


@runtime_checkable
class SourcePlugin(Protocol):
    name: ClassVar[str]
    version: ClassVar[str]
    config_model: ClassVar[type[BaseModel]]

    def read(self) -> Iterator[Row | BadRow]:
        """Yield the source's records in a stable order, streaming (never the whole file)."""
        ...


@runtime_checkable
class TransformPlugin(Protocol):
    name: ClassVar[str]
    version: ClassVar[str]
    config_model: ClassVar[type[BaseModel]]

    def process(self, row: Row) -> TransformResult:
        """Transform one row. Raise TransientPluginError for retryable failures."""
        ...


@runtime_checkable
class AggregationPlugin(Protocol):
    name: ClassVar[str]
    version: ClassVar[str]
    config_model: ClassVar[type[BaseModel]]

    def aggregate(self, rows: list[Row], output_mode: str) -> list[Row]:
        """Turn one batch's member rows (in ordinal order) into output rows.

        ``single`` must return exactly one row, ``passthrough`` exactly ``len(rows)`` rows (member
        i enriched), ``transform`` any number. The engine checks the counts.
        """
        ...


@runtime_checkable
class SinkPlugin(Protocol):
    name: ClassVar[str]
    version: ClassVar[str]
    config_model: ClassVar[type[BaseModel]]

    def restore(self, publication: Publication | None, *, run_id: str) -> None:
        """Open the output so that it holds exactly what ``publication`` vouches for.

        ``None`` means nothing was ever committed for this run: start the output afresh (``write``
        mode truncates, ``append`` mode remembers the current end as its base). Otherwise cut back
        anything written after that point (a crash between the write and the landscape commit).
        """
        ...

    def write(self, rows: list[Row]) -> None:
        """Append rows to the output (buffered; not yet durable)."""
        ...

    def flush(self) -> Publication:
        """Make everything written so far durable (fsync) and return the new publication state."""
        ...

    def finish(self) -> Publication:
        """Complete the output (e.g. close a JSON array), make it durable, return the final state."""
        ...

    def close(self) -> None:
        """Release file handles or connections; never changes the output."""
        ...

    def content_hash(self) -> str | None:
        """SHA-256 of the published output, when the sink can compute it cheaply (files)."""
        ...


PluginClass = (
    type[SourcePlugin] | type[TransformPlugin] | type[AggregationPlugin] | type[SinkPlugin]
)


def plugin_options(model: type[BaseModel], options: Mapping[str, Any]) -> BaseModel:
    """Validate a plugin's options with its config model (raises pydantic.ValidationError)."""
    return model.model_validate(dict(options))


_Options = TypeVar("_Options", bound=BaseModel)


def validated_options(model: type[_Options], options: Mapping[str, Any] | None) -> _Options:
    """Validate a plugin's options, turning pydantic's report into one ``ConfigError``.

    Args:
        model: the plugin's option model.
        options: the ``options:`` mapping from the settings (``None`` means no options).

    Returns:
        The validated option model.

    Raises:
        ConfigError: naming the first offending option in ``key`` with a one-line reason.
    """
    try:
        return model.model_validate(dict(options or {}))
    except ValidationError as exc:
        raise _config_error(model, exc) from exc


def _config_error(model: type[BaseModel], exc: ValidationError) -> ConfigError:
    errors = exc.errors()
    first = errors[0]
    key = ".".join(str(part) for part in first["loc"]) or None
    kind = first["type"]
    if kind == "extra_forbidden":
        allowed = sorted(info.alias or name for name, info in model.model_fields.items())
        reason = f"unknown option (allowed: {', '.join(allowed)})"
    elif kind == "missing":
        reason = "required option is missing"
    else:
        reason = first["msg"].removeprefix("Value error, ")
        if first["loc"]:
            shown = repr(first["input"])
            reason += f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
    if len(errors) > 1:
        reason += f" (and {len(errors) - 1} more problem(s))"
    return ConfigError(reason, key=key)
