"""Resume verifies what was ingested with one digest over the source's bytes, then seeks there.

Unit level: the CSV source's ``position`` after any record is a byte offset from which
``read(start=...)`` yields exactly the records a continuous read yields next (BOM, Latin-1,
``skip_rows``, quoted fields over several lines, CRLF, blank and malformed lines), and
``verify_prefix`` accepts the file's own prefix digest only.

Through the CLI: a run SIGKILLed mid-way records its position with every commit; the resume
takes the digest path (its log says so), and ends byte-identical to a crash-free run. A change
in the ingested bytes that leaves the rows the same (LF -> CRLF) falls back to the row-by-row
check and still resumes; a change to a recorded row's value is refused as "Source changed".
The CLI tests run on both landscape backends (SQLite and PostgreSQL).
"""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import pytest

from elspeth_core.plugins.source_position import seekable_encoding
from elspeth_core.plugins.sources import CsvSource
from tests.support.cli import assert_landscape_invariants, query, run_cli, run_ids, write_settings
from tests.support.landscape_fixtures import Landscapes
from tests.support.pipelines import make_csv, outputs, pipeline

TRICKY = (
    "preamble line\r\n"
    "id,note,amount\r\n"
    '1,"caf\u00e9, cr\u00e8me",1.5\r\n'
    "\r\n"
    '2,"two\r\nlines",2\r\n'
    '3,"bad"quote,3\r\n'
    "4,short\r\n"
    "5,\u00fcber,5\r\n"
    "6,last,6"
)


def _source(path: Path, encoding: str, **options: object) -> CsvSource:
    return CsvSource(
        {"path": str(path), "encoding": encoding, "schema": {"fields": "dynamic"}, **options}
    )


@pytest.mark.parametrize(
    ("encoding", "bom"), [("utf-8", b""), ("utf-8", b"\xef\xbb\xbf"), ("latin-1", b"")]
)
def test_reading_from_any_recorded_position_continues_exactly(
    tmp_path: Path, encoding: str, bom: bytes
) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(bom + TRICKY.encode(encoding))
    source = _source(path, encoding, skip_rows=1)
    assert source.seekable
    records, positions = [], []
    for record in source.read():
        records.append(record)
        positions.append(source.position)
    assert len(records) == 6  # 3 good rows, a malformed quote, a short row, and two more
    data = path.read_bytes()
    for index, position in enumerate(positions):
        assert position is not None
        offset, _line = position
        # The offset is a record boundary in the file's bytes.
        assert data[:offset].endswith(b"\r\n") or offset == len(data)
        again = _source(path, encoding, skip_rows=1)
        assert list(again.read(start=position)) == records[index + 1 :]
        digest = hashlib.sha256(data[:offset]).hexdigest()
        assert again.prefix_digest(offset) == digest
        assert _source(path, encoding).verify_prefix(offset, digest)
        assert not _source(path, encoding).verify_prefix(offset, "0" * 64)
    assert not _source(path, encoding).verify_prefix(len(data) + 1, "0" * 64)  # shorter file


def test_line_numbers_in_reasons_survive_a_seek(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text(TRICKY, encoding="utf-8", newline="")
    source = _source(path, "utf-8", skip_rows=1)
    reader = source.read()
    first = next(reader)
    assert first["id"] == "1"
    after_first = source.position
    reader.close()
    reasons = [getattr(r, "reason", None) for r in _source(path, "utf-8", skip_rows=1).read()]
    seeked = [
        getattr(r, "reason", None)
        for r in _source(path, "utf-8", skip_rows=1).read(start=after_first)
    ]
    assert seeked == reasons[1:]
    assert any(reason and reason.startswith("line 7:") for reason in seeked)


def test_encodings_that_cannot_seek_are_not_offered_a_position() -> None:
    assert seekable_encoding("utf-8") and seekable_encoding("latin-1")
    assert seekable_encoding("cp1252")
    for encoding in ("utf-16", "utf-32", "utf-7", "iso2022_jp"):
        assert not seekable_encoding(encoding), encoding


ROWS = 6_000


def _crashed_run(work: Path, source: Path, landscape: str) -> tuple[Path, str]:
    settings = write_settings(
        work / "settings.yaml", pipeline(work, source, interval=100, landscape=landscape)
    )
    crashed = run_cli(
        "run",
        "-s",
        str(settings),
        "-x",
        cwd=work,
        env={"ELSPETH_FAULT_INJECT": "source_read:4500"},
    )
    assert crashed.code == -signal.SIGKILL, crashed.stderr
    (run_id,) = run_ids(landscape)
    return settings, run_id


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, landscapes: Landscapes) -> dict:
    work = tmp_path_factory.mktemp("reference")
    source = make_csv(work / "in.csv", ROWS, seed=13)
    data = pipeline(work, source, interval=100, landscape=landscapes.new(work))
    settings = write_settings(work / "settings.yaml", data)
    assert run_cli("run", "-s", str(settings), "-x", cwd=work).code == 0
    return outputs(work)


def _resume(work: Path, run_id: str, db: str) -> tuple[int, str]:
    result = run_cli("--verbose", "resume", run_id, "-d", db, "-x", cwd=work)
    return result.code, result.stderr


def test_resume_checks_one_digest_and_ends_identical(
    tmp_path: Path, reference: dict, landscape_url: str
) -> None:
    source = make_csv(tmp_path / "in.csv", ROWS, seed=13)
    _settings, run_id = _crashed_run(tmp_path, source, landscape_url)
    db = landscape_url
    [(ingested, position)] = query(
        db, "SELECT source_rows_ingested, source_position_json FROM runs"
    )
    assert 0 < ingested < ROWS and position is not None
    assert f'"rows":{ingested}' in position

    code, stderr = _resume(tmp_path, run_id, db)

    assert code == 0, stderr
    assert f"the {ingested} recorded rows verified by one digest" in stderr
    assert outputs(tmp_path) == reference
    assert_landscape_invariants(db, run_id, ROWS)


def test_same_rows_in_other_bytes_fall_back_to_the_row_check(
    tmp_path: Path, reference: dict, landscape_url: str
) -> None:
    source = make_csv(tmp_path / "in.csv", ROWS, seed=13)
    _settings, run_id = _crashed_run(tmp_path, source, landscape_url)
    before = source.read_bytes()
    after = before.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert after != before  # the ingested bytes change, their rows do not
    source.write_bytes(after)

    code, stderr = _resume(tmp_path, run_id, landscape_url)

    assert code == 0, stderr
    assert "verified by one digest" not in stderr
    assert outputs(tmp_path) == reference
    assert_landscape_invariants(landscape_url, run_id, ROWS)


def test_a_changed_recorded_value_is_still_refused(tmp_path: Path, landscape_url: str) -> None:
    source = make_csv(tmp_path / "in.csv", ROWS, seed=13)
    _settings, run_id = _crashed_run(tmp_path, source, landscape_url)
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[10] = lines[10].replace(",", ",9", 1)
    source.write_text("".join(lines), encoding="utf-8")

    code, stderr = _resume(tmp_path, run_id, landscape_url)

    assert code == 3, stderr
    assert "Source changed" in stderr and "row 9 differs" in stderr
