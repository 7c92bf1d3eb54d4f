"""The settings models on their own: defaults, immutability and cross-field rules."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from elspeth_core.config import (
    ElspethSettings,
    LandscapeExportSettings,
    RowPluginSettings,
    SettingsProblems,
    SinkSettings,
)
from elspeth_core.config.models import settings_model_at


def minimal(**extra: Any) -> dict[str, Any]:
    return {
        "datasource": {"plugin": "csv", "options": {"path": "in.csv"}},
        "sinks": {
            "out": {"plugin": "csv", "options": {"path": "out.csv"}},
            "bad": {"plugin": "csv"},
        },
        "output_sink": "out",
        **extra,
    }


def problems_of(data: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """(full key path, reason) of every cross-field problem pydantic reports."""
    with pytest.raises(ValidationError) as caught:
        ElspethSettings.model_validate(data)
    found = []
    for error in caught.value.errors():
        cause = error.get("ctx", {}).get("error")
        assert isinstance(cause, SettingsProblems), error
        found += [((*error["loc"], *path), reason) for path, reason in cause.problems]
    return found


def test_defaults_when_only_required_keys_are_given() -> None:
    settings = ElspethSettings.model_validate(minimal())
    assert settings.row_plugins == [] and settings.aggregations == [] and settings.gates == []
    assert settings.coalesce == []
    assert settings.landscape.enabled is True
    assert settings.landscape.backend == "sqlite"
    assert settings.landscape.url == "sqlite:///runs/audit.db"
    assert settings.landscape.export == LandscapeExportSettings(
        enabled=False, sink=None, format="json", sign=False
    )
    assert (settings.checkpoint.enabled, settings.checkpoint.frequency) == (True, "every_n")
    assert settings.checkpoint.checkpoint_interval == 100
    assert settings.retry.max_attempts == 3
    assert settings.retry.initial_delay_seconds == 1.0
    assert settings.retry.max_delay_seconds == 60.0
    assert settings.retry.exponential_base == 2.0
    assert settings.payload_store.backend == "filesystem"
    assert settings.payload_store.base_path == ".elspeth/payloads"
    assert settings.payload_store.retention_days == 90
    assert settings.concurrency.max_workers == 4
    assert settings.rate_limit.enabled is False
    assert settings.rate_limit.default_requests_per_second == 10
    assert settings.rate_limit.services == {}
    assert settings.run_mode == "live"


@pytest.mark.parametrize("missing", ["datasource", "sinks", "output_sink"])
def test_required_keys(missing: str) -> None:
    data = minimal()
    del data[missing]
    with pytest.raises(ValidationError) as caught:
        ElspethSettings.model_validate(data)
    assert [e["loc"] for e in caught.value.errors()] == [(missing,)]


def test_settings_are_frozen() -> None:
    settings = ElspethSettings.model_validate(minimal())
    with pytest.raises(ValidationError):
        settings.output_sink = "bad"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.checkpoint.checkpoint_interval = 5  # type: ignore[misc]


def test_unknown_nested_key_is_rejected() -> None:
    with pytest.raises(ValidationError) as caught:
        ElspethSettings.model_validate(minimal(retry={"max_attempt": 3}))
    assert caught.value.errors()[0]["loc"] == ("retry", "max_attempt")
    assert caught.value.errors()[0]["type"] == "extra_forbidden"


def test_on_error_inside_options_is_lifted_to_the_field() -> None:
    plugin = RowPluginSettings.model_validate(
        {"plugin": "keyword_filter", "options": {"keywords": ["x"], "on_error": "bad"}}
    )
    assert plugin.on_error == "bad"
    assert plugin.options == {"keywords": ["x"]}


def test_on_error_given_twice_must_agree() -> None:
    same = {"plugin": "p", "on_error": "bad", "options": {"on_error": "bad"}}
    assert RowPluginSettings.model_validate(same).on_error == "bad"
    clash = {"plugin": "p", "on_error": "bad", "options": {"on_error": "discard"}}
    assert problems_of(minimal(row_plugins=[clash])) == [
        (
            ("row_plugins", 0, "on_error"),
            "given twice with different values: 'bad' and 'discard'",
        )
    ]


def test_on_error_must_be_discard_or_a_sink() -> None:
    ok = ElspethSettings.model_validate(
        minimal(
            row_plugins=[{"plugin": "p", "on_error": "discard"}, {"plugin": "q", "on_error": "bad"}]
        )
    )
    assert [p.on_error for p in ok.row_plugins] == ["discard", "bad"]
    found = problems_of(minimal(row_plugins=[{"plugin": "p", "on_error": "nowhere"}]))
    assert found == [
        (
            ("row_plugins", 0, "on_error"),
            "'nowhere' is neither 'discard' nor a sink (sinks: out, bad)",
        )
    ]


def test_output_sink_must_name_a_sink() -> None:
    data = minimal()
    data["output_sink"] = "missing"
    assert problems_of(data) == [(("output_sink",), "'missing' is not a sink (sinks: out, bad)")]


def test_boolean_route_labels_become_strings() -> None:
    gate = {"name": "g", "condition": "row['x'] > 1", "routes": {True: "bad", False: "continue"}}
    settings = ElspethSettings.model_validate(minimal(gates=[gate]))
    assert settings.gates[0].routes == {"true": "bad", "false": "continue"}


def test_route_destination_must_be_continue_fork_or_a_sink() -> None:
    gates = [
        {"name": "g", "condition": "c", "routes": {"true": "bad", "false": "nowhere"}},
        {
            "name": "h",
            "condition": "c",
            "routes": {"true": "fork", "false": "continue"},
            "fork_to": ["a", "b"],
        },
    ]
    assert problems_of(minimal(gates=gates)) == [
        (
            ("gates", 0, "routes", "false"),
            "unknown destination 'nowhere' (expected 'continue', 'fork' or a sink: out, bad)",
        )
    ]


def test_fork_branches_are_not_checked_against_sinks_or_coalesce() -> None:
    gate = {"name": "g", "condition": "c", "routes": {"true": "fork"}, "fork_to": ["x", "y"]}
    settings = ElspethSettings.model_validate(minimal(gates=[gate]))
    assert settings.gates[0].fork_to == ["x", "y"]


@pytest.mark.parametrize("fork_to", [None, []])
def test_fork_route_needs_fork_to(fork_to: list[str] | None) -> None:
    gate = {"name": "g", "condition": "c", "routes": {"true": "fork", "false": "continue"}}
    if fork_to is not None:
        gate["fork_to"] = fork_to
    assert problems_of(minimal(gates=[gate])) == [
        (("gates", 0, "fork_to"), "a route uses 'fork', so fork_to must list the branch names")
    ]


def test_fork_to_branches_must_be_unique() -> None:
    gate = {"name": "g", "condition": "c", "routes": {"true": "fork"}, "fork_to": ["a", "a"]}
    assert problems_of(minimal(gates=[gate])) == [
        (("gates", 0, "fork_to"), "branch names repeat: a")
    ]


def test_gate_and_aggregation_names_are_unique() -> None:
    aggregation = {"name": "batch", "plugin": "batch_stats", "trigger": {"count": 2}}
    gate = {"name": "g", "condition": "c", "routes": {"true": "continue"}}
    found = problems_of(minimal(aggregations=[aggregation, aggregation], gates=[gate, gate, gate]))
    assert found == [
        (("aggregations", 1, "name"), "name 'batch' is used more than once"),
        (("gates", 1, "name"), "name 'g' is used more than once"),
        (("gates", 2, "name"), "name 'g' is used more than once"),
    ]


def test_trigger_needs_a_condition() -> None:
    aggregation = {"name": "batch", "plugin": "batch_stats", "trigger": {}}
    assert problems_of(minimal(aggregations=[aggregation])) == [
        (
            ("aggregations", 0, "trigger"),
            "needs at least one of count, timeout_seconds or condition",
        )
    ]
    for trigger in ({"count": 5}, {"timeout_seconds": 1.5}, {"condition": "batch_count > 3"}):
        aggregation["trigger"] = trigger
        settings = ElspethSettings.model_validate(minimal(aggregations=[aggregation]))
        assert settings.aggregations[0].output_mode == "single"


@pytest.mark.parametrize(
    ("coalesce", "expected"),
    [
        ({"policy": "quorum"}, (("quorum_count",), "policy 'quorum' needs quorum_count")),
        (
            {"policy": "quorum", "quorum_count": 3},
            (("quorum_count",), "3 is more than the 2 branches"),
        ),
        (
            {"policy": "best_effort"},
            (("timeout_seconds",), "policy 'best_effort' needs timeout_seconds"),
        ),
        ({"merge": "select"}, (("select_branch",), "merge 'select' needs select_branch")),
        (
            {"merge": "select", "select_branch": "c"},
            (("select_branch",), "'c' is not one of the branches (a, b)"),
        ),
    ],
)
def test_coalesce_policy_and_merge_options(
    coalesce: dict[str, Any], expected: tuple[tuple[str, ...], str]
) -> None:
    entry = {"name": "join", "branches": ["a", "b"], **coalesce}
    sub_path, reason = expected
    assert problems_of(minimal(coalesce=[entry])) == [(("coalesce", 0, *sub_path), reason)]


def test_coalesce_valid_options_and_defaults() -> None:
    entries = [
        {"name": "j1", "branches": ["a", "b"]},
        {
            "name": "j2",
            "branches": ["a", "b"],
            "policy": "quorum",
            "quorum_count": 1,
            "merge": "select",
            "select_branch": "b",
        },
    ]
    settings = ElspethSettings.model_validate(minimal(coalesce=entries))
    assert (settings.coalesce[0].policy, settings.coalesce[0].merge) == ("require_all", "union")
    assert settings.coalesce[1].select_branch == "b"


def test_export_needs_an_existing_sink() -> None:
    assert problems_of(minimal(landscape={"export": {"enabled": True}})) == [
        (("landscape", "export", "sink"), "export is enabled, so it needs a sink")
    ]
    assert problems_of(minimal(landscape={"export": {"enabled": True, "sink": "x"}})) == [
        (("landscape", "export", "sink"), "'x' is not a sink (sinks: out, bad)")
    ]


@pytest.mark.parametrize(
    ("section", "value"),
    [
        ("checkpoint", {"checkpoint_interval": 0}),
        ("checkpoint", {"frequency": "hourly"}),
        ("retry", {"max_attempts": 0}),
        ("landscape", {"backend": "mysql"}),
        ("landscape", {"export": {"format": "xml"}}),
        ("run_mode", "fast"),
        ("rate_limit", {"services": {"api": {}}}),
        ("payload_store", {"backend": "s3"}),
    ],
)
def test_field_constraints(section: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        ElspethSettings.model_validate(minimal(**{section: value}))


def test_settings_model_at_walks_lists_and_named_mappings() -> None:
    assert settings_model_at(()) is ElspethSettings
    assert settings_model_at(("sinks", "anything")) is SinkSettings
    assert settings_model_at(("row_plugins", 3)) is RowPluginSettings
    assert settings_model_at(("landscape", "export")) is LandscapeExportSettings
    assert settings_model_at(("sinks", "out", "options")) is None
    assert settings_model_at(("nope",)) is None
