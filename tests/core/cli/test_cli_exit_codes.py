"""``elspeth --help`` documents the exit codes 0/1/2/3, and the CLI returns what it documents.

Representative cases of each code are tested through the CLI elsewhere: 0 by every successful
run; 1 by the bad-settings corpus (tests/cli/test_bad_input.py); 2 by a run whose rows fail
(tests/cli/test_bad_input.py); 3 by every resume refusal (tests/cli/test_resume_refusals.py).
Tested here: the help text itself; that the error classes carry the documented codes; that Click's
usage errors (unknown command or option, missing option), which Click exits with 2, exit 1 as
documented; and ``run`` without ``--execute`` (a refused action: exit 1, nothing created).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from elspeth_core import errors
from elspeth_core.cli.common import EXIT_OK, EXIT_RESUME_REFUSED, EXIT_RUN_FAILED, EXIT_USAGE
from elspeth_core.export import RunExportFailed
from elspeth_core.payloads import PayloadIntegrityError
from tests.support.cli import run_cli

DOCUMENTED = {
    0: "0 success",
    1: "1 validation/usage error or refused action",
    2: "2 run failed",
    3: "3 resume refused (not resumable",
}


def test_help_documents_every_exit_code(tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path, env={"COLUMNS": "100"})
    assert result.code == 0, result.stderr
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "Exit codes: " in text, result.stdout
    positions = [text.find(phrase) for phrase in DOCUMENTED.values()]
    assert all(p > 0 for p in positions), (positions, text)
    assert positions == sorted(positions)  # 0, 1, 2, 3 in that order
    for reason in ("not found", "completed", "in progress", "no checkpoint", "source changed"):
        assert reason in text[positions[3] :], reason


def test_the_exit_codes_paragraph_is_one_paragraph(tmp_path: Path) -> None:
    """On a wide terminal it is a single line: no hard line breaks in the middle of a sentence."""
    result = run_cli("--help", cwd=tmp_path, env={"COLUMNS": "400"})
    assert result.code == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if "Exit codes:" in line]
    assert all(phrase in line for phrase in DOCUMENTED.values()), line
    assert line.rstrip().endswith("source changed)."), line


def test_the_error_classes_carry_the_documented_codes() -> None:
    assert (EXIT_OK, EXIT_USAGE, EXIT_RUN_FAILED, EXIT_RESUME_REFUSED) == (0, 1, 2, 3)
    assert errors.ConfigError("x").exit_code == EXIT_USAGE
    assert errors.ExpressionError("x").exit_code == EXIT_USAGE
    assert errors.RunFailedError("x").exit_code == EXIT_RUN_FAILED
    assert PayloadIntegrityError("x").exit_code == EXIT_USAGE
    refusals = [
        errors.RunNotFound("R"),
        errors.RunAlreadyCompleted("R"),
        errors.RunInProgress("R", "host:1:2:n", "T"),
        errors.NoCheckpoint("R"),
        errors.ConfigurationMismatch("R", ["a: 1 != 2"]),
        errors.SourceChanged("R", "row 1 differs"),
    ]
    assert {type(r).__name__: r.exit_code for r in refusals} == {
        type(r).__name__: EXIT_RESUME_REFUSED for r in refusals
    }
    assert RunExportFailed.exit_code == EXIT_RUN_FAILED  # "(or its run-end audit export failed)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "Usage:"),  # no command: the help, as a usage error
        (("nosuchcmd",), "No such command 'nosuchcmd'"),
        (("run",), "Missing option '--settings'"),
        (("run", "-s", "x.yaml", "--bogus"), "No such option: --bogus"),
        (("resume",), "Missing argument 'run_id'"),
        (("runs", "show"), "Missing argument"),
        (("runs", "list", "--limit", "many"), "Invalid value for '--limit'"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_usage_errors_exit_1_not_clicks_2(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert result.code == EXIT_USAGE, (result.code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert message in result.stdout + result.stderr
    assert sorted(tmp_path.iterdir()) == []  # nothing created


def test_run_without_execute_shows_the_plan_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("id,amount\n1,10\n")
    settings = {
        "datasource": {
            "plugin": "csv",
            "options": {"path": "in.csv", "schema": {"fields": "dynamic"}},
        },
        "sinks": {"out": {"plugin": "csv", "options": {"path": "out/out.csv"}}},
        "output_sink": "out",
        "landscape": {"url": "sqlite:///runs/audit.db"},
        "payload_store": {"base_path": "payloads"},
    }
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(settings))
    result = run_cli("run", "-s", "pipeline.yaml", cwd=tmp_path)
    assert result.code == EXIT_USAGE, (result.code, result.stdout, result.stderr)
    assert re.search(r"add --execute", result.stderr), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "pipeline.yaml"]
    dry = run_cli("run", "-s", "pipeline.yaml", "--dry-run", cwd=tmp_path)
    assert dry.code == EXIT_OK, (dry.code, dry.stdout, dry.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "pipeline.yaml"]
