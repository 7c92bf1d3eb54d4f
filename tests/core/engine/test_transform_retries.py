"""Retries of transient transform errors per the ``retry`` settings, each attempt a node state.

The flaky transform is a third-party plugin installed for the real CLI through an
``elspeth.plugins`` entry point (a ``*.dist-info`` folder on PYTHONPATH).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli import query
from tests.support.pipelines import (
    assert_every_token_terminal_once,
    csv_sink,
    make_csv,
    only_run,
    outcome_counts,
    pipeline,
    plugin_site,
    python_path,
    read_csv,
    run_pipeline,
)

FLAKY = '''
from elspeth_core.errors import TransientPluginError
from elspeth_core.plugins import PluginConfig, TransformResult


class FlakyOptions(PluginConfig):
    fail_times: int = 2


class Flaky:
    """Transient failures by row id: ids ending in 3 fail ``fail_times`` times, ids ending in 7
    time out once, multiples of 25 never succeed; ids ending in 9 raise a non-transient error."""

    name = "flaky"
    version = "0.1"
    config_model = FlakyOptions

    def __init__(self, options=None):
        self.config = FlakyOptions.model_validate(options or {})
        self.calls = {}

    def process(self, row):
        key = row["id"]
        calls = self.calls[key] = self.calls.get(key, 0) + 1
        if key % 25 == 0:
            raise TransientPluginError(f"service down for {key}")
        if key % 10 == 3 and calls <= self.config.fail_times:
            raise TransientPluginError(f"timeout #{calls} for {key}")
        if key % 10 == 7 and calls == 1:
            raise TimeoutError(f"read timed out for {key}")
        if key % 10 == 9:
            raise ValueError(f"bad value in {key}")
        return TransformResult.ok({**row, "attempts": calls})
'''

ROWS = 60


def _states(db: Path | str, run_id: str) -> dict[int, list[tuple[int, str, dict | None]]]:
    """Row id -> the flaky node's states (attempt, status, error) in attempt order."""
    found = query(
        db,
        f"""SELECT r.row_index, s.attempt, s.status, s.error_json
                          FROM node_states s JOIN tokens t ON t.token_id = s.token_id
                          JOIN rows r ON r.row_id = t.row_id
                          WHERE s.run_id = '{run_id}' AND s.node_id LIKE 'transform-flaky%'
                          ORDER BY r.row_index, s.attempt""",
    )
    states: dict[int, list[tuple[int, str, dict | None]]] = {}
    for index, attempt, status, error in found:
        states.setdefault(index, []).append((attempt, status, json.loads(error) if error else None))
    return states


def test_transient_errors_are_retried_and_every_attempt_is_recorded(
    tmp_path: Path, landscape_url: str
) -> None:
    site = plugin_site(tmp_path, "flaky_plugin", FLAKY, {"flaky": "Flaky"})
    source = make_csv(tmp_path / "in.csv", ROWS)
    sinks = {"out": csv_sink(tmp_path, "out"), "failed": csv_sink(tmp_path, "failed")}
    data = pipeline(
        tmp_path,
        source,
        landscape=landscape_url,
        sinks=sinks,
        row_plugins=[{"plugin": "flaky", "options": {"fail_times": 2}, "on_error": "failed"}],
        retry={
            "max_attempts": 3,
            "initial_delay_seconds": 0.01,
            "max_delay_seconds": 0.02,
            "exponential_base": 2.0,
        },
    )
    result = run_pipeline(tmp_path, data, env=python_path(site))
    assert result.code == 0, result.stderr
    db, run_id = landscape_url, only_run(landscape_url)
    states = _states(db, run_id)
    assert sorted(states) == list(range(ROWS))
    for key, recorded in states.items():
        attempts = [(attempt, status) for attempt, status, _error in recorded]
        if key % 25 == 0:
            assert attempts == [(1, "failed"), (2, "failed"), (3, "failed")], key
            assert all(
                e and e["transient"] and e["type"] == "TransientPluginError"
                for _a, _s, e in recorded
            )
        elif key % 10 == 3:
            assert attempts == [(1, "failed"), (2, "failed"), (3, "completed")], key
        elif key % 10 == 7:
            assert attempts == [(1, "failed"), (2, "completed")], key
            assert recorded[0][2] == {
                "type": "TimeoutError",
                "transient": True,
                "reason": f"read timed out for {key}",
            }
        elif key % 10 == 9:
            assert attempts == [(1, "failed")], key  # not transient: no retry
            assert recorded[0][2] is not None and recorded[0][2]["transient"] is False
        else:
            assert attempts == [(1, "completed")], key

    out = {int(r["id"]): int(r["attempts"]) for r in read_csv(tmp_path / "out" / "out.csv")}
    expected_out = {
        k: 3 if k % 10 == 3 else 2 if k % 10 == 7 else 1
        for k in range(ROWS)
        if k % 25 and k % 10 != 9
    }
    assert out == expected_out
    failed = [int(r["id"]) for r in read_csv(tmp_path / "out" / "failed.csv")]
    assert failed == [k for k in range(ROWS) if k % 25 == 0 or k % 10 == 9]
    errors = dict(
        query(
            db,
            f"""SELECT r.row_index, e.error_json FROM transform_errors e
                                JOIN tokens t ON t.token_id = e.token_id
                                JOIN rows r ON r.row_id = t.row_id
                                WHERE e.run_id = '{run_id}'""",
        )
    )
    assert "after 3 attempts" in errors[25]
    assert "ValueError: bad value in 9" in errors[9]
    assert outcome_counts(db, run_id) == {"completed": len(expected_out), "routed": len(failed)}
    assert_every_token_terminal_once(db, run_id)


def test_one_attempt_means_no_retry(tmp_path: Path, landscape_url: str) -> None:
    site = plugin_site(tmp_path, "flaky_plugin", FLAKY, {"flaky": "Flaky"})
    source = make_csv(tmp_path / "in.csv", 20)
    data = pipeline(
        tmp_path,
        source,
        landscape=landscape_url,
        row_plugins=[{"plugin": "flaky", "on_error": "discard"}],
        retry={"max_attempts": 1, "initial_delay_seconds": 0},
    )
    assert run_pipeline(tmp_path, data, env=python_path(site)).code == 0
    db, run_id = landscape_url, only_run(landscape_url)
    states = _states(db, run_id)
    assert all(len(recorded) == 1 for recorded in states.values())
    discarded = [k for k in range(20) if k % 25 == 0 or k % 10 in (3, 7, 9)]
    assert outcome_counts(db, run_id) == {
        "quarantined": len(discarded),
        "completed": 20 - len(discarded),
    }
