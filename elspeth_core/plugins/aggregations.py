"""Built-in aggregations: ``batch_stats`` and ``batch_replicate``.

An aggregation receives one batch's member rows (in ordinal order) and the batch's output mode and
returns the output rows; the engine owns buffering, triggers, batch records and the output-count
checks. Aggregations are pure functions of their input: they keep no state between batches (a
retried batch must give the same output), never mutate member rows, never import SQLAlchemy and
never touch the landscape.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field

from elspeth_core.errors import PluginError
from elspeth_core.plugins.protocols import PluginConfig, Row, validated_options

OUTPUT_MODES = ("single", "passthrough", "transform")


class BatchStatsOptions(PluginConfig):
    value_field: str = Field(min_length=1)
    group_by: str | None = None
    compute_mean: bool = True


class BatchReplicateOptions(PluginConfig):
    copies_field: str | None = None
    default_copies: int = Field(default=1, ge=0)
    include_copy_index: bool = False


class _Aggregation:
    version: ClassVar[str] = "1.0.0"
    config_model: ClassVar[type[PluginConfig]] = PluginConfig

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.config = validated_options(self.config_model, options)


class BatchStats(_Aggregation):
    """Count, sum and mean of ``value_field`` over a batch.

    ``count`` counts members whose value is numeric (numbers, or strings that parse as finite
    numbers; booleans, nulls, NaN and Infinity are skipped); ``sum`` is their exactly rounded float
    sum (``math.fsum``: independent of member order); ``mean`` is ``sum / count`` or ``None`` when
    nothing counted. ``group_by`` copies that field's value from the first member.
    """

    name: ClassVar[str] = "batch_stats"
    config_model: ClassVar[type[PluginConfig]] = BatchStatsOptions
    config: BatchStatsOptions

    def aggregate(self, rows: list[Row], output_mode: str) -> list[Row]:
        _check_mode(output_mode)
        stats = self._stats(rows)
        if output_mode != "passthrough":
            return [stats]
        extra = {f"batch_{key}": stats[key] for key in ("count", "sum", "mean") if key in stats}
        return [{**row, **extra} for row in rows]

    def _stats(self, rows: list[Row]) -> Row:
        values = [
            v for v in (_number(row.get(self.config.value_field)) for row in rows) if v is not None
        ]
        total = math.fsum(values)
        stats: Row = {"count": len(values), "sum": total, "batch_size": len(rows)}
        if self.config.compute_mean:
            stats["mean"] = total / len(values) if values else None
        if self.config.group_by is not None:
            stats[self.config.group_by] = rows[0].get(self.config.group_by) if rows else None
        return stats


class BatchReplicate(_Aggregation):
    """Emits each member ``copies`` times (``transform`` mode), with ``copy_index`` when asked.

    ``copies`` is the member's ``copies_field`` when it holds an integer (or an integer string),
    else ``default_copies``; a negative count is an error. ``passthrough`` mode returns each member
    with a ``copies`` field added; ``single`` mode cannot express replication and is refused.
    """

    name: ClassVar[str] = "batch_replicate"
    config_model: ClassVar[type[PluginConfig]] = BatchReplicateOptions
    config: BatchReplicateOptions

    def aggregate(self, rows: list[Row], output_mode: str) -> list[Row]:
        _check_mode(output_mode)
        if output_mode == "single":
            raise PluginError(
                "batch_replicate emits several rows per member: use output_mode 'transform' "
                "(or 'passthrough' to only annotate members with their copy count)"
            )
        if output_mode == "passthrough":
            return [{**row, "copies": self._copies(row)} for row in rows]
        return [copy_ for row in rows for copy_ in self._replicate(row)]

    def _replicate(self, row: Row) -> list[Row]:
        copies = []
        for index in range(self._copies(row)):
            # Each copy becomes its own token: no shared mutable values between copies.
            duplicate = copy.deepcopy(row)
            if self.config.include_copy_index:
                duplicate["copy_index"] = index
            copies.append(duplicate)
        return copies

    def _copies(self, row: Row) -> int:
        if self.config.copies_field is None:
            return self.config.default_copies
        count = _integer(row.get(self.config.copies_field))
        if count is None:
            return self.config.default_copies
        if count < 0:
            raise PluginError(
                f"field {self.config.copies_field!r} asks for {count} copies (must be >= 0)"
            )
        return count


def _check_mode(output_mode: str) -> None:
    if output_mode not in OUTPUT_MODES:
        raise PluginError(
            f"unknown output_mode {output_mode!r} (expected one of {', '.join(OUTPUT_MODES)})"
        )


def _number(value: Any) -> float | None:
    """A finite float from a number or numeric string; ``None`` for anything else."""
    if value is None or isinstance(value, bool):
        return None
    if not isinstance(value, int | float | str):
        return None
    try:
        result = float(value)
    except (ValueError, OverflowError):
        return None
    return result if math.isfinite(result) else None


def _integer(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None
