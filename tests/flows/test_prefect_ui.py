"""What an operator sees in the Prefect UI for a `run-pipeline` flow run, in headless Chromium.

The UI is the one the local server serves (the React UI under /v2); the flow run comes from
the repository's `run-pipeline` deployment on the shared server of `conftest.deployed_project`.
The pages are checked by their visible text, and screenshots are kept under
`test-artifacts/prefect-ui/` (gitignored) for a person to look at.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from examples.generate import generate
from tests.support.browser import render_dom, screenshot, visible_text
from tests.support.cli import gate_pipeline, url_query, write_settings
from tests.support.flow_runs import read_run_artifacts, wait_for, wait_for_flow_run

if TYPE_CHECKING:
    from tests.flows.conftest import DeployedProject

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "prefect-ui"
ROWS = 3_000
# A blank or error page at this size is a few kilobytes; a rendered page is far more.
MIN_SCREENSHOT_BYTES = 20_000


async def _completed_run(settings: Path) -> tuple[Any, list[Any]]:
    flow_run = await run_deployment(
        "run_pipeline/run-pipeline", parameters={"settings_path": str(settings)}, timeout=0
    )
    async with get_client() as client:
        final = await wait_for_flow_run(
            client,
            flow_run.id,
            lambda r: r.state is not None and r.state.is_final(),
            timeout=240,
        )
        artifacts = await wait_for(
            lambda: read_run_artifacts(client, final.id),
            lambda found: any(a.type == "markdown" for a in found),
            timeout=30,
            what="summary artifact",
        )
    return final, artifacts


def test_flow_run_and_summary_pages_show_the_elspeth_run(
    deployed_project: DeployedProject, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    generate(str(source), ROWS, seed=5, bad_every=101)
    data = gate_pipeline(tmp_path, source)
    settings = write_settings(tmp_path / "settings.yaml", data)
    with deployed_project.client_settings():
        final, artifacts = asyncio.run(_completed_run(settings))
    assert final.state is not None and final.state.is_completed(), final.state
    [(run_id,)] = url_query(data["landscape"]["url"], "SELECT run_id FROM runs")
    [summary] = [a for a in artifacts if a.type == "markdown"]

    ui = deployed_project.server.url
    run_page = f"{ui}/v2/runs/flow-run/{final.id}"
    text = visible_text(render_dom(run_page))
    assert final.name in text, text[:2000]
    assert "Completed" in text
    assert run_id in text, text[:2000]  # the elspeth-run tag and the log lines name it

    summary_page = f"{ui}/v2/artifacts/artifact/{summary.id}"
    text = visible_text(render_dom(summary_page))
    # The heading's run ID is a code span: the text has a space before the colon.
    assert re.search(rf"ELSPETH run {run_id} ?: completed", text), text[:2000]
    quarantined = ROWS // 101
    assert f"quarantined {quarantined}" in text, text[:2000]
    assert f"elspeth runs show {run_id}" in text

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, url in (("flow-run", run_page), ("summary-artifact", summary_page)):
        (SCREENSHOTS / f"{name}.png").unlink(missing_ok=True)  # prove this run wrote it
        path = screenshot(url, SCREENSHOTS / f"{name}.png")
        size = path.stat().st_size
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert size > MIN_SCREENSHOT_BYTES, (name, size)
        print(f"{name}: {path} ({size} bytes)")
