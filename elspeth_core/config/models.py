"""Pydantic models of the ELSPETH 0.1 settings format (SPEC section 2).

Every model forbids unknown keys and is frozen, so a typo is an error and validated settings cannot
drift during a run. Cross-field rules that need only the settings themselves live here (sink names,
fork targets, unique names); rules that need the pipeline graph (coalesce names as destinations,
reachability) belong to the DAG layer, and gate expression syntax belongs to the expression module.

This module must not read files or the environment, and must not import SQLAlchemy or Prefect.
"""

from __future__ import annotations

import types
from collections import Counter
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from elspeth_core.config.paths import KeyPath, format_key_path, key_text

OutputMode = Literal["single", "transform", "passthrough"]
CoalescePolicy = Literal["require_all", "quorum", "best_effort", "first"]
MergeStrategy = Literal["union", "nested", "select"]
CheckpointFrequency = Literal["every_row", "every_n", "aggregation_only"]
RunMode = Literal["live", "replay", "verify"]

GATE_CONTINUE = "continue"
GATE_FORK = "fork"
DISCARD = "discard"


class SettingsProblems(ValueError):
    """Cross-field problems found by one model, each with a key path relative to that model.

    Pydantic keeps the raised exception in the error's context, so the loader can turn every
    problem into its own ``key.path (line N): reason`` entry.
    """

    def __init__(self, problems: list[tuple[KeyPath, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{format_key_path(p)}: {m}" if p else m for p, m in problems))


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasourceSettings(_Settings):
    """The source plugin that yields the rows."""

    plugin: str
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("plugin", mode="before")
    @classmethod
    def _bare_null(cls, value: Any) -> Any:
        # `plugin: null` unquoted is YAML's null; ELSPETH 0.1 files mean the null source by it.
        return "null" if value is None else value


class RowPluginSettings(_Settings):
    """One transform, applied in list order.

    ``on_error`` may be written beside ``plugin`` or inside ``options`` (ELSPETH 0.1 accepted both);
    it always ends up in the ``on_error`` field and is removed from ``options``.
    """

    plugin: str
    options: dict[str, Any] = Field(default_factory=dict)
    on_error: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _lift_on_error(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("options"), dict):
            return data
        if "on_error" not in data["options"]:
            return data
        options = dict(data["options"])
        nested = options.pop("on_error")
        outer = data.get("on_error")
        if outer is not None and outer != nested:
            raise SettingsProblems(
                [(("on_error",), f"given twice with different values: {outer!r} and {nested!r}")]
            )
        return {**data, "options": options, "on_error": nested}


class TriggerSettings(_Settings):
    """When an aggregation flushes its batch: whichever condition fires first."""

    count: int | None = Field(default=None, ge=1)
    timeout_seconds: float | None = Field(default=None, gt=0)
    condition: str | None = None

    @model_validator(mode="after")
    def _needs_one(self) -> TriggerSettings:
        if self.count is None and self.timeout_seconds is None and self.condition is None:
            raise SettingsProblems(
                [((), "needs at least one of count, timeout_seconds or condition")]
            )
        return self


class AggregationSettings(_Settings):
    """A batching step between the transforms and the gates."""

    name: str
    plugin: str
    trigger: TriggerSettings
    output_mode: OutputMode = "single"
    options: dict[str, Any] = Field(default_factory=dict)


class GateSettings(_Settings):
    """A routing decision: ``condition`` picks a route, a route names a destination."""

    name: str
    condition: str
    routes: dict[str, str] = Field(min_length=1)
    fork_to: list[str] | None = None

    @field_validator("routes", mode="before")
    @classmethod
    def _string_route_labels(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {key_text(label): dest for label, dest in value.items()}
        return value

    @model_validator(mode="after")
    def _fork_needs_branches(self) -> GateSettings:
        if GATE_FORK not in self.routes.values():
            return self
        if not self.fork_to:
            raise SettingsProblems(
                [(("fork_to",), "a route uses 'fork', so fork_to must list the branch names")]
            )
        duplicates = _duplicates(self.fork_to)
        if duplicates:
            raise SettingsProblems(
                [(("fork_to",), f"branch names repeat: {', '.join(duplicates)}")]
            )
        return self


class CoalesceSettings(_Settings):
    """Where forked branches join again, and how their rows merge."""

    name: str
    branches: list[str] = Field(min_length=1)
    policy: CoalescePolicy = "require_all"
    quorum_count: int | None = Field(default=None, ge=1)
    timeout_seconds: float | None = Field(default=None, gt=0)
    merge: MergeStrategy = "union"
    select_branch: str | None = None

    @model_validator(mode="after")
    def _policy_and_merge_options(self) -> CoalesceSettings:
        problems = self._policy_problems() + self._merge_problems()
        duplicates = _duplicates(self.branches)
        if duplicates:
            problems.append((("branches",), f"branch names repeat: {', '.join(duplicates)}"))
        if problems:
            raise SettingsProblems(problems)
        return self

    def _policy_problems(self) -> list[tuple[KeyPath, str]]:
        if self.policy == "quorum" and self.quorum_count is None:
            return [(("quorum_count",), "policy 'quorum' needs quorum_count")]
        if self.quorum_count is not None and self.quorum_count > len(self.branches):
            return [
                (
                    ("quorum_count",),
                    f"{self.quorum_count} is more than the {len(self.branches)} branches",
                )
            ]
        if self.policy == "best_effort" and self.timeout_seconds is None:
            return [(("timeout_seconds",), "policy 'best_effort' needs timeout_seconds")]
        return []

    def _merge_problems(self) -> list[tuple[KeyPath, str]]:
        if self.merge != "select":
            return []
        if self.select_branch is None:
            return [(("select_branch",), "merge 'select' needs select_branch")]
        if self.select_branch not in self.branches:
            return [
                (
                    ("select_branch",),
                    f"{self.select_branch!r} is not one of the branches "
                    f"({', '.join(self.branches)})",
                )
            ]
        return []


class SinkSettings(_Settings):
    """An output plugin, addressed by its name in ``sinks``."""

    plugin: str
    options: dict[str, Any] = Field(default_factory=dict)


class LandscapeExportSettings(_Settings):
    """Export of the audit trail to a sink at the end of a run."""

    enabled: bool = False
    sink: str | None = None
    format: Literal["json", "csv"] = "json"
    sign: bool = False


class LandscapeSettings(_Settings):
    """The audit database."""

    enabled: bool = True
    backend: Literal["sqlite", "postgresql"] = "sqlite"
    url: str = "sqlite:///runs/audit.db"
    export: LandscapeExportSettings = Field(default_factory=LandscapeExportSettings)


class CheckpointSettings(_Settings):
    """How often progress is made durable; changes only how much a resume redoes."""

    enabled: bool = True
    frequency: CheckpointFrequency = "every_n"
    checkpoint_interval: int = Field(default=100, ge=1)


class RetrySettings(_Settings):
    """Retries of transient plugin errors, with exponential back-off."""

    max_attempts: int = Field(default=3, ge=1)
    initial_delay_seconds: float = Field(default=1.0, ge=0)
    max_delay_seconds: float = Field(default=60.0, ge=0)
    exponential_base: float = Field(default=2.0, ge=1)


class PayloadStoreSettings(_Settings):
    """Where large row payloads are kept outside the audit database."""

    backend: Literal["filesystem"] = "filesystem"
    base_path: str = ".elspeth/payloads"
    retention_days: int = Field(default=90, ge=1)


class ConcurrencySettings(_Settings):
    """Parallelism of plugin calls."""

    max_workers: int = Field(default=4, ge=1)


class ServiceRateLimitSettings(_Settings):
    """The request budget of one named external service."""

    requests_per_second: float = Field(gt=0)


class RateLimitSettings(_Settings):
    """Request budgets for plugins that call external services."""

    enabled: bool = False
    default_requests_per_second: float = Field(default=10, gt=0)
    services: dict[str, ServiceRateLimitSettings] = Field(default_factory=dict)


class ElspethSettings(_Settings):
    """A whole pipeline settings file. Only datasource, sinks and output_sink are required."""

    datasource: DatasourceSettings
    row_plugins: list[RowPluginSettings] = Field(default_factory=list)
    aggregations: list[AggregationSettings] = Field(default_factory=list)
    gates: list[GateSettings] = Field(default_factory=list)
    coalesce: list[CoalesceSettings] = Field(default_factory=list)
    sinks: dict[str, SinkSettings] = Field(min_length=1)
    output_sink: str
    landscape: LandscapeSettings = Field(default_factory=LandscapeSettings)
    checkpoint: CheckpointSettings = Field(default_factory=CheckpointSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    payload_store: PayloadStoreSettings = Field(default_factory=PayloadStoreSettings)
    concurrency: ConcurrencySettings = Field(default_factory=ConcurrencySettings)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    run_mode: RunMode = "live"

    @model_validator(mode="after")
    def _cross_references(self) -> ElspethSettings:
        problems = (
            self._output_sink_problems()
            + self._on_error_problems()
            + self._gate_route_problems()
            + _unique_name_problems("aggregations", [a.name for a in self.aggregations])
            + _unique_name_problems("gates", [g.name for g in self.gates])
            + _unique_name_problems("coalesce", [c.name for c in self.coalesce])
            + self._export_problems()
        )
        if problems:
            raise SettingsProblems(problems)
        return self

    def _sink_list(self) -> str:
        return ", ".join(self.sinks)

    def _output_sink_problems(self) -> list[tuple[KeyPath, str]]:
        if self.output_sink in self.sinks:
            return []
        return [
            (("output_sink",), f"{self.output_sink!r} is not a sink (sinks: {self._sink_list()})")
        ]

    def _on_error_problems(self) -> list[tuple[KeyPath, str]]:
        problems: list[tuple[KeyPath, str]] = []
        for index, row_plugin in enumerate(self.row_plugins):
            target = row_plugin.on_error
            if target is not None and target != DISCARD and target not in self.sinks:
                problems.append(
                    (
                        ("row_plugins", index, "on_error"),
                        f"{target!r} is neither 'discard' nor a sink (sinks: {self._sink_list()})",
                    )
                )
        return problems

    def _gate_route_problems(self) -> list[tuple[KeyPath, str]]:
        problems: list[tuple[KeyPath, str]] = []
        allowed = {GATE_CONTINUE, GATE_FORK, *self.sinks}
        for index, gate in enumerate(self.gates):
            for label, destination in gate.routes.items():
                if destination not in allowed:
                    problems.append(
                        (
                            ("gates", index, "routes", label),
                            f"unknown destination {destination!r} (expected 'continue', "
                            f"'fork' or a sink: {self._sink_list()})",
                        )
                    )
        return problems

    def _export_problems(self) -> list[tuple[KeyPath, str]]:
        export = self.landscape.export
        path: KeyPath = ("landscape", "export", "sink")
        if not export.enabled:
            return []
        if export.sink is None:
            return [(path, "export is enabled, so it needs a sink")]
        if export.sink not in self.sinks:
            return [(path, f"{export.sink!r} is not a sink (sinks: {self._sink_list()})")]
        return []


def _duplicates(names: list[str]) -> list[str]:
    return [name for name, count in Counter(names).items() if count > 1]


def _unique_name_problems(section: str, names: list[str]) -> list[tuple[KeyPath, str]]:
    seen: set[str] = set()
    problems: list[tuple[KeyPath, str]] = []
    for index, name in enumerate(names):
        if name in seen:
            problems.append(((section, index, "name"), f"name {name!r} is used more than once"))
        seen.add(name)
    return problems


def settings_model_at(path: KeyPath) -> type[BaseModel] | None:
    """The settings model that describes the mapping at ``path``, if a model describes it.

    Used to list the allowed keys of an unknown key and to map environment overrides onto declared
    field names. Free-form mappings (plugin ``options``) have no model.

    Args:
        path: key path from the document root; ``()`` is :class:`ElspethSettings`.

    Returns:
        The model class, or ``None`` for free-form data or a path the models do not declare.
    """
    annotation = _without_none(settings_annotation_at(path))
    return annotation if _is_model(annotation) else None


def settings_declares_list(path: KeyPath) -> bool:
    """Whether the models declare a list at ``path`` (``row_plugins``, ``gates[0].fork_to``).

    Args:
        path: key path from the document root.

    Returns:
        True for a declared list, False otherwise (also for undeclared paths).
    """
    return get_origin(_without_none(settings_annotation_at(path))) is list


def settings_annotation_at(path: KeyPath) -> Any:
    """The type the models declare at ``path``, or ``None`` where they declare nothing.

    Args:
        path: key path from the document root; ``()`` is :class:`ElspethSettings`.

    Returns:
        A type annotation (a model class, ``list[...]``, ``dict[...]``, ...), or ``None``.
    """
    current: Any = ElspethSettings
    for element in path:
        current = _container_item(_without_none(current), element)
        if current is None:
            return None
    return current


def _container_item(annotation: Any, element: str | int) -> Any:
    if _is_model(annotation):
        field = annotation.model_fields.get(element) if isinstance(element, str) else None
        return None if field is None else field.annotation
    origin = get_origin(annotation)
    if origin is list and isinstance(element, int):
        return get_args(annotation)[0]
    if origin is dict and isinstance(element, str):
        return get_args(annotation)[1]
    return None


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        return members[0] if len(members) == 1 else annotation
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
