"""Timestamps reach SQLite as the text SQLAlchemy's DATETIME would store, and read back in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, insert, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.types import TypeDecorator

from elspeth_core.landscape.schema import UTCDateTime

VALUES = [
    datetime(2026, 12, 6, 23, 40, 31, 213002, tzinfo=UTC),
    datetime(2026, 1, 1, tzinfo=UTC),  # microsecond 0 still prints six digits
    datetime(2026, 5, 5, 12, 0, 0, 7, tzinfo=timezone(timedelta(hours=5))),  # converted to UTC
    datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),  # a year below 1000 is zero-padded
    datetime(2026, 3, 4, 5, 6, 7, 8),  # naive: stored as given
    None,
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_sqlite_bind_text_is_sqlalchemys(value: object) -> None:
    dialect = sqlite.dialect()
    column_type = UTCDateTime()
    fast = column_type._cached_bind_processor(dialect)
    reference = TypeDecorator.bind_processor(column_type.dialect_impl(dialect), dialect)
    assert fast is not None and reference is not None
    assert fast(value) == reference(value)


def test_timestamps_round_trip_through_sqlite_as_utc() -> None:
    table = Table(
        "t", MetaData(), Column("id", Integer, primary_key=True), Column("at", UTCDateTime)
    )
    engine = create_engine("sqlite://")
    table.metadata.create_all(engine)
    aware = datetime(2026, 5, 5, 12, 0, 0, 7, tzinfo=timezone(timedelta(hours=5)))
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": 1, "at": aware}])
        stored = conn.exec_driver_sql("SELECT at FROM t").scalar_one()
        read = conn.execute(select(table.c.at)).scalar_one()
    assert stored == "2026-05-05 07:00:00.000007"
    assert read == aware and read.tzinfo == UTC
