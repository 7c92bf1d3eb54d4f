"""Built-in sources: csv, json/jsonl and null — parsing, streaming and every BadRow reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from elspeth_core.errors import ConfigError, PluginError
from elspeth_core.plugins.protocols import BadRow
from elspeth_core.plugins.sources import CsvSource, JsonSource, NullSource


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def read_csv(path: str, **options: Any) -> list[Any]:
    return list(CsvSource({"path": path, **options}).read())


# -- csv -----------------------------------------------------------------------------------------


def test_csv_rows_are_dicts_of_strings(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", b"id,amount,name\n1,2.5,Ann\n2,,Bob\n")
    assert read_csv(path) == [
        {"id": "1", "amount": "2.5", "name": "Ann"},
        {"id": "2", "amount": "", "name": "Bob"},
    ]


def test_csv_quoted_multiline_fields_and_crlf(tmp_path: Path) -> None:
    data = b'id,text\r\n1,"line one\r\nline two"\r\n2,"with ""quotes"", and comma"\r\n'
    path = write(tmp_path / "in.csv", data)
    assert read_csv(path) == [
        {"id": "1", "text": "line one\r\nline two"},
        {"id": "2", "text": 'with "quotes", and comma'},
    ]


def test_csv_skip_rows_and_delimiter(tmp_path: Path) -> None:
    data = b'Report "generated" today\n\nid;name\n1;a,b\n'
    path = write(tmp_path / "in.csv", data)
    assert read_csv(path, skip_rows=2, delimiter=";") == [{"id": "1", "name": "a,b"}]


def test_csv_field_count_mismatch_is_a_bad_row_naming_the_line(tmp_path: Path) -> None:
    data = b'a,b,c,d\n1,2,3,4\n"x\ny",2,3,4,5\n5,6,7,8\n1,2\n'
    records = read_csv(write(tmp_path / "in.csv", data))
    assert records[0] == {"a": "1", "b": "2", "c": "3", "d": "4"}
    assert records[1] == BadRow(
        "line 3: expected 4 fields, got 5 (1 more than the header names)", '"x\ny",2,3,4,5\n'
    )
    assert records[2] == {"a": "5", "b": "6", "c": "7", "d": "8"}
    assert records[3] == BadRow("line 6: expected 4 fields, got 2 (missing 'c', 'd')", "1,2\n")


def test_csv_line_numbers_count_skipped_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", b"junk\nid,v\n1\n")
    assert read_csv(path, skip_rows=1) == [
        BadRow("line 3: expected 2 fields, got 1 (missing 'v')", "1\n")
    ]


def test_csv_undecodable_byte_makes_only_that_record_bad(tmp_path: Path) -> None:
    data = b"id,name\n1,Ann\n2,J\xf6rg\n3,Zo\xc3\xab\n"
    records = read_csv(write(tmp_path / "in.csv", data))
    assert records[0] == {"id": "1", "name": "Ann"}
    assert isinstance(records[1], BadRow)
    assert records[1].reason == "line 3: bytes not valid utf-8: b'\\xf6'"
    assert records[1].raw == "2,J\\udcf6rg\n"
    assert records[2] == {"id": "3", "name": "Zoë"}


def test_csv_other_encodings(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", "id,name\n1,Jörg\n".encode("latin-1"))
    assert read_csv(path, encoding="latin-1") == [{"id": "1", "name": "Jörg"}]


def test_csv_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    path = write(tmp_path / "in.csv", b"\xef\xbb\xbfid,name\n1,a\n")
    assert read_csv(path) == [{"id": "1", "name": "a"}]


def test_csv_malformed_quoting_is_a_bad_row_and_reading_continues(tmp_path: Path) -> None:
    data = b'id,name\n1,"a"b\n2,c\n3,"never closed\n'
    records = read_csv(write(tmp_path / "in.csv", data))
    assert isinstance(records[0], BadRow) and records[0].reason.startswith("line 2: malformed CSV")
    assert records[1] == {"id": "2", "name": "c"}
    assert isinstance(records[2], BadRow) and records[2].reason.startswith("line 4: malformed CSV")
    assert len(records) == 3


def test_csv_blank_lines_are_skipped_and_empty_file_yields_nothing(tmp_path: Path) -> None:
    assert read_csv(write(tmp_path / "a.csv", b"id\n\n1\n\n")) == [{"id": "1"}]
    assert read_csv(write(tmp_path / "b.csv", b"")) == []


def test_csv_duplicate_header_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="repeats column 'a'"):
        read_csv(write(tmp_path / "in.csv", b"a,b,a\n1,2,3\n"))


def test_csv_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(ConfigError, match="nope.csv") as info:
        read_csv(str(missing))
    assert info.value.key == "path"


def test_csv_streams_without_reading_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w") as out:
        out.write("id\n")
        for i in range(50_000):
            out.write(f"{i}\n")
    reader = CsvSource({"path": str(path)}).read()
    assert next(reader) == {"id": "0"}
    reader.close()  # an early stop closes the file
    assert sum(1 for _ in CsvSource({"path": str(path)}).read()) == 50_000


def test_csv_options_are_validated() -> None:
    with pytest.raises(ConfigError) as info:
        CsvSource({"path": "x.csv", "delimter": ";"})
    assert info.value.key == "delimter"
    assert "unknown option" in info.value.reason
    with pytest.raises(ConfigError) as info:
        CsvSource({})
    assert info.value.key == "path"
    with pytest.raises(ConfigError) as info:
        CsvSource({"path": "x.csv", "skip_rows": -1})
    assert info.value.key == "skip_rows"
    with pytest.raises(ConfigError) as info:
        CsvSource({"path": "x.csv", "encoding": "klingon"})
    assert info.value.key == "encoding"


def test_source_exposes_schema_and_failure_destination_without_applying_them(
    tmp_path: Path,
) -> None:
    schema = {"mode": "strict", "fields": ["id: int"]}
    path = write(tmp_path / "in.csv", b"id\nx\n")
    source = CsvSource({"path": path, "schema": schema, "on_validation_failure": "rejects"})
    assert source.config.schema_ == schema
    assert source.config.on_validation_failure == "rejects"
    assert source.row_schema.mode == "strict"
    assert list(source.read()) == [{"id": "x"}]  # not validated here: the engine does it


def test_source_with_a_malformed_schema_is_refused_at_construction() -> None:
    with pytest.raises(ConfigError) as info:
        CsvSource({"path": "x.csv", "schema": {"mode": "strict", "fields": ["id"]}})
    assert info.value.key == "schema.fields[0]"


# -- json ----------------------------------------------------------------------------------------


def test_json_array(tmp_path: Path) -> None:
    path = write(tmp_path / "in.json", b'[{"id": 1, "tags": ["a"]}, {"id": 2}]')
    assert list(JsonSource({"path": path}).read()) == [{"id": 1, "tags": ["a"]}, {"id": 2}]


def test_json_data_key(tmp_path: Path) -> None:
    path = write(tmp_path / "in.json", b'{"meta": {}, "results": [{"id": 1}]}')
    assert list(JsonSource({"path": path, "data_key": "results"}).read()) == [{"id": 1}]
    with pytest.raises(PluginError, match="no key 'rows'"):
        list(JsonSource({"path": path, "data_key": "rows"}).read())
    with pytest.raises(PluginError, match="set data_key"):
        list(JsonSource({"path": path}).read())


def test_json_array_bad_elements_are_bad_rows(tmp_path: Path) -> None:
    data = b'[{"id": 1}, 7, {"id": NaN}, {"x": [1, -Infinity]}, {"id": 2}]'
    records = list(JsonSource({"path": write(tmp_path / "in.json", data)}).read())
    assert records[0] == {"id": 1}
    assert records[1] == BadRow("array index 1: expected a JSON object, got int", "7")
    assert records[2] == BadRow("array index 2: field 'id': NaN is not allowed", '{"id": NaN}')
    assert records[3] == BadRow(
        "array index 3: field 'x[1]': Infinity is not allowed", '{"x": [1, -Infinity]}'
    )
    assert records[4] == {"id": 2}


def test_json_array_numbers_that_cannot_be_hashed_are_bad_rows_naming_the_field(
    tmp_path: Path,
) -> None:
    data = (
        b'[{"id": 1, "v": 1e308}, {"id": 2, "v": {"w": [0, -1E999]}}, {"id": 3, "v": 1e999},'
        b' {"id": 9007199254740991}, {"id": 9007199254740992}, -1e400, {"id": 4}]'
    )
    records = list(JsonSource({"path": write(tmp_path / "in.json", data)}).read())
    assert records[0] == {"id": 1, "v": 1e308}
    assert records[1] == BadRow(
        "array index 1: field 'v.w[1]': -1E999 overflows to -Infinity, which is not allowed",
        '{"id": 2, "v": {"w": [0, -1E999]}}',
    )
    assert records[2] == BadRow(
        "array index 2: field 'v': 1e999 overflows to Infinity, which is not allowed",
        '{"id": 3, "v": 1e999}',
    )
    assert records[3] == {"id": 9007199254740991}
    assert isinstance(records[4], BadRow)
    assert records[4].reason.startswith("array index 4: field 'id': integer 9007199254740992 is")
    assert records[4].raw == '{"id": 9007199254740992}'
    assert records[5] == BadRow(
        "array index 5: -1e400 overflows to -Infinity, which is not allowed", "-1e400"
    )
    assert records[6] == {"id": 4}


def test_json_broken_document_is_a_plugin_error(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="invalid JSON at line 2"):
        list(JsonSource({"path": write(tmp_path / "in.json", b'[{"id": 1},\n{"id": ]')}).read())


def test_jsonl_streams_lines_and_reports_bad_ones(tmp_path: Path) -> None:
    data = b'{"id": 1}\n\n{"id": \n[1]\n{"v": NaN}\n{"n": "\xff"}\n{"s": "\\ud800"}\n{"id": 2}\n'
    path = write(tmp_path / "in.jsonl", data)
    source = JsonSource({"path": path})
    assert source.format == "jsonl"
    records = list(source.read())
    assert records[0] == {"id": 1}
    assert isinstance(records[1], BadRow)
    assert records[1].reason.startswith("line 3: invalid JSON")
    assert records[2] == BadRow("line 4: expected a JSON object, got list", "[1]")
    assert records[3] == BadRow("line 5: field 'v': NaN is not allowed", '{"v": NaN}')
    assert records[4] == BadRow("line 6: bytes not valid utf-8: b'\\xff'", '{"n": "\\udcff"}')
    assert isinstance(records[5], BadRow) and "lone surrogate" in records[5].reason
    assert records[6] == {"id": 2}
    assert len(records) == 7


def test_jsonl_numbers_that_cannot_be_hashed_are_bad_rows_naming_the_field(
    tmp_path: Path,
) -> None:
    huge = "7" * 5000  # beyond int()'s 4,300-digit limit
    lines = [
        '{"id": 0, "amount": 5.0}',
        '{"id": 1, "amount": 1e999}',
        '{"id": 2, "nested": {"xs": [1.5, -2e400]}}',
        f'{{"id": 3, "big": {huge}}}',
        "1e999",
        '{"id": 4, "amount": -0.0, "n": -9007199254740991}',
    ]
    path = write(tmp_path / "in.jsonl", "\n".join(lines).encode() + b"\n")
    records = list(JsonSource({"path": path}).read())
    assert records[0] == {"id": 0, "amount": 5.0}
    assert records[1] == BadRow(
        "line 2: field 'amount': 1e999 overflows to Infinity, which is not allowed", lines[1]
    )
    assert records[2] == BadRow(
        "line 3: field 'nested.xs[1]': -2e400 overflows to -Infinity, which is not allowed",
        lines[2],
    )
    assert isinstance(records[3], BadRow)
    assert records[3].reason == (
        f"line 4: field 'big': integer {'7' * 40}... is outside the range canonical JSON can "
        "hash (±9007199254740991)"
    )
    assert records[4] == BadRow(
        "line 5: 1e999 overflows to Infinity, which is not allowed", "1e999"
    )
    assert records[5] == {"id": 4, "amount": -0.0, "n": -9007199254740991}
    assert len(records) == 6


def test_json_format_inferred_from_extension_or_given(tmp_path: Path) -> None:
    assert JsonSource({"path": "a.ndjson"}).format == "jsonl"
    assert JsonSource({"path": "a.JSONL"}).format == "jsonl"
    assert JsonSource({"path": "a.json"}).format == "json"
    assert JsonSource({"path": "a.txt", "format": "jsonl"}).format == "jsonl"
    path = write(tmp_path / "rows.txt", (json.dumps({"a": 1}) + "\n").encode())
    assert list(JsonSource({"path": path, "format": "jsonl"}).read()) == [{"a": 1}]


def test_json_options_are_validated() -> None:
    with pytest.raises(ConfigError) as info:
        JsonSource({"path": "a.json", "format": "xml"})
    assert info.value.key == "format"
    with pytest.raises(ConfigError) as info:
        JsonSource({"path": "a.jsonl", "data_key": "rows"})
    assert info.value.key == "data_key"


def test_json_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.jsonl"):
        list(JsonSource({"path": str(tmp_path / "missing.jsonl")}).read())


# -- null ----------------------------------------------------------------------------------------


def test_null_source_yields_nothing() -> None:
    source = NullSource({})
    assert list(source.read()) == []
    assert source.config.on_validation_failure == "discard"
