"""File sinks: formats, the publication life cycle, and exactly-once publication across crashes."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elspeth_core.errors import ConfigError, SinkError
from elspeth_core.plugins.protocols import Publication, Row
from elspeth_core.plugins.sinks import CsvSink, JsonSink

RUN = "run-1"
Sink = CsvSink | JsonSink
S = TypeVar("S", CsvSink, JsonSink)


def opened(sink: S, publication: Publication | None = None) -> S:
    sink.restore(publication, run_id=RUN)
    return sink


def round_trip(publication: Publication) -> Publication:
    """What the landscape gives back: the publication through JSON."""
    data = json.loads(json.dumps(_as_dict(publication)))
    return Publication(data["uri"], data["rows"], data["size_bytes"], data["state"])


def _as_dict(publication: Publication) -> dict[str, Any]:
    return {
        "uri": publication.uri,
        "rows": publication.rows,
        "size_bytes": publication.size_bytes,
        "state": publication.state,
    }


# -- CSV -----------------------------------------------------------------------------------------


def test_csv_header_once_fields_in_first_row_order(tmp_path: Path) -> None:
    path = tmp_path / "out" / "result.csv"  # the directory is created
    sink = opened(CsvSink({"path": str(path)}))
    sink.write([{"b": 1, "a": "x,y"}])
    sink.write([{"a": 'say "hi"', "b": None}, {"a": "multi\nline"}])
    publication = sink.finish()
    sink.close()
    assert path.read_bytes() == b'b,a\n1,"x,y"\n,"say ""hi"""\n,"multi\nline"\n'
    assert publication.rows == 3
    assert publication.uri == str(path)
    assert publication.size_bytes == path.stat().st_size
    assert publication.state == {
        "offset": path.stat().st_size,
        "fieldnames": ["b", "a"],
        "opened": True,
        "closed": True,
        "base": 0,
    }


def test_csv_nested_values_as_json_and_delimiter(tmp_path: Path) -> None:
    path = tmp_path / "out.tsv"
    sink = opened(CsvSink({"path": str(path), "delimiter": "\t"}))
    sink.write([{"id": 1, "tags": ["a", "é"], "meta": {"k": 1.5}, "ok": True}])
    sink.finish()
    sink.close()
    assert path.read_text() == 'id\ttags\tmeta\tok\n1\t"[""a"",""é""]"\t"{""k"":1.5}"\tTrue\n'


def test_csv_extra_field_is_refused_and_nothing_of_the_batch_is_written(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    sink = opened(CsvSink({"path": str(path)}))
    sink.write([{"a": 1}])
    before = sink.flush()
    with pytest.raises(SinkError, match="field 'z' that is not in the CSV header"):
        sink.write([{"a": 2}, {"a": 3, "z": 1}])
    assert sink.flush() == before
    sink.close()
    assert path.read_text() == "a\n1\n"


def test_csv_zero_rows_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    sink = opened(CsvSink({"path": str(path)}))
    publication = sink.finish()
    sink.close()
    assert path.read_bytes() == b""
    assert publication.rows == 0 and publication.state["closed"] is True


def test_csv_write_mode_truncates_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    path.write_text("old,content\n1,2\n")
    sink = opened(CsvSink({"path": str(path)}))
    sink.write([{"x": 1}])
    sink.finish()
    sink.close()
    assert path.read_text() == "x\n1\n"


def test_csv_append_mode_keeps_existing_content_and_header(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    path.write_text("a,b\n1,2")  # no final newline
    sink = opened(CsvSink({"path": str(path), "mode": "append"}))
    start = sink.flush()
    assert start.state["base"] == len("a,b\n1,2\n") and start.rows == 0
    sink.write([{"b": 4, "a": 3}])
    publication = sink.finish()
    sink.close()
    assert path.read_text() == "a,b\n1,2\n3,4\n"
    assert publication.rows == 1 and publication.state["fieldnames"] == ["a", "b"]


def test_csv_append_mode_to_a_new_file_writes_the_header(tmp_path: Path) -> None:
    path = tmp_path / "new.csv"
    sink = opened(CsvSink({"path": str(path), "mode": "append"}))
    sink.write([{"a": 1}])
    sink.finish()
    sink.close()
    assert path.read_text() == "a\n1\n"


def test_csv_encoding(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    sink = opened(CsvSink({"path": str(path), "encoding": "utf-8-sig"}))
    sink.write([{"name": "Zoë"}])
    sink.write([{"name": "Åsa"}])
    sink.finish()
    sink.close()
    assert path.read_bytes() == "\ufeffname\nZoë\nÅsa\n".encode()
    latin = opened(CsvSink({"path": str(tmp_path / "l.csv"), "encoding": "latin-1"}))
    with pytest.raises(SinkError, match="cannot be written"):
        latin.write([{"name": "日本"}])
    latin.close()
    with pytest.raises(ConfigError) as info:
        CsvSink({"path": "x.csv", "encoding": "utf-16"})
    assert info.value.key == "encoding"


# -- JSON ----------------------------------------------------------------------------------------


def test_json_array_output(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    sink = opened(JsonSink({"path": str(path)}))
    sink.write([{"id": 1, "name": "Zoë"}])
    sink.write([{"id": 2, "tags": [1, 2]}])
    sink.finish()
    sink.close()
    assert path.read_text() == '[\n{"id":1,"name":"Zoë"},\n{"id":2,"tags":[1,2]}\n]\n'
    assert json.loads(path.read_text()) == [{"id": 1, "name": "Zoë"}, {"id": 2, "tags": [1, 2]}]


def test_json_empty_array(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    sink = opened(JsonSink({"path": str(path)}))
    assert sink.finish().state["closed"] is True
    assert sink.finish().size_bytes == 3  # idempotent
    sink.close()
    assert path.read_text() == "[]\n"


def test_jsonl_output_and_format_inference(tmp_path: Path) -> None:
    path = tmp_path / "out.ndjson"
    sink = opened(JsonSink({"path": str(path)}))
    assert sink.format == "jsonl"
    sink.write([{"a": 1}, {"b": None}])
    sink.finish()
    sink.close()
    assert path.read_text() == '{"a":1}\n{"b":null}\n'
    assert JsonSink({"path": "x.out", "format": "jsonl"}).format == "jsonl"
    assert JsonSink({"path": "x.out"}).format == "json"


def test_json_refuses_nan_and_unserialisable_values(tmp_path: Path) -> None:
    sink = opened(JsonSink({"path": str(tmp_path / "o.jsonl")}))
    with pytest.raises(SinkError, match="cannot be written as JSON"):
        sink.write([{"x": float("nan")}])
    with pytest.raises(SinkError, match="cannot be written as JSON"):
        sink.write([{"x": object()}])
    assert sink.flush().size_bytes == 0
    sink.close()


# -- life cycle and restore ----------------------------------------------------------------------


def test_write_before_restore_and_after_finish_are_errors(tmp_path: Path) -> None:
    sink = JsonSink({"path": str(tmp_path / "o.jsonl")})
    with pytest.raises(SinkError, match="call restore"):
        sink.write([{"a": 1}])
    sink.restore(None, run_id=RUN)
    sink.finish()
    with pytest.raises(SinkError, match="already finished"):
        sink.write([{"a": 1}])
    sink.close()
    sink.close()  # closing twice is fine


def test_restore_cuts_uncommitted_bytes(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    sink = opened(CsvSink({"path": str(path)}))
    sink.write([{"a": 1}])
    committed = sink.flush()
    sink.write([{"a": 2}])
    sink.flush()  # durable but never committed in the landscape
    sink.close()
    with path.open("ab") as torn:
        torn.write(b"3,partial")
    again = opened(CsvSink({"path": str(path)}), committed)
    assert path.read_text() == "a\n1\n"
    again.write([{"a": 2}])
    again.finish()
    again.close()
    assert path.read_text() == "a\n1\n2\n"


def test_restore_refuses_a_file_shortened_outside_elspeth(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = opened(JsonSink({"path": str(path)}))
    sink.write([{"a": 1}, {"a": 2}])
    committed = sink.flush()
    sink.close()
    path.write_bytes(path.read_bytes()[:5])
    with pytest.raises(SinkError, match=r"shorter than the audit trail says \(5 < 16 bytes\)"):
        opened(JsonSink({"path": str(path)}), committed)
    path.unlink()
    with pytest.raises(SinkError, match="missing"):
        opened(JsonSink({"path": str(path)}), committed)


def test_restore_refuses_a_publication_of_another_file(tmp_path: Path) -> None:
    sink = opened(JsonSink({"path": str(tmp_path / "a.jsonl")}))
    committed = sink.flush()
    sink.close()
    with pytest.raises(SinkError, match="publication is for"):
        opened(JsonSink({"path": str(tmp_path / "b.jsonl")}), committed)


def test_restore_to_a_finished_publication_stays_finished(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    sink = opened(JsonSink({"path": str(path)}))
    sink.write([{"a": 1}])
    final = sink.finish()
    sink.close()
    again = opened(JsonSink({"path": str(path)}), round_trip(final))
    assert again.finish() == final
    again.close()
    assert json.loads(path.read_text()) == [{"a": 1}]


def test_content_hash_is_the_sha256_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    sink = CsvSink({"path": str(path)})
    assert sink.content_hash() is None
    sink.restore(None, run_id=RUN)
    sink.write([{"a": 1}])
    sink.finish()
    assert sink.content_hash() == hashlib.sha256(path.read_bytes()).hexdigest()
    sink.close()


# -- exactly once (property) ---------------------------------------------------------------------

values = st.one_of(
    st.text(max_size=12),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.none(),
    st.booleans(),
)
KEYS = ["id", "name", "note"]


@st.composite
def csv_rows(draw: st.DrawFn) -> list[Row]:
    first = {key: draw(values) for key in KEYS}
    rest = draw(st.lists(st.dictionaries(st.sampled_from(KEYS), values, max_size=3), max_size=25))
    return [first, *rest]


json_rows = st.lists(
    st.dictionaries(st.text(max_size=5), st.one_of(values, st.lists(values, max_size=3))),
    max_size=25,
)

APPEND_PREFIX = b"id,name,note\nold,row,1\n"

SINKS: dict[str, tuple[Callable[[Path], Sink], st.SearchStrategy[list[Row]], bytes]] = {
    "csv": (lambda p: CsvSink({"path": str(p / "o.csv")}), csv_rows(), b""),
    "csv-append": (
        lambda p: CsvSink({"path": str(p / "o.csv"), "mode": "append"}),
        csv_rows(),
        APPEND_PREFIX,
    ),
    "json": (lambda p: JsonSink({"path": str(p / "o.json")}), json_rows, b""),
    "jsonl": (lambda p: JsonSink({"path": str(p / "o.jsonl")}), json_rows, b""),
}


def write_in_one_go(make: Callable[[Path], Sink], rows: list[Row], prefix: bytes) -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        base = Path(directory)
        sink = make(base)
        sink.path.write_bytes(prefix)
        sink.restore(None, run_id=RUN)
        if rows:
            sink.write(rows)
        sink.finish()
        sink.close()
        return sink.path.read_bytes()


def crash(sink: Sink, rows: list[Row], data: st.DataObject) -> None:
    """Do work whose publication is never committed, then lose the process's sink object."""
    if rows:
        sink.write(rows)
    if data.draw(st.booleans(), label="flush before crash"):
        sink.flush()
        if data.draw(st.booleans(), label="finish before crash"):
            sink.finish()
    if data.draw(st.booleans(), label="torn write"):
        sink.close()
        with sink.path.open("ab") as torn:
            torn.write(data.draw(st.binary(min_size=1, max_size=8), label="torn bytes"))
    elif data.draw(st.booleans(), label="buffer reaches the file"):
        sink.close()
    # else: the object is simply dropped, buffered bytes and all


@pytest.mark.parametrize("kind", sorted(SINKS))
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_exactly_once_across_crashes(kind: str, data: st.DataObject) -> None:
    make, rows_strategy, prefix = SINKS[kind]
    rows = data.draw(rows_strategy, label="rows")
    expected = write_in_one_go(make, rows, prefix)
    with tempfile.TemporaryDirectory() as directory:
        base = Path(directory)
        sink = make(base)
        sink.path.write_bytes(prefix)
        sink.restore(None, run_id=RUN)
        committed = round_trip(sink.flush())  # committed before any row (append-mode contract)
        done = 0  # rows covered by the committed publication
        written = 0  # rows written by the current sink object
        for step in range(200):
            if done == len(rows) and not data.draw(st.booleans(), label="crash at the end"):
                break
            size = data.draw(st.integers(1, 6), label="batch size")
            batch = rows[written : written + size]
            actions = ["write", "commit", "crash"] if step < 150 else ["commit"]
            action = data.draw(st.sampled_from(actions), label="action")
            if action == "crash":
                crash(sink, batch, data)
                sink = make(base)
                sink.restore(committed, run_id=RUN)
                written = done
                continue
            if batch:
                sink.write(batch)
            written += len(batch)
            if action == "commit" or written == len(rows):
                committed = round_trip(sink.flush())
                done = written
                assert committed.rows == done
        final = sink.finish()
        sink.close()
        assert sink.path.read_bytes() == expected
        assert final.rows == len(rows)
        assert final.size_bytes == len(expected)
        assert final.state["base"] == len(prefix)


def test_csv_output_reads_back_as_the_rows(tmp_path: Path) -> None:
    rows: list[Row] = [{"a": "x\r\ny", "b": ""}, {"a": " lead", "b": 'q"uote'}]
    sink = opened(CsvSink({"path": str(tmp_path / "o.csv")}))
    sink.write(rows)
    sink.finish()
    sink.close()
    with (tmp_path / "o.csv").open(newline="") as stream:
        assert list(csv.DictReader(stream)) == rows
    assert io.BytesIO((tmp_path / "o.csv").read_bytes()).read().count(b"\r\n") == 1
