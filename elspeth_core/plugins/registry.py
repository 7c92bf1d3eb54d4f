"""The plugin registry: which class implements ``plugin: <name>`` for each kind.

Built-ins are registered explicitly by :meth:`PluginRegistry.builtin`; third-party plugins come
from the ``elspeth.plugins`` entry-point group, each entry point naming one plugin class. There is
no global registry: callers create one and pass it on. The registry only maps names to classes; it
never imports SQLAlchemy, never touches the landscape and never runs a plugin.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from elspeth_core.errors import ConfigError
from elspeth_core.plugins.aggregations import BatchReplicate, BatchStats
from elspeth_core.plugins.database_sink import DatabaseSink
from elspeth_core.plugins.pseudonymize import Pseudonymize
from elspeth_core.plugins.sinks import CsvSink, JsonSink
from elspeth_core.plugins.sources import CsvSource, JsonSource, NullSource
from elspeth_core.plugins.transforms import (
    FieldMapper,
    JsonExplode,
    KeywordFilter,
    Passthrough,
    Truncate,
)

ENTRY_POINT_GROUP = "elspeth.plugins"
KINDS = ("source", "transform", "aggregation", "sink")
BUILTIN = "builtin"

# The method(s) that identify each kind when a plugin class does not declare ``kind``.
_KIND_METHODS: dict[str, tuple[str, ...]] = {
    "source": ("read",),
    "transform": ("process",),
    "aggregation": ("aggregate",),
    "sink": ("restore", "write", "flush", "finish", "close", "content_hash"),
}

_BUILTINS: tuple[tuple[str, type[Any]], ...] = (
    ("source", CsvSource),
    ("source", JsonSource),
    ("source", NullSource),
    ("transform", Passthrough),
    ("transform", FieldMapper),
    ("transform", Truncate),
    ("transform", KeywordFilter),
    ("transform", JsonExplode),
    ("transform", Pseudonymize),
    ("aggregation", BatchStats),
    ("aggregation", BatchReplicate),
    ("sink", CsvSink),
    ("sink", JsonSink),
    ("sink", DatabaseSink),
)


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One registered plugin: its kind, name, version and where it came from."""

    kind: str
    name: str
    version: str
    origin: str
    cls: type[Any]


class PluginRegistry:
    """Maps ``(kind, name)`` to a plugin class; build one with :meth:`builtin`."""

    def __init__(self) -> None:
        self._plugins: dict[tuple[str, str], PluginInfo] = {}

    @classmethod
    def builtin(cls, *, entry_points: bool = True) -> PluginRegistry:
        """A registry with every built-in plugin, plus installed third-party plugins.

        Args:
            entry_points: also load the ``elspeth.plugins`` entry points (default True).

        Raises:
            ConfigError: a third-party plugin cannot be loaded or clashes with another.
        """
        registry = cls()
        for kind, plugin in _BUILTINS:
            registry.register(plugin, kind=kind)
        if entry_points:
            registry.load_entry_points()
        return registry

    def register(
        self, plugin: type[Any], *, kind: str | None = None, origin: str = BUILTIN
    ) -> None:
        """Add a plugin class (its kind is inferred when not given).

        Raises:
            ConfigError: the class is not a valid plugin, or its name is already taken.
        """
        kind = kind or infer_kind(plugin)
        _check_plugin_class(plugin, kind)
        key = (kind, plugin.name)
        existing = self._plugins.get(key)
        if existing is not None and existing.cls is not plugin:
            raise ConfigError(
                f"{kind} plugin {plugin.name!r} from {origin} clashes with the one from "
                f"{existing.origin}"
            )
        self._plugins[key] = PluginInfo(kind, plugin.name, plugin.version, origin, plugin)

    def load_entry_points(
        self, entry_points: Iterable[importlib.metadata.EntryPoint] | None = None
    ) -> None:
        """Register the plugin classes named by the ``elspeth.plugins`` entry points.

        Args:
            entry_points: the entry points to load (default: the installed ones).

        Raises:
            ConfigError: an entry point cannot be imported or is not a plugin class.
        """
        if entry_points is None:
            entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        for entry_point in entry_points:
            origin = _origin(entry_point)
            try:
                plugin = entry_point.load()
            except Exception as exc:  # a broken third-party package: say which one
                raise ConfigError(
                    f"cannot load plugin entry point {entry_point.name!r} ({origin}): {exc}"
                ) from exc
            if not isinstance(plugin, type):
                raise ConfigError(
                    f"plugin entry point {entry_point.name!r} ({origin}) is not a class"
                )
            self.register(plugin, origin=origin)

    def get(self, kind: str, name: str) -> type[Any]:
        """The class registered as ``name`` for ``kind``.

        Raises:
            ConfigError: unknown kind or unknown plugin (the message lists the available ones).
        """
        _check_kind(kind)
        info = self._plugins.get((kind, name))
        if info is None:
            available = ", ".join(sorted(n for k, n in self._plugins if k == kind)) or "none"
            raise ConfigError(
                f"unknown {kind} plugin {name!r} (available: {available})", key="plugin"
            )
        return info.cls

    def create(self, kind: str, name: str, options: Mapping[str, Any] | None = None) -> Any:
        """Instantiate plugin ``name`` of ``kind`` with ``options`` (validated by the plugin)."""
        return self.get(kind, name)(options or {})

    def list(self) -> list[tuple[str, str, str, str]]:
        """``(kind, name, version, origin)`` for every plugin, by kind then name."""
        ordered = sorted(self._plugins.values(), key=lambda i: (KINDS.index(i.kind), i.name))
        return [(info.kind, info.name, info.version, info.origin) for info in ordered]

    def info(self, kind: str, name: str) -> PluginInfo:
        """Everything known about one registered plugin (see :meth:`get` for errors)."""
        self.get(kind, name)
        return self._plugins[(kind, name)]


def infer_kind(plugin: type[Any]) -> str:
    """A plugin's kind: its ``kind`` class attribute, else the protocol its methods satisfy.

    Raises:
        ConfigError: no kind, or the methods match several kinds.
    """
    declared = getattr(plugin, "kind", None)
    if isinstance(declared, str):
        _check_kind(declared)
        return declared
    matches = [
        kind
        for kind, methods in _KIND_METHODS.items()
        if all(callable(getattr(plugin, method, None)) for method in methods)
    ]
    if len(matches) != 1:
        found = "several: " + ", ".join(matches) if matches else "none"
        raise ConfigError(
            f"cannot tell which kind of plugin {plugin.__qualname__} is ({found}); "
            "give it a 'kind' class attribute"
        )
    return matches[0]


def _check_plugin_class(plugin: type[Any], kind: str) -> None:
    _check_kind(kind)
    where = f"{plugin.__module__}.{plugin.__qualname__}"
    if not isinstance(getattr(plugin, "name", None), str) or not plugin.name:
        raise ConfigError(f"plugin class {where} has no 'name'")
    if not isinstance(getattr(plugin, "version", None), str):
        raise ConfigError(f"plugin class {where} has no 'version'")
    model = getattr(plugin, "config_model", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigError(f"plugin class {where} has no pydantic 'config_model'")
    missing = [m for m in _KIND_METHODS[kind] if not callable(getattr(plugin, m, None))]
    if missing:
        raise ConfigError(f"{kind} plugin class {where} lacks {', '.join(missing)}()")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown plugin kind {kind!r} (expected one of {', '.join(KINDS)})")


def _origin(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    package = f"{dist.name} {dist.version}" if dist is not None else "entry point"
    return f"{package} ({entry_point.value})"
