"""Row identity on resume, through the real ``elspeth`` CLI in subprocesses.

A row is identified by its position in the source (``row_index``, unique per run); its ``row_id``
is minted when it is first read. Resume re-reads the source and compares it with the recorded
rows position by position, by hash. So the only way the recorded rows and the source can disagree
is a position whose content differs — "Source changed", naming that position — even when the
differing row is a copy of a row recorded at another position. Identical content at two
positions is two rows (two row IDs), never a duplicate identity.

Runs are SIGKILLed after their fifth commit (``ELSPETH_FAULT_INJECT=after_commit:5``): with
``checkpoint_interval: 100`` that leaves 400 of the 1,000 rows read. Every test runs on both
landscape backends (SQLite and PostgreSQL).
"""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path
from typing import Any

from tests.support.cli import assert_landscape_invariants, query, url_query
from tests.support.pipelines import (
    csv_sink,
    make_csv,
    only_run,
    pipeline,
    read_csv,
    resume,
    run_pipeline,
)

ROWS = 1_000
READ_AT_CRASH = 400


def _crash(work: Path, db: str) -> tuple[str, Path]:
    source = make_csv(work / "in.csv", ROWS)
    data = pipeline(work, source, sinks={"out": csv_sink(work, "out")}, landscape=db)
    result = run_pipeline(work, data, env={"ELSPETH_FAULT_INJECT": "after_commit:5"})
    assert result.code == -signal.SIGKILL, (result.code, result.stderr)
    assert query(db, "SELECT count(*) FROM rows") == [(READ_AT_CRASH,)]
    return only_run(db), source


def _copy_line(source: Path, row: int, before: int) -> None:
    """Insert a copy of data row ``row`` before data row ``before`` (0-based, after the header)."""
    lines = source.read_bytes().split(b"\n")
    assert lines[row + 1].startswith(b"%d," % row)
    lines.insert(before + 1, lines[row + 1])
    source.write_bytes(b"\n".join(lines))


def _snapshot(work: Path, db: str) -> dict[str, Any]:
    """The landscape at ``db`` (row counts, the run) and the hash of every file of ``work``."""
    state: dict[str, Any] = {
        table: url_query(db, f"SELECT count(*) FROM {table}")[0][0]
        for table in ("rows", "tokens", "token_outcomes", "run_attempts", "checkpoints")
    }
    state["runs"] = url_query(
        db, "SELECT status, lease_owner, source_rows_ingested FROM runs ORDER BY run_id"
    )
    for path in sorted(work.rglob("*")):
        if path.is_file() and not path.name.startswith("audit.db"):
            state[str(path.relative_to(work))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def test_a_recorded_row_copied_to_another_read_position_is_source_changed(
    tmp_path: Path, landscape_url: str
) -> None:
    db = landscape_url
    run_id, source = _crash(tmp_path, db)
    _copy_line(source, 3, before=4)  # row 3's content now also at position 4 (and all shift)
    before = _snapshot(tmp_path, db)
    result = resume(tmp_path, run_id, landscape=db)
    assert result.code == 3, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    reason, hint = result.stderr.strip().splitlines()
    assert reason.startswith(f"Error: Source changed since run {run_id} read it: row 4 differs")
    assert hint.startswith("Hint: ") and "--force-new" in hint
    assert _snapshot(tmp_path, db) == before


def test_identical_content_at_an_unread_position_is_a_new_row(
    tmp_path: Path, landscape_url: str
) -> None:
    db = landscape_url
    run_id, source = _crash(tmp_path, db)
    _copy_line(source, 3, before=700)  # past the 400 rows read: a new, legitimate row
    resumed = resume(tmp_path, run_id, landscape=db)
    assert resumed.code == 0, resumed.stderr
    assert_landscape_invariants(db, run_id, ROWS + 1)
    copies = query(
        db,
        "SELECT row_id, row_index, source_data_hash FROM rows WHERE source_data_hash = "
        "(SELECT source_data_hash FROM rows WHERE row_index = 3) ORDER BY row_index",
    )
    assert [index for _id, index, _hash in copies] == [3, 700]
    assert copies[0][0] != copies[1][0]  # two rows, two identities
    written = [row["id"] for row in read_csv(tmp_path / "out" / "out.csv")]
    assert len(written) == ROWS + 1
    assert written.count("3") == 2
