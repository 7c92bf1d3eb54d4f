"""The batch life cycle in the landscape (plan API), on a real landscape of each backend.

``get_incomplete_batches`` is recovery's work list (draft, executing and failed batches, oldest
first); ``retry_batch`` turns a failed batch into attempt + 1 with the same members in the same
order, and refuses anything else.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from elspeth_core.errors import LandscapeError
from elspeth_core.landscape import LandscapeDB, LandscapeRecorder
from elspeth_core.landscape.recorder import BATCH_STATUSES
from tests.support.cli import query

RUN = "run-a"
OTHER_RUN = "run-b"
NODE = "aggregation-window-0123456789ab"


@pytest.fixture
def db_path(landscape_url: str) -> str:
    return landscape_url


@pytest.fixture
def recorder(db_path: str) -> Iterator[LandscapeRecorder]:
    db = LandscapeDB(db_path)
    yield LandscapeRecorder(db)
    db.close()


def _batch(recorder: LandscapeRecorder, status: str, *, run_id: str = RUN, members: int = 3) -> str:
    batch_id = recorder.create_batch(run_id, NODE, "window")
    for ordinal in range(members):
        recorder.add_batch_member(batch_id, f"{batch_id}-tok{ordinal}", ordinal)
    if status != "draft":
        recorder.update_batch_status(
            batch_id,
            "executing",
            trigger_type="count",
            trigger_reason=f"batch_count {members} >= {members}",
        )
    if status in ("completed", "failed"):
        recorder.update_batch_status(batch_id, status, error="boom" if status == "failed" else None)
    return batch_id


def _ids(batches: list[dict]) -> list[str]:
    return [b["batch_id"] for b in batches]


def test_a_new_batch_is_a_draft_at_attempt_one(recorder: LandscapeRecorder) -> None:
    batch_id = recorder.create_batch(RUN, NODE, "window")
    batch = recorder.get_batch(batch_id)
    assert batch is not None
    assert (batch["status"], batch["attempt"], batch["aggregation_node_id"]) == ("draft", 1, NODE)
    assert batch["retry_of_batch_id"] is None
    assert recorder.get_batch("no-such-batch") is None


def test_members_come_back_in_ordinal_order(recorder: LandscapeRecorder) -> None:
    batch_id = recorder.create_batch(RUN, NODE, "window")
    for ordinal in (2, 0, 3, 1):
        recorder.add_batch_member(batch_id, f"tok{ordinal}", ordinal)
    members = recorder.get_batch_members(batch_id)
    assert [(m["token_id"], m["ordinal"]) for m in members] == [
        ("tok0", 0),
        ("tok1", 1),
        ("tok2", 2),
        ("tok3", 3),
    ]


def test_status_moves_along_and_records_trigger_and_completion(
    recorder: LandscapeRecorder,
) -> None:
    batch_id = _batch(recorder, "draft")
    recorder.update_batch_status(
        batch_id,
        "executing",
        trigger_type="condition",
        trigger_reason="condition true: batch_count >= 3",
    )
    executing = recorder.get_batch(batch_id)
    assert executing is not None
    assert executing["status"] == "executing"
    assert executing["trigger_type"] == "condition"
    assert executing["completed_at"] is None
    recorder.update_batch_status(batch_id, "completed")
    completed = recorder.get_batch(batch_id)
    assert completed is not None
    assert completed["status"] == "completed"
    assert completed["completed_at"] is not None
    assert completed["trigger_reason"] == "condition true: batch_count >= 3"


def test_status_updates_refuse_unknown_statuses_and_missing_batches(
    recorder: LandscapeRecorder,
) -> None:
    batch_id = _batch(recorder, "draft")
    with pytest.raises(ValueError, match="unknown batch status 'done'"):
        recorder.update_batch_status(batch_id, "done")
    with pytest.raises(LandscapeError, match="batch not found: nope"):
        recorder.update_batch_status("nope", "failed")


def test_incomplete_batches_are_draft_executing_and_failed_oldest_first(
    recorder: LandscapeRecorder,
) -> None:
    created = {status: [] for status in BATCH_STATUSES}
    order = ["failed", "completed", "draft", "executing", "completed", "failed", "draft"]
    everything = []
    for status in order:
        batch_id = _batch(recorder, status)
        created[status].append(batch_id)
        everything.append(batch_id)
    _batch(recorder, "draft", run_id=OTHER_RUN)
    _batch(recorder, "failed", run_id=OTHER_RUN)

    incomplete = recorder.get_incomplete_batches(RUN)
    assert _ids(incomplete) == [b for b in everything if b not in created["completed"]]
    assert {b["status"] for b in incomplete} == {"draft", "executing", "failed"}
    assert all(b["run_id"] == RUN for b in incomplete)
    assert _ids(recorder.get_batches(RUN)) == everything
    for status in BATCH_STATUSES:
        assert _ids(recorder.get_batches(RUN, status=status)) == created[status]


def test_a_run_with_only_completed_batches_has_no_incomplete_ones(
    recorder: LandscapeRecorder,
) -> None:
    _batch(recorder, "completed")
    _batch(recorder, "completed")
    assert recorder.get_incomplete_batches(RUN) == []
    assert recorder.get_incomplete_batches("never-ran") == []


def test_retry_batch_makes_attempt_plus_one_with_the_same_members_in_order(
    recorder: LandscapeRecorder, db_path: str
) -> None:
    failed = recorder.create_batch(RUN, NODE, "window")
    # Ordinals deliberately not in token-ID order: the copy must follow the ordinals.
    for token, ordinal in (("t-c", 0), ("t-a", 1), ("t-d", 2), ("t-b", 3)):
        recorder.add_batch_member(failed, token, ordinal)
    recorder.update_batch_status(
        failed, "executing", trigger_type="count", trigger_reason="batch_count 4 >= 4"
    )
    recorder.update_batch_status(failed, "failed", error="process died while executing")

    retry = recorder.retry_batch(failed)

    assert retry != failed
    original, copy = recorder.get_batch(failed), recorder.get_batch(retry)
    assert original is not None and copy is not None
    assert original["status"] == "failed"  # the failed attempt stays on record
    assert (copy["status"], copy["attempt"], copy["retry_of_batch_id"]) == ("draft", 2, failed)
    assert (copy["aggregation_node_id"], copy["aggregation_name"]) == (NODE, "window")
    assert (copy["trigger_type"], copy["trigger_reason"]) == ("count", "batch_count 4 >= 4")
    members = [(m["token_id"], m["ordinal"]) for m in recorder.get_batch_members(retry)]
    assert members == [("t-c", 0), ("t-a", 1), ("t-d", 2), ("t-b", 3)]
    assert _ids(recorder.get_incomplete_batches(RUN)) == [failed, retry]
    assert query(db_path, f"SELECT count(*) FROM batch_members WHERE batch_id = '{failed}'") == [
        (4,)
    ]


def test_a_failed_retry_is_retried_again_as_attempt_three(recorder: LandscapeRecorder) -> None:
    first = _batch(recorder, "failed")
    second = recorder.retry_batch(first)
    recorder.update_batch_status(second, "executing")
    recorder.update_batch_status(second, "failed", error="process died while executing")
    third = recorder.retry_batch(second)
    batch = recorder.get_batch(third)
    assert batch is not None
    assert (batch["attempt"], batch["retry_of_batch_id"]) == (3, second)
    assert [m["token_id"] for m in recorder.get_batch_members(third)] == [
        f"{first}-tok0",
        f"{first}-tok1",
        f"{first}-tok2",
    ]


def test_retry_batch_refuses_a_missing_batch(recorder: LandscapeRecorder, db_path: str) -> None:
    _batch(recorder, "failed")
    with pytest.raises(LandscapeError, match="batch not found: 0000-missing") as raised:
        recorder.retry_batch("0000-missing")
    assert raised.value.context.get("batch_id") == "0000-missing"
    assert query(db_path, "SELECT count(*) FROM batches") == [(1,)]


@pytest.mark.parametrize("status", ["draft", "executing", "completed"])
def test_retry_batch_refuses_a_batch_that_is_not_failed(
    recorder: LandscapeRecorder, db_path: str, status: str
) -> None:
    batch_id = _batch(recorder, status)
    with pytest.raises(LandscapeError, match=f"is {status}, only a failed batch can be retried"):
        recorder.retry_batch(batch_id)
    assert query(db_path, "SELECT count(*) FROM batches") == [(1,)]
    assert query(db_path, "SELECT count(*) FROM batch_members") == [(3,)]
    batch = recorder.get_batch(batch_id)
    assert batch is not None and batch["status"] == status


def test_executing_batches_of_a_dead_process_are_marked_failed(
    recorder: LandscapeRecorder,
) -> None:
    executing = _batch(recorder, "executing")
    draft = _batch(recorder, "draft")
    other = _batch(recorder, "executing", run_id=OTHER_RUN)
    with recorder.db.begin() as conn:
        marked = recorder.fail_executing_batches(RUN, conn, "process died while executing")
    assert marked == [executing]
    statuses = {b: (recorder.get_batch(b) or {})["status"] for b in (executing, draft, other)}
    assert statuses == {executing: "failed", draft: "draft", other: "executing"}
