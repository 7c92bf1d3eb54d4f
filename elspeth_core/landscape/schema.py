"""The landscape's tables, and nothing else (SQLAlchemy Core metadata).

Operators query these tables directly (the runbooks do), so names are part of the product's
contract: see SPEC §3. Every write goes through ``recorder``; every read through ``queries``.
Migrations in ``migrations/`` must produce exactly this metadata (a test compares them).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def bind_processor(self, dialect: Any) -> Any:
        """On SQLite, datetimes become their stored text with one C call (``isoformat``) instead of
        SQLAlchemy's %-formatting, which cost about 3 % of a run (a timestamp per source row).
        The text is the one SQLAlchemy's SQLite DATETIME stores (``YYYY-MM-DD HH:MM:SS.ffffff``,
        UTC); anything but a datetime goes through the default processor."""
        default = super().bind_processor(dialect)
        if dialect.name != "sqlite" or default is None:
            return default

        def process(value: Any) -> Any:
            if type(value) is datetime:
                return self.process_bind_param(value, dialect).isoformat(" ", "microseconds")
            return default(value)

        return process

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

ID = String(40)
HASH = String(64)


def _ts(name: str, nullable: bool = False) -> Column:
    return Column(name, UTCDateTime(), nullable=nullable)


runs = Table(
    "runs",
    metadata,
    Column("run_id", ID, primary_key=True),
    Column("status", String(16), nullable=False),
    _ts("started_at"),
    _ts("completed_at", True),
    Column("config_hash", HASH, nullable=False),
    Column("topology_hash", HASH, nullable=False),
    Column("settings_json", Text, nullable=False),
    Column("settings_path", Text, nullable=True),
    Column("canonical_version", String(32), nullable=False),
    Column("source_rows_ingested", BigInteger, nullable=False, server_default=text("0")),
    Column("source_exhausted", Boolean, nullable=False, server_default=text("false")),
    # Where the source stood after ``source_rows_ingested`` rows (byte offset, line, SHA-256 of
    # the bytes before it), for sources that can seek: a resume checks one digest over that
    # prefix instead of re-hashing every recorded row. NULL: verify row by row.
    Column("source_position_json", Text, nullable=True),
    Column("lease_owner", String(200), nullable=True),
    _ts("lease_expires_at", True),
    _ts("heartbeat_at", True),
    Column("prefect_flow_run_id", String(64), nullable=True, index=True),
    Column("superseded_by", ID, nullable=True),
    Column("error", Text, nullable=True),
)

run_attempts = Table(
    "run_attempts",
    metadata,
    Column("run_id", ID, ForeignKey("runs.run_id"), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("kind", String(16), nullable=False),  # run | resume
    Column("status", String(16), nullable=False),
    Column("lease_owner", String(200), nullable=False),
    Column("prefect_flow_run_id", String(64), nullable=True),
    Column("rows_before", BigInteger, nullable=False),
    _ts("started_at"),
    _ts("ended_at", True),
    Column("error", Text, nullable=True),
)

nodes = Table(
    "nodes",
    metadata,
    Column("run_id", ID, ForeignKey("runs.run_id"), primary_key=True),
    Column("node_id", String(80), primary_key=True),
    Column("node_type", String(16), nullable=False),
    Column("name", String(200), nullable=False),
    Column("plugin_name", String(100), nullable=False),
    Column("plugin_version", String(32), nullable=False),
    Column("config_hash", HASH, nullable=False),
    Column("config_json", Text, nullable=False),
    Column("sequence", Integer, nullable=False),
)

edges = Table(
    "edges",
    metadata,
    Column("run_id", ID, ForeignKey("runs.run_id"), primary_key=True),
    Column("edge_id", String(200), primary_key=True),
    Column("from_node_id", String(80), nullable=False),
    Column("to_node_id", String(80), nullable=False),
    Column("label", String(100), nullable=False),
    Column("mode", String(16), nullable=False),  # move | copy
)

rows = Table(
    "rows",
    metadata,
    Column("row_id", ID, primary_key=True),
    Column("run_id", ID, ForeignKey("runs.run_id"), nullable=False),
    Column("source_node_id", String(80), nullable=False),
    Column("row_index", BigInteger, nullable=False),
    Column("source_data_hash", HASH, nullable=False),
    Column("source_data_ref", Text, nullable=True),
    _ts("created_at"),
    UniqueConstraint("run_id", "row_index", name="uq_rows_run_id_row_index"),
)

tokens = Table(
    "tokens",
    metadata,
    Column("token_id", ID, primary_key=True),
    Column("row_id", ID, ForeignKey("rows.row_id"), nullable=False, index=True),
    Column("run_id", ID, nullable=False, index=True),
    Column("branch_name", String(100), nullable=True),
    Column("fork_group_id", ID, nullable=True),
    Column("join_group_id", ID, nullable=True),
    Column("expand_group_id", ID, nullable=True),
    Column("step_index", Integer, nullable=False, server_default=text("0")),
)

token_parents = Table(
    "token_parents",
    metadata,
    Column("token_id", ID, ForeignKey("tokens.token_id"), primary_key=True),
    Column("parent_token_id", ID, ForeignKey("tokens.token_id"), primary_key=True),
    Column("ordinal", Integer, nullable=False),
    Index("ix_token_parents_parent", "parent_token_id"),
)

node_states = Table(
    "node_states",
    metadata,
    Column("state_id", String(48), primary_key=True),
    Column("run_id", ID, nullable=False),
    Column("token_id", ID, nullable=False),
    Column("node_id", String(80), nullable=False),
    Column("step_index", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # completed | failed
    Column("input_hash", HASH, nullable=False),
    Column("output_hash", HASH, nullable=True),
    Column("duration_ms", Float, nullable=False),
    Column("error_json", Text, nullable=True),
    Index("ix_node_states_token", "token_id"),
)

routing_events = Table(
    "routing_events",
    metadata,
    Column("event_id", String(48), primary_key=True),
    Column("run_id", ID, nullable=False),
    Column("state_id", String(48), nullable=False),
    Column("token_id", ID, nullable=False),
    Column("node_id", String(80), nullable=False),
    Column("edge_label", String(100), nullable=False),
    Column("destination", String(200), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("reason_json", Text, nullable=False),
    Index("ix_routing_events_token", "token_id"),
)

token_outcomes = Table(
    "token_outcomes",
    metadata,
    Column("outcome_id", String(48), primary_key=True),
    Column("run_id", ID, nullable=False),
    Column("token_id", ID, nullable=False),
    Column("outcome", String(24), nullable=False),
    Column("is_terminal", Boolean, nullable=False),
    Column("sink_name", String(200), nullable=True),
    Column("sink_line", BigInteger, nullable=True),
    Column("batch_id", ID, nullable=True),
    Column("fork_group_id", ID, nullable=True),
    Column("join_group_id", ID, nullable=True),
    Column("expand_group_id", ID, nullable=True),
    Column("error_hash", HASH, nullable=True),
    Column("reason", Text, nullable=True),
    _ts("recorded_at"),
    Index("ix_token_outcomes_token", "token_id"),
    Index(
        "uq_token_outcomes_terminal",
        "token_id",
        unique=True,
        sqlite_where=text("is_terminal = 1"),
        postgresql_where=text("is_terminal"),
    ),
    Index("ix_token_outcomes_sink_line", "run_id", "sink_name", "sink_line"),
)

batches = Table(
    "batches",
    metadata,
    Column("batch_id", ID, primary_key=True),
    Column("run_id", ID, nullable=False, index=True),
    Column("aggregation_node_id", String(80), nullable=False),
    Column("aggregation_name", String(200), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # draft | executing | completed | failed
    Column("trigger_type", String(24), nullable=True),
    Column("trigger_reason", Text, nullable=True),
    Column("retry_of_batch_id", ID, nullable=True),
    Column("error", Text, nullable=True),
    _ts("created_at"),
    _ts("completed_at", True),
    # explain: the retries of a batch (attempt + 1 points back at the failed attempt)
    Index("ix_batches_retry_of", "retry_of_batch_id"),
)

batch_members = Table(
    "batch_members",
    metadata,
    Column("batch_id", ID, ForeignKey("batches.batch_id"), primary_key=True),
    Column("token_id", ID, primary_key=True),
    Column("ordinal", Integer, nullable=False),
    Column("data_ref", Text, nullable=True),
    Column("data_hash", HASH, nullable=True),
    Index("ix_batch_members_token", "token_id"),
)

batch_outputs = Table(
    "batch_outputs",
    metadata,
    Column("batch_id", ID, ForeignKey("batches.batch_id"), primary_key=True),
    Column("token_id", ID, primary_key=True),
    Column("ordinal", Integer, nullable=False),
    # explain: which batch produced a token
    Index("ix_batch_outputs_token", "token_id"),
)

artifacts = Table(
    "artifacts",
    metadata,
    Column("artifact_id", ID, primary_key=True),
    Column("run_id", ID, nullable=False),
    Column("sink_node_id", String(80), nullable=False),
    Column("sink_name", String(200), nullable=False),
    Column("path_or_uri", Text, nullable=False),
    Column("content_hash", HASH, nullable=True),
    Column("size_bytes", BigInteger, nullable=False),
    Column("rows_written", BigInteger, nullable=False),
    Column("publication_json", Text, nullable=False),
    _ts("updated_at"),
    UniqueConstraint("run_id", "sink_name", name="uq_artifacts_run_id_sink_name"),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("checkpoint_id", ID, primary_key=True),
    Column("run_id", ID, nullable=False, index=True),
    Column("row_id", ID, nullable=True),
    Column("token_id", ID, nullable=True),
    Column("node_id", String(80), nullable=True),
    Column("sequence_number", BigInteger, nullable=False),
    Column("rows_ingested", BigInteger, nullable=False),
    Column("aggregation_state_json", Text, nullable=True),
    Column("topology_hash", HASH, nullable=False),
    Column("config_hash", HASH, nullable=False),
    Column("format_version", Integer, nullable=False),
    _ts("created_at"),
)

validation_errors = Table(
    "validation_errors",
    metadata,
    Column("error_id", ID, primary_key=True),
    Column("run_id", ID, nullable=False, index=True),
    Column("node_id", String(80), nullable=False),
    Column("row_id", ID, nullable=True),
    Column("row_index", BigInteger, nullable=False),
    Column("row_hash", HASH, nullable=True),
    Column("row_data_json", Text, nullable=True),
    Column("reason", Text, nullable=False),
    Column("destination", String(200), nullable=False),
    _ts("created_at"),
    # explain: why a row was quarantined
    Index("ix_validation_errors_row", "row_id"),
)

transform_errors = Table(
    "transform_errors",
    metadata,
    Column("error_id", ID, primary_key=True),
    Column("run_id", ID, nullable=False, index=True),
    Column("token_id", ID, nullable=False),
    Column("node_id", String(80), nullable=False),
    Column("row_hash", HASH, nullable=True),
    Column("error_json", Text, nullable=False),
    Column("destination", String(200), nullable=False),
    _ts("created_at"),
    # explain: a token's transform failures
    Index("ix_transform_errors_token", "token_id"),
)
