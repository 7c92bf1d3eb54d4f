"""Loading settings files: parsing with lines, ${VAR} expansion, ELSPETH_ overrides, errors."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from elspeth_core.config import LoadedSettings, load_settings, load_settings_from_dict
from elspeth_core.errors import ConfigError

FULL_EXAMPLE = """\
datasource:
  plugin: csv
  options:
    path: data/in.csv
    schema: {mode: strict, fields: ["id: int", "amount: float", "name: str?"]}
    on_validation_failure: quarantine
row_plugins:
  - plugin: field_mapper
    options: {mapping: {a: b}, select_only: false}
  - plugin: keyword_filter
    options: {keywords: [spam], fields: [name], on_error: quarantine}
aggregations:
  - name: stats
    plugin: batch_stats
    trigger: {count: 10, timeout_seconds: 5.5, condition: "batch_count >= 3"}
    output_mode: transform
    options: {value_field: amount}
gates:
  - name: big
    condition: "row['amount'] > 100"
    routes: {"true": fork, "false": continue}
    fork_to: [left, right]
coalesce:
  - name: join
    branches: [left, right]
    policy: quorum
    quorum_count: 1
    timeout_seconds: 30
    merge: select
    select_branch: left
sinks:
  output: {plugin: csv, options: {path: out/result.csv}}
  quarantine: {plugin: json, options: {path: out/quarantine.jsonl}}
  audit: {plugin: json, options: {path: out/audit.json}}
output_sink: output
landscape:
  enabled: true
  backend: postgresql
  url: "postgresql+psycopg://elspeth@localhost/audit"
  export: {enabled: true, sink: audit, format: csv, sign: true}
checkpoint: {enabled: true, frequency: every_row, checkpoint_interval: 7}
retry: {max_attempts: 5, initial_delay_seconds: 0.5, max_delay_seconds: 30.0, exponential_base: 3.0}
payload_store: {backend: filesystem, base_path: /tmp/payloads, retention_days: 30}
concurrency: {max_workers: 8}
rate_limit: {enabled: true, default_requests_per_second: 10, services: {openai: {requests_per_second: 5}}}
run_mode: replay
"""

MINIMAL = """\
datasource:
  plugin: csv
  options:
    path: data/in.csv
sinks:
  output:
    plugin: csv
    options: {path: out.csv}
output_sink: output
"""


def write(tmp_path: Path, text: str, name: str = "settings.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={} if environ is None else environ)
    return caught.value


# --- a valid file -------------------------------------------------------------------------------


def test_full_example_with_every_key_loads(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_EXAMPLE)
    loaded = load_settings(path, environ={})
    settings = loaded.settings
    assert isinstance(loaded, LoadedSettings)
    assert loaded.path == path
    assert settings.datasource.options["schema"]["fields"][2] == "name: str?"
    assert [p.plugin for p in settings.row_plugins] == ["field_mapper", "keyword_filter"]
    assert settings.row_plugins[1].on_error == "quarantine"
    assert "on_error" not in settings.row_plugins[1].options
    trigger = settings.aggregations[0].trigger
    assert (trigger.count, trigger.timeout_seconds, trigger.condition) == (
        10,
        5.5,
        "batch_count >= 3",
    )
    assert settings.aggregations[0].output_mode == "transform"
    assert settings.gates[0].routes == {"true": "fork", "false": "continue"}
    assert settings.gates[0].fork_to == ["left", "right"]
    join = settings.coalesce[0]
    assert (join.policy, join.quorum_count, join.timeout_seconds) == ("quorum", 1, 30.0)
    assert (join.merge, join.select_branch) == ("select", "left")
    assert list(settings.sinks) == ["output", "quarantine", "audit"]
    assert settings.output_sink == "output"
    assert settings.landscape.backend == "postgresql"
    assert settings.landscape.export.sink == "audit" and settings.landscape.export.sign is True
    assert settings.landscape.export.format == "csv"
    assert settings.checkpoint.frequency == "every_row"
    assert settings.checkpoint.checkpoint_interval == 7
    assert settings.retry.max_attempts == 5 and settings.retry.exponential_base == 3.0
    assert settings.payload_store.retention_days == 30
    assert settings.concurrency.max_workers == 8
    assert settings.rate_limit.services["openai"].requests_per_second == 5
    assert settings.run_mode == "replay"
    # raw is the mapping that was validated, as plain data
    assert loaded.raw["row_plugins"][1]["options"]["on_error"] == "quarantine"
    assert loaded.raw["checkpoint"] == {
        "enabled": True,
        "frequency": "every_row",
        "checkpoint_interval": 7,
    }


def test_unquoted_boolean_route_labels(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + """\
gates:
  - name: g
    condition: "row['x'] == 1"
    routes:
      true: output
      false: continue
""",
    )
    loaded = load_settings(path, environ={})
    assert loaded.settings.gates[0].routes == {"true": "output", "false": "continue"}
    assert list(loaded.raw["gates"][0]["routes"]) == ["true", "false"]


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
datasource: {plugin: csv, options: {path: in.csv}}
sinks:
  a: &csv_sink {plugin: csv, options: {path: a.csv}}
  b:
    <<: *csv_sink
    options: {path: b.csv}
output_sink: a
""",
    )
    settings = load_settings(path, environ={}).settings
    assert settings.sinks["b"].plugin == "csv"
    assert settings.sinks["b"].options == {"path": "b.csv"}


# --- reading and parsing errors -----------------------------------------------------------------


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    error = load_error(path)
    assert str(error).startswith(f"{path}: settings file not found")
    assert error.file == str(path)


def test_malformed_yaml_gives_file_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
datasource:
  plugin: csv
sinks:
  output: {plugin: csv
output_sink: output
""",
    )
    error = load_error(path)
    assert error.file == str(path)
    assert error.line == 5
    assert str(error).startswith(f"{path}:5: invalid YAML: ")
    assert "\n" not in str(error)


def test_tab_indentation_is_a_yaml_error_with_line(tmp_path: Path) -> None:
    path = write(tmp_path, "datasource:\n  plugin: csv\nsinks:\n\toutput: {}\n")
    error = load_error(path)
    assert error.line == 4
    assert "invalid YAML" in str(error)


def test_empty_file_and_non_mapping(tmp_path: Path) -> None:
    assert "settings file is empty" in str(load_error(write(tmp_path, "# nothing\n")))
    error = load_error(write(tmp_path, "- a\n- b\n", name="list.yaml"))
    assert (
        str(error)
        == f"{tmp_path / 'list.yaml'}:1: settings must be a mapping of sections, not list"
    )


def test_key_written_twice(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "checkpoint: {checkpoint_interval: 5}\nsinks: {}\n")
    error = load_error(path)
    assert str(error) == f"{path}:11: sinks: key is written twice in the same mapping"


# --- validation errors: one ConfigError, file, dotted key, exact line ---------------------------


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
datasource:
  plugin: csv
sinks:
  output:
    plugin: csv
output_sink: output
sinkz:
  extra: {plugin: csv}
""",
    )
    error = load_error(path)
    assert str(error).startswith(
        f"{path}:7: sinkz: unknown key (allowed: datasource, row_plugins, aggregations, gates, "
    )
    assert "run_mode)" in str(error)
    assert (error.key, error.line, error.file) == ("sinkz", 7, str(path))


def test_unknown_nested_key(tmp_path: Path) -> None:
    path = write(
        tmp_path, MINIMAL + "landscape:\n  url: sqlite:///a.db\n  exprt: {enabled: true}\n"
    )
    error = load_error(path)
    assert str(error) == (
        f"{path}:12: landscape.exprt: unknown key (allowed: enabled, backend, url, export)"
    )


def test_missing_key_in_list_item_points_at_the_item(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + """\
gates:
  - name: first
    condition: "row['a'] > 1"
    routes: {"true": output}
  - name: second
    routes: {"true": output}
""",
    )
    error = load_error(path)
    assert str(error) == f"{path}:14: gates[1].condition: required key is missing"


def test_wrong_literal_shows_the_value(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "checkpoint:\n  enabled: true\n  frequency: hourly\n")
    error = load_error(path)
    assert str(error).startswith(f"{path}:12: checkpoint.frequency: Input should be ")
    assert str(error).endswith("(got 'hourly')")


def test_output_sink_must_name_a_sink(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("output_sink: output", "output_sink: outptu"))
    error = load_error(path)
    assert str(error) == f"{path}:9: output_sink: 'outptu' is not a sink (sinks: output)"


def test_unknown_route_destination_points_at_the_route(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + """\
gates:
  - name: g
    condition: "row['a'] > 1"
    routes:
      "true": output
      "false": elsewhere
""",
    )
    error = load_error(path)
    assert str(error) == (
        f"{path}:15: gates[0].routes.false: unknown destination 'elsewhere' "
        "(expected 'continue', 'fork' or a sink: output)"
    )


def test_fork_without_fork_to(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + """\
gates:
  - name: g
    condition: "row['a'] > 1"
    routes: {"true": fork, "false": continue}
""",
    )
    error = load_error(path)
    assert str(error) == (
        f"{path}:11: gates[0].fork_to: a route uses 'fork', so fork_to must list the branch names"
    )


def test_duplicate_gate_name_points_at_the_second(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + """\
gates:
  - name: g
    condition: "row['a'] > 1"
    routes: {"true": output}
  - name: g
    condition: "row['a'] > 2"
    routes: {"true": output}
""",
    )
    error = load_error(path)
    assert str(error) == f"{path}:14: gates[1].name: name 'g' is used more than once"


@pytest.mark.parametrize(
    ("entry", "key", "line", "reason"),
    [
        (
            "    policy: quorum\n",
            "coalesce[0].quorum_count",
            11,
            "policy 'quorum' needs quorum_count",
        ),
        (
            "    merge: select\n",
            "coalesce[0].select_branch",
            11,
            "merge 'select' needs select_branch",
        ),
        (
            "    merge: select\n    select_branch: c\n",
            "coalesce[0].select_branch",
            14,
            "'c' is not one of the branches (a, b)",
        ),
    ],
)
def test_coalesce_rules(tmp_path: Path, entry: str, key: str, line: int, reason: str) -> None:
    path = write(tmp_path, MINIMAL + "coalesce:\n  - name: join\n    branches: [a, b]\n" + entry)
    assert str(load_error(path)) == f"{path}:{line}: {key}: {reason}"


def test_trigger_needs_one_condition(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + """\
aggregations:
  - name: stats
    plugin: batch_stats
    trigger: {}
""",
    )
    error = load_error(path)
    assert str(error) == (
        f"{path}:13: aggregations[0].trigger: "
        "needs at least one of count, timeout_seconds or condition"
    )


def test_every_problem_is_listed_in_one_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
datasource:
  plugin: csv
retry:
  max_attempts: 0
sinks:
  output: {plugin: csv}
checkpoint:
  checkpoint_interval: many
output_sink: output
run_mode: sideways
""",
    )
    error = load_error(path)
    lines = str(error).splitlines()
    assert lines[0].startswith(
        f"{path}:4: retry.max_attempts: Input should be greater than or equal to 1"
    )
    assert lines[1] == "3 problems in all:"
    assert lines[2].startswith("  - retry.max_attempts (line 4): ")
    assert lines[3].startswith(
        "  - checkpoint.checkpoint_interval (line 8): Input should be a valid integer"
    )
    assert lines[4].startswith("  - run_mode (line 10): Input should be ")
    assert len(lines) == 5
    assert (error.key, error.line) == ("retry.max_attempts", 4)


# --- ${VAR} expansion ---------------------------------------------------------------------------

EXPANDED = """\
datasource:
  plugin: csv
  options:
    path: ${DATA_DIR}/in.csv
    encoding: ${ENCODING:-utf-8}
    skip_rows: 2
sinks:
  output: {plugin: csv, options: {path: "${OUT_DIR:-out}/${OUT_NAME:-result}.csv"}}
output_sink: output
landscape:
  url: ${AUDIT_URL:-sqlite:///runs/audit.db}
"""


def test_variables_expand_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATA_DIR", "/srv/data")
    monkeypatch.setenv("OUT_NAME", "final")
    monkeypatch.setenv("OUT_DIR", "")
    monkeypatch.delenv("ENCODING", raising=False)
    monkeypatch.delenv("AUDIT_URL", raising=False)
    loaded = load_settings(write(tmp_path, EXPANDED))
    assert loaded.settings.datasource.options == {
        "path": "/srv/data/in.csv",
        "encoding": "utf-8",
        "skip_rows": 2,
    }
    assert loaded.settings.sinks["output"].options["path"] == "out/final.csv"
    assert loaded.settings.landscape.url == "sqlite:///runs/audit.db"
    assert loaded.raw["datasource"]["options"]["path"] == "/srv/data/in.csv"


def test_set_variable_wins_over_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_DIR", "d")
    monkeypatch.setenv("ENCODING", "latin-1")
    monkeypatch.setenv("AUDIT_URL", "sqlite:///other.db")
    settings = load_settings(write(tmp_path, EXPANDED)).settings
    assert settings.datasource.options["encoding"] == "latin-1"
    assert settings.landscape.url == "sqlite:///other.db"


def test_unset_variable_without_default_names_key_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATA_DIR", raising=False)
    path = write(tmp_path, EXPANDED)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value).startswith(
        f"{path}:4: datasource.options.path: environment variable DATA_DIR is not set"
    )


# --- ELSPETH_ overrides -------------------------------------------------------------------------


def test_overrides_are_typed_and_case_insensitive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ELSPETH_CHECKPOINT__CHECKPOINT_INTERVAL", "500")
    monkeypatch.setenv("ELSPETH_LANDSCAPE__URL", "sqlite:///x.db")
    monkeypatch.setenv("ELSPETH_RETRY__INITIAL_DELAY_SECONDS", "2.5")
    monkeypatch.setenv("ELSPETH_RATE_LIMIT__ENABLED", "true")
    monkeypatch.setenv("ELSPETH_LANDSCAPE__EXPORT__SIGN", "true")
    monkeypatch.setenv("ELSPETH_SINKS__OUTPUT__OPTIONS__PATH", "elsewhere.csv")
    monkeypatch.setenv("ELSPETH_SIGNING_KEY", "not-a-settings-override")
    monkeypatch.setenv("ELSPETH_LEASE_TIMEOUT", "30")
    loaded = load_settings(write(tmp_path, MINIMAL))
    settings = loaded.settings
    assert settings.checkpoint.checkpoint_interval == 500
    assert loaded.raw["checkpoint"]["checkpoint_interval"] == 500
    assert settings.landscape.url == "sqlite:///x.db"
    assert settings.retry.initial_delay_seconds == 2.5
    assert loaded.raw["retry"]["initial_delay_seconds"] == 2.5
    assert settings.rate_limit.enabled is True and loaded.raw["rate_limit"]["enabled"] is True
    assert settings.landscape.export.sign is True
    assert settings.sinks["output"].options["path"] == "elsewhere.csv"


def test_override_matches_existing_keys_whatever_their_case(tmp_path: Path) -> None:
    text = MINIMAL.replace("  output:", "  Output:").replace("sink: output", "sink: Output")
    text += "row_plugins:\n  - plugin: field_mapper\n    options: {Strict: false}\n"
    environ = {
        "ELSPETH_SINKS__OUTPUT__OPTIONS__PATH": "x.csv",
        "ELSPETH_ROW_PLUGINS__0__OPTIONS__STRICT": "true",
    }
    settings = load_settings(write(tmp_path, text), environ=environ).settings
    assert settings.sinks["Output"].options["path"] == "x.csv"
    assert settings.row_plugins[0].options == {"Strict": True}


def test_override_is_applied_after_expansion(tmp_path: Path) -> None:
    environ = {"DATA_DIR": "d", "ELSPETH_DATASOURCE__OPTIONS__PATH": "${DATA_DIR}/raw.csv"}
    settings = load_settings(write(tmp_path, EXPANDED), environ=environ).settings
    assert settings.datasource.options["path"] == "${DATA_DIR}/raw.csv"


def test_override_of_unknown_section_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    error = load_error(path, {"ELSPETH_CHECKPIONT__ENABLED": "false"})
    assert str(error).startswith(
        f"{path}: ELSPETH_CHECKPIONT__ENABLED: no settings key 'checkpiont' (allowed: datasource, "
    )
    error = load_error(path, {"ELSPETH_LANDSCAPE__EXPORT__SINKK": "output"})
    assert (
        "no settings key 'sinkk' under landscape.export (allowed: enabled, sink, format, sign)"
        in str(error)
    )


def test_override_into_a_list_needs_an_existing_item(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    error = load_error(path, {"ELSPETH_ROW_PLUGINS__0__PLUGIN": "passthrough"})
    assert (
        str(error) == f"{path}: ELSPETH_ROW_PLUGINS__0__PLUGIN: "
        "cannot set '0': row_plugins is a list of 0 items"
    )


def test_invalid_override_value_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    error = load_error(path, {"ELSPETH_CHECKPOINT__CHECKPOINT_INTERVAL": "often"})
    assert str(error).startswith(
        f"{path}: checkpoint.checkpoint_interval: Input should be a valid integer"
    )
    assert str(error).endswith("(got 'often') (set by ELSPETH_CHECKPOINT__CHECKPOINT_INTERVAL)")
    assert error.line is None


# --- inline settings ----------------------------------------------------------------------------


def inline() -> dict[str, Any]:
    return {
        "datasource": {"plugin": "csv", "options": {"path": "${DATA:-in.csv}"}},
        "sinks": {"output": {"plugin": "csv"}},
        "output_sink": "output",
    }


def test_inline_settings_expand_and_override_without_changing_the_input() -> None:
    data = inline()
    loaded = load_settings_from_dict(data, environ={"ELSPETH_CONCURRENCY__MAX_WORKERS": "2"})
    assert loaded.settings.datasource.options["path"] == "in.csv"
    assert loaded.settings.concurrency.max_workers == 2
    assert loaded.path == Path("<inline>")
    assert data == inline()


def test_inline_errors_name_the_source() -> None:
    data = inline()
    data["sinkz"] = {}
    with pytest.raises(ConfigError) as caught:
        load_settings_from_dict(data, "flow:nightly", environ={})
    assert str(caught.value).startswith("flow:nightly: sinkz: unknown key (allowed: datasource,")
    assert caught.value.line is None


def test_bare_null_source_plugin_is_the_null_source(tmp_path: Path) -> None:
    """ELSPETH 0.1 files write `plugin: null` unquoted, which YAML reads as null."""
    path = tmp_path / "settings.yaml"
    path.write_text(
        "datasource:\n  plugin: null\n"
        "sinks:\n  out: {plugin: json, options: {path: out.jsonl}}\n"
        "output_sink: out\n",
        encoding="utf-8",
    )
    loaded = load_settings(path, environ={})
    assert loaded.settings.datasource.plugin == "null"
