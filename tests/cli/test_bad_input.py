"""A corpus of bad input, each case through the real ``elspeth`` CLI in a subprocess.

Bad settings (malformed YAML, unknown/mistyped/missing keys, bad routes, unknown plugins and
options, gate expressions that try to run code) must be refused before anything happens: exit 1,
ONE ``Error:`` line on stderr naming the file and the line or key, no traceback, and nothing created
(no landscape, no ``runs/``, no output, no payloads).

Bad rows (schema failures, a non-UTF-8 byte, NaN and Infinity) must not stop a run: they are
quarantined with a reason naming the field, written to the quarantine sink, and every other row
reaches its sink. A transform error without ``on_error`` fails its rows (recorded), the run ends
``failed`` with exit 2, and the other rows still reach their sinks. The bad-row runs are recorded
on both landscape backends (SQLite and PostgreSQL); refused settings never open a landscape.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cli import Result, query, run_cli, run_ids
from tests.support.landscape_fixtures import Landscapes

SETTINGS = "pipeline.yaml"
INPUT = "in.csv"


# ------------------------------------------------------------------------- the settings corpus
def _base() -> dict[str, Any]:
    return {
        "datasource": {
            "plugin": "csv",
            "options": {
                "path": INPUT,
                "schema": {"mode": "free", "fields": ["id: int", "amount: float"]},
                "on_validation_failure": "quarantine",
            },
        },
        "row_plugins": [{"plugin": "field_mapper", "options": {"mapping": {"status": "state"}}}],
        "gates": [
            {
                "name": "big",
                "condition": "row['amount'] >= 500",
                "routes": {"true": "high", "false": "continue"},
            }
        ],
        "sinks": {
            "normal": {"plugin": "csv", "options": {"path": "out/normal.csv"}},
            "high": {"plugin": "csv", "options": {"path": "out/high.csv"}},
            "quarantine": {"plugin": "json", "options": {"path": "out/quarantine.jsonl"}},
        },
        "output_sink": "normal",
        "landscape": {"url": "sqlite:///runs/audit.db"},
        "checkpoint": {"enabled": True, "frequency": "every_n", "checkpoint_interval": 100},
        "payload_store": {"base_path": "payloads"},
    }


def _dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def _edited(edit: Any) -> str:
    data = _base()
    edit(data)
    return _dump(data)


def _replaced(old: str, new: str) -> str:
    text = _dump(_base())
    assert old in text, old
    return text.replace(old, new, 1)


def _gate(condition: str) -> str:
    return _edited(lambda d: d["gates"][0].__setitem__("condition", condition))


def _line_of(text: str, marker: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if marker in line:
            return number
    raise AssertionError(f"{marker!r} not in the settings")


# Each case: settings text, the key the error must name (None: a YAML syntax error), the marker of
# the line it must name (None: any line), and a fragment the reason must quote.
CASES: dict[str, tuple[str, str | None, str | None, str]] = {
    "yaml_tab_indent": (
        _replaced("  plugin: csv\n", "\tplugin: csv\n"),
        None,
        "\tplugin: csv",
        "invalid YAML",
    ),
    "yaml_unclosed_bracket": (
        _replaced("- plugin: field_mapper", "- [plugin: field_mapper"),
        None,
        None,
        "invalid YAML",
    ),
    "unknown_top_level_key": (
        _edited(lambda d: d.__setitem__("bogus", 1)),
        "bogus",
        "bogus:",
        "unknown key",
    ),
    "unknown_nested_key": (
        _edited(lambda d: d["checkpoint"].__setitem__("frequncy", "every_row")),
        "checkpoint.frequncy",
        "frequncy:",
        "unknown key",
    ),
    "wrong_type": (
        _edited(lambda d: d["checkpoint"].__setitem__("checkpoint_interval", "often")),
        "checkpoint.checkpoint_interval",
        "checkpoint_interval:",
        "often",
    ),
    "missing_required_key": (
        _edited(lambda d: d["datasource"].pop("plugin")),
        "datasource.plugin",
        "datasource:",
        "required",
    ),
    "unknown_sink_in_gate_route": (
        _edited(lambda d: d["gates"][0]["routes"].__setitem__("true", "nowhere")),
        "gates[0].routes.true",
        "nowhere",
        "nowhere",
    ),
    "output_sink_not_a_sink": (
        _edited(lambda d: d.__setitem__("output_sink", "nowhere")),
        "output_sink",
        "output_sink:",
        "nowhere",
    ),
    "unknown_plugin_name": (
        _edited(lambda d: d["datasource"].__setitem__("plugin", "excel")),
        "datasource.plugin",
        "plugin: excel",
        "excel",
    ),
    "bad_plugin_option": (
        _edited(lambda d: d["datasource"]["options"].__setitem__("delimiter_char", ";")),
        "datasource.options.delimiter_char",
        "delimiter_char:",
        "unknown option",
    ),
    "gate_import_call": (
        _gate("__import__('os').system('id')"),
        "gates[0].condition",
        None,
        "__import__",
    ),
    "gate_open_file": (_gate("open('/etc/passwd').read()"), "gates[0].condition", None, "open("),
    "gate_dunder_attribute": (_gate("row.__class__"), "gates[0].condition", None, "__class__"),
    "gate_comprehension": (
        _gate("[x for x in row]"),
        "gates[0].condition",
        None,
        "[x for x in row]",
    ),
    "gate_lambda": (_gate("lambda: 1"), "gates[0].condition", None, "lambda"),
    "gate_huge_power": (_gate("2 ** 10000000"), "gates[0].condition", None, "10000000"),
}


def _params() -> list[Any]:
    params = []
    for case in CASES:
        # 'run -n' shares one code path for every plugin and every expression: one case each.
        dry = case in ("unknown_plugin_name", "gate_import_call")
        commands = ["validate", "run -x"] + (["run -n"] if dry else [])
        for command in commands:
            params.append(pytest.param(case, command, id=f"{case}-{command}"))
    return params


def _cli_args(command: str) -> list[str]:
    return {
        "validate": ["validate", "-s", SETTINGS],
        "run -x": ["run", "-s", SETTINGS, "-x"],
        "run -n": ["run", "-s", SETTINGS, "-n"],
    }[command]


def _error_line(result: Result) -> str:
    """The single ``Error:`` line of stderr (a ``Hint:`` line may follow, nothing else)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith("Hint: ")]
    assert len(errors) == 1, f"expected ONE error line, got: {result.stderr!r}"
    assert errors[0].startswith("Error: "), errors[0]
    return errors[0]


# Not parametrised over backends: refused settings never reach a landscape (none is created).
@pytest.mark.parametrize(("case", "command"), _params())
def test_bad_settings_are_refused_before_anything_happens(
    tmp_path: Path, case: str, command: str
) -> None:
    text, key, marker, fragment = CASES[case]
    (tmp_path / SETTINGS).write_text(text)
    (tmp_path / INPUT).write_text("id,amount,status\n1,10.5,ok\n2,900,ok\n")
    result = run_cli(*_cli_args(command), cwd=tmp_path)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.code == 1, (result.code, result.stdout, result.stderr)
    line = _error_line(result)
    if marker is not None:
        assert f"{SETTINGS}:{_line_of(text, marker)}:" in line, line
    else:
        assert re.search(rf"{re.escape(SETTINGS)}(:\d+)?:", line), line
    if key is not None:
        assert f" {key}:" in line, line
    assert fragment in line, line
    if case.startswith("gate_"):
        assert "column" in line, line  # the offending position
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([SETTINGS, INPUT])


# SQLite-only: the refusal comes before any landscape is opened; it checks no SQLite file appears.
@pytest.mark.parametrize("case", ["unknown_plugin_name", "gate_lambda"])
def test_a_refused_pipeline_records_no_run(tmp_path: Path, case: str) -> None:
    (tmp_path / SETTINGS).write_text(CASES[case][0])
    (tmp_path / INPUT).write_text("id,amount,status\n1,10.5,ok\n")
    result = run_cli(*_cli_args("run -x"), cwd=tmp_path)
    assert result.code == 1, result.stderr
    assert run_ids(tmp_path / "runs" / "audit.db") == []
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------- bad rows
ROW_SETTINGS: dict[str, Any] = {
    "datasource": {
        "plugin": "csv",
        "options": {
            "path": INPUT,
            "schema": {"mode": "strict", "fields": ["id: int", "amount: float", "status: str"]},
            "on_validation_failure": "quarantine",
        },
    },
    "gates": [
        {
            "name": "big",
            "condition": "row['amount'] >= 500",
            "routes": {"true": "high", "false": "continue"},
        }
    ],
    "sinks": {
        "normal": {"plugin": "csv", "options": {"path": "out/normal.csv"}},
        "high": {"plugin": "csv", "options": {"path": "out/high.csv"}},
        "quarantine": {"plugin": "json", "options": {"path": "out/quarantine.jsonl"}},
    },
    "output_sink": "normal",
    "landscape": {"url": "sqlite:///audit.db"},
    "payload_store": {"base_path": "payloads"},
}


def _row_settings(landscape: str) -> dict[str, Any]:
    """A deep copy of ``ROW_SETTINGS`` recording into the landscape at ``landscape``."""
    settings = json.loads(json.dumps(ROW_SETTINGS))
    settings["landscape"] = {"url": landscape}
    return settings


GOOD_ROWS = 40
# row_index -> (raw CSV line, what the quarantine reason must mention)
BAD_ROWS: dict[int, tuple[bytes, tuple[str, ...]]] = {
    3: (b"3,abc,ok", ("amount", "abc")),  # not a number
    5: (b"5,,ok", ("amount",)),  # empty value
    6: (b"6,12.0", ("line",)),  # a field missing (short line)
    7: (b"7,12.0,caf\xe9", ("utf-8",)),  # a Latin-1 byte
    8: (b"8,nan,ok", ("amount", "NaN")),
    9: (b"9,inf,ok", ("amount", "Infinity")),
    10: (b"10,-Infinity,ok", ("amount", "Infinity")),
    11: (b"11,1e999,ok", ("amount", "Infinity")),  # overflows to inf
}


def _write_row_input(path: Path) -> int:
    lines = [b"id,amount,status"]
    total = GOOD_ROWS + len(BAD_ROWS)
    for index in range(total):
        if index in BAD_ROWS:
            lines.append(BAD_ROWS[index][0])
        else:
            lines.append(b"%d,%d.25,%s" % (index, (index * 37) % 1000, b"ok"))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return total


def _data_rows(path: Path) -> int:
    """Rows in a sink file: CSV minus its header, JSONL one per line."""
    if not path.exists():
        return 0
    lines = path.read_bytes().splitlines()
    return len(lines) - 1 if path.suffix == ".csv" and lines else len(lines)


BadRowsRun = tuple[Path, Result, int, str]  # work directory, result, source rows, landscape URL


@pytest.fixture(scope="module")
def bad_rows_run(tmp_path_factory: pytest.TempPathFactory, landscapes: Landscapes) -> BadRowsRun:
    work = tmp_path_factory.mktemp("bad_rows")
    url = landscapes.new(work)
    total = _write_row_input(work / INPUT)
    (work / SETTINGS).write_text(_dump(_row_settings(url)))
    result = run_cli("run", "-s", SETTINGS, "-x", cwd=work)
    return work, result, total, url


def test_bad_rows_are_quarantined_and_the_run_completes(bad_rows_run: BadRowsRun) -> None:
    work, result, total, db = bad_rows_run
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    (run_id,) = run_ids(db)
    assert query(db, f"SELECT status FROM runs WHERE run_id = '{run_id}'") == [("completed",)]
    assert query(db, "SELECT count(*) FROM rows")[0][0] == total

    errors = dict(query(db, "SELECT row_index, reason FROM validation_errors"))
    assert set(errors) == set(BAD_ROWS)
    for index, (_line, words) in BAD_ROWS.items():
        for word in words:
            assert word.lower() in errors[index].lower(), (index, errors[index])
    destinations = {d for (d,) in query(db, "SELECT destination FROM validation_errors")}
    assert destinations == {"quarantine"}

    outcomes = dict(
        query(
            db,
            """SELECT r.row_index, o.outcome || ':' || coalesce(o.sink_name, '')
               FROM rows r JOIN tokens t ON t.row_id = r.row_id
               JOIN token_outcomes o ON o.token_id = t.token_id AND o.is_terminal""",
        )
    )
    assert len(outcomes) == total
    for index in range(total):
        if index in BAD_ROWS:
            assert outcomes[index] == "quarantined:quarantine", index
        else:
            assert outcomes[index] in ("completed:normal", "routed:high"), index

    out = work / "out"
    quarantined = (out / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(quarantined) == len(BAD_ROWS)
    assert all(isinstance(json.loads(line), dict) for line in quarantined)
    per_sink = {
        name: _data_rows(out / f)
        for name, f in (
            ("normal", "normal.csv"),
            ("high", "high.csv"),
            ("quarantine", "quarantine.jsonl"),
        )
    }
    assert sum(per_sink.values()) == total  # nothing lost, nothing duplicated
    recorded = dict(
        query(
            db,
            "SELECT sink_name, count(*) FROM token_outcomes WHERE is_terminal GROUP BY sink_name",
        )
    )
    assert recorded == per_sink


def test_a_short_csv_line_is_quarantined_naming_the_missing_field(
    bad_rows_run: BadRowsRun,
) -> None:
    _work, result, _total, db = bad_rows_run
    assert result.code == 0
    ((reason,),) = query(db, "SELECT reason FROM validation_errors WHERE row_index = 6")
    assert reason == "line 8: expected 3 fields, got 2 (missing 'status')", reason


def _json_pipeline(work: Path, rows: list[Any] | str, landscape: str, **options: Any) -> None:
    text = rows if isinstance(rows, str) else "\n".join(json.dumps(r) for r in rows) + "\n"
    (work / "in.jsonl").write_text(text)
    settings = _row_settings(landscape)
    settings["datasource"] = {
        "plugin": "json",
        "options": {
            "path": "in.jsonl",
            "schema": {"mode": "strict", "fields": ["id: int", "amount: float", "status: str"]},
            "on_validation_failure": "quarantine",
            **options,
        },
    }
    (work / SETTINGS).write_text(_dump(settings))


def test_json_rows_missing_a_field_or_holding_nan_are_quarantined(
    tmp_path: Path, landscape_url: str
) -> None:
    text = (
        '{"id": 0, "amount": 5.0, "status": "ok"}\n'
        '{"id": 1, "status": "ok"}\n'  # amount missing
        '{"id": 2, "amount": "NaN", "status": "ok"}\n'
        '{"id": 3, "amount": NaN, "status": "ok"}\n'  # a bare NaN token
        '{"id": 4, "amount": 700.0, "status": "ok"}\n'
    )
    _json_pipeline(tmp_path, text, landscape_url)
    result = run_cli("run", "-s", SETTINGS, "-x", cwd=tmp_path)
    assert result.code == 0, result.stderr
    db = landscape_url
    errors = dict(query(db, "SELECT row_index, reason FROM validation_errors"))
    assert set(errors) == {1, 2, 3}
    assert "amount" in errors[1] and "missing" in errors[1]
    assert "NaN" in errors[2] and "amount" in errors[2]
    assert "NaN" in errors[3]
    assert _data_rows(tmp_path / "out" / "quarantine.jsonl") == 3
    assert _data_rows(tmp_path / "out" / "normal.csv") == 1
    assert _data_rows(tmp_path / "out" / "high.csv") == 1


def test_json_numbers_canonical_json_cannot_hash_are_quarantined(
    tmp_path: Path, landscape_url: str
) -> None:
    """1e999 (overflows to Infinity) and 2**53 (beyond I-JSON integers) fail their row only."""
    text = (
        '{"id": 0, "amount": 5.0, "status": "ok"}\n'
        '{"id": 1, "amount": 1e999, "status": "ok"}\n'
        '{"id": 2, "amount": 7.0, "status": "ok"}\n'
        '{"id": 9007199254740992, "amount": 8.0, "status": "ok"}\n'
    )
    _json_pipeline(tmp_path, text, landscape_url)
    result = run_cli("run", "-s", SETTINGS, "-x", cwd=tmp_path)
    assert result.code == 0, result.stderr
    errors = dict(
        query(landscape_url, "SELECT row_index, reason FROM validation_errors ORDER BY row_index")
    )
    assert list(errors) == [1, 3]
    assert "amount" in errors[1] and "Infinity" in errors[1]
    assert "'id'" in errors[3] and "9007199254740992" in errors[3]
    assert _data_rows(tmp_path / "out" / "normal.csv") == 2
    quarantined = (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()
    assert len(quarantined) == 2


# ----------------------------------------------------------------- transform errors, no on_error
STRICT_ROWS = 12
MISSING_STATUS = {2, 5, 9}


def _strict_mapper_run(work: Path, landscape: str) -> Result:
    rows = []
    for index in range(STRICT_ROWS):
        row: dict[str, Any] = {"id": index, "amount": index * 100.0, "status": "ok"}
        if index in MISSING_STATUS:
            del row["status"]
        rows.append(row)
    (work / "in.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    settings = _row_settings(landscape)
    settings["datasource"] = {
        "plugin": "json",
        "options": {"path": "in.jsonl", "schema": {"fields": "dynamic"}},
    }
    settings["row_plugins"] = [
        {"plugin": "field_mapper", "options": {"mapping": {"status": "state"}, "strict": True}}
    ]
    (work / SETTINGS).write_text(_dump(settings))
    return run_cli("run", "-s", SETTINGS, "-x", cwd=work)


StrictMapper = tuple[Path, Result, str]  # work directory, result, landscape URL


@pytest.fixture(scope="module")
def strict_mapper(tmp_path_factory: pytest.TempPathFactory, landscapes: Landscapes) -> StrictMapper:
    work = tmp_path_factory.mktemp("strict_mapper")
    url = landscapes.new(work)
    return work, _strict_mapper_run(work, url), url


def test_transform_error_without_on_error_fails_those_rows_and_the_run(
    strict_mapper: StrictMapper,
) -> None:
    work, result, db = strict_mapper
    assert result.code == 2, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    (run_id,) = run_ids(db)
    ((status, error),) = query(db, f"SELECT status, error FROM runs WHERE run_id = '{run_id}'")
    assert status == "failed"
    assert error and "\n" not in error and "failed" in error  # a one-line reason
    assert f"Run {run_id}: failed" in result.stdout

    failed = query(
        db,
        """SELECT r.row_index, o.reason FROM rows r JOIN tokens t ON t.row_id = r.row_id
           JOIN token_outcomes o ON o.token_id = t.token_id
           WHERE o.outcome = 'failed' AND o.is_terminal ORDER BY r.row_index""",
    )
    assert [index for index, _reason in failed] == sorted(MISSING_STATUS)
    assert all("status" in reason for _index, reason in failed)
    transform_errors = query(
        db,
        """SELECT r.row_index, e.error_json, e.destination FROM transform_errors e
           JOIN tokens t ON t.token_id = e.token_id JOIN rows r ON r.row_id = t.row_id
           ORDER BY r.row_index""",
    )
    assert [index for index, _e, _d in transform_errors] == sorted(MISSING_STATUS)
    assert all("status" in json.loads(e)["reason"] for _i, e, _d in transform_errors)

    out = work / "out"
    delivered = _data_rows(out / "normal.csv") + _data_rows(out / "high.csv")
    assert delivered == STRICT_ROWS - len(MISSING_STATUS)  # the other rows reached their sinks
    terminal = query(db, "SELECT count(*) FROM token_outcomes WHERE is_terminal")[0][0]
    assert terminal == STRICT_ROWS


def test_a_failed_run_explains_itself_on_stderr(strict_mapper: StrictMapper) -> None:
    _work, result, _db = strict_mapper
    assert result.code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "failed" in errors[0], result.stderr
    assert any(line.startswith("Hint: ") for line in result.stderr.splitlines())
