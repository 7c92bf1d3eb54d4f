"""``elspeth explain``: the lineage of one row, token or sink line, as a tree or as JSON.

The document is built by ``elspeth_core.explain`` (schema ``elspeth.explain/v1``, documented in
``docs/explain-json.md``); this module only checks the options and renders it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.tree import Tree

from elspeth_core.cli.common import DEFAULT_DATABASE, EXIT_USAGE, cli_errors, emit_json, fail, out
from elspeth_core.explain import ExplainTarget, explain
from elspeth_core.landscape.access import open_existing

_HASH = 12


def explain_command(
    run: str = typer.Option(..., "--run", help="Run ID, or 'latest'."),
    row: str | None = typer.Option(None, "--row", help="Explain a source row (all its tokens)."),
    token: str | None = typer.Option(None, "--token", help="Explain one token."),
    sink: str | None = typer.Option(None, "--sink", help="With --line: a sink's output line."),
    line: int | None = typer.Option(
        None, "--line", min=1, help="1-based data line of --sink (CSV header not counted)."
    ),
    as_json: bool = typer.Option(False, "--json", help="The elspeth.explain/v1 JSON document."),
    database: str = typer.Option(DEFAULT_DATABASE, "--database", "-d", help="Landscape URL."),
    payloads: Path | None = typer.Option(
        None, "--payloads", help="Payload store path (default: the run's payload_store)."
    ),
) -> None:
    """Explain a row: source data and hash, every node state, routing decision, batch, sink line.

    Give exactly one of --row ROW_ID, --token TOKEN_ID, or --sink NAME --line N.
    """
    with cli_errors():
        chosen = [row is not None, token is not None, sink is not None or line is not None]
        if sum(chosen) != 1 or (sink is None) != (line is None):
            raise fail(
                "explain needs exactly one of --row ROW_ID, --token TOKEN_ID, --sink NAME --line N",
                "e.g. elspeth explain --run latest --sink high --line 3",
                EXIT_USAGE,
            )
        target = ExplainTarget(run=run, row_id=row, token_id=token, sink=sink, line=line)
        with open_existing(database) as db:
            started = time.perf_counter()
            document = explain(db, target, payloads_path=payloads)
            elapsed_ms = (time.perf_counter() - started) * 1000
        if as_json:
            emit_json(document)
            return
        # Wrap long lines inside the tree instead of the shared console's soft wrap, which
        # would let rich crop tree lines at the terminal width.
        Console(highlight=False, soft_wrap=False).print(render_tree(document))
        out.print(f"[dim]{len(document['tokens'])} token(s), {elapsed_ms:.1f} ms[/]", markup=True)


# ---------------------------------------------------------------------- the tree
def render_tree(doc: dict[str, Any]) -> Tree:
    run = doc["run"]
    tree = Tree(
        f"[bold]Run[/] {run['run_id']} [{_colour(run['status'])}]{run['status']}[/]  "
        f"config {_short(run['config_hash'])}",
    )
    attempts = ", ".join(f"#{a['attempt']} {a['kind']} {a['status']}" for a in run["attempts"])
    tree.add(f"attempts: {escape(attempts)}")
    _row_branch(tree, doc["row"])
    if len(doc["source_rows"]) > 1:
        rows = tree.add(f"{len(doc['source_rows'])} source rows in this lineage")
        for source in doc["source_rows"][:20]:
            rows.add(
                f"row {source['row_id']} index {source['row_index']} "
                f"hash {_short(source['source_data_hash'])}"
            )
    for token in doc["tokens"]:
        _token_branch(tree, token, doc["focus_token_id"])
    if doc["truncated"]:
        tree.add("[yellow]lineage truncated: too many tokens; explain one token with --token[/]")
    return tree


def _row_branch(tree: Tree, row: dict[str, Any]) -> None:
    source = row["source_node"]
    branch = tree.add(
        f"[bold]Row[/] {row['row_id']} index {row['row_index']} from {source['plugin_name']} "
        f"source, recorded by attempt {row['recorded_by_attempt']}"
    )
    branch.add(f"source_data_hash {row['source_data_hash']}")
    payload = row["payload"]
    if payload["status"] == "available":
        text = json.dumps(payload["data"], ensure_ascii=False, sort_keys=True)
        branch.add(f"payload {escape(text[:300])}{'…' if len(text) > 300 else ''}")
    else:
        branch.add(f"[yellow]payload {payload['status']}[/]: {escape(payload['detail'])}")
    for error in row["validation_errors"]:
        branch.add(f"[red]quarantined[/] → {error['destination']}: {escape(str(error['reason']))}")


def _token_branch(tree: Tree, token: dict[str, Any], focus: str | None) -> None:
    label = f"[bold]Token[/] {token['token_id']} ({token['relation']})"
    if token["branch_name"]:
        label += f" branch {token['branch_name']}"
    if token["token_id"] == focus:
        label = f"[reverse]{label}[/]"
    branch = tree.add(label)
    if token["parents"]:
        shown = ", ".join(
            f"{p['token_id']}{'' if p['in_family'] else ' (row ' + str(p['row_id']) + ')'}"
            for p in token["parents"][:5]
        )
        more = f" +{len(token['parents']) - 5} more" if len(token["parents"]) > 5 else ""
        branch.add(f"parents: {shown}{more}")
    routes = {route["state_id"]: route for route in token["routing"]}
    for state in token["node_states"]:
        node = state["node"]
        text = (
            f"step {state['step_index']} {node['name']} ({node['node_type']} {node['plugin_name']})"
            f" attempt {state['attempt']} [{_colour(state['status'])}]{state['status']}[/]"
            f" {state['duration_ms']:.3f} ms in {_short(state['input_hash'])}"
            f" out {_short(state['output_hash'])}"
        )
        route = routes.get(state["state_id"])
        if route is not None:
            text += (
                f" [cyan]{escape(str(route['condition']))} → {route['edge_label']} → "
                f"{route['destination']}[/]"
            )
        if state["error"]:
            text += f" [red]error[/] {escape(json.dumps(state['error'], ensure_ascii=False))}"
        branch.add(text)
    for batch in token["batches"]:
        retry = f", retry of {batch['retry_of_batch_id']}" if batch["retry_of_batch_id"] else ""
        branch.add(
            f"batch {batch['batch_id']} {batch['aggregation_name']} attempt {batch['attempt']} "
            f"[{_colour(batch['status'])}]{batch['status']}[/] {batch['role']} "
            f"#{batch['ordinal']} of {batch['members']}{retry}"
        )
    for error in token["transform_errors"]:
        branch.add(
            f"[red]transform error[/] at {error['node']['name']} → {error['destination']}: "
            f"{escape(json.dumps(error['error'], ensure_ascii=False))}"
        )
    outcome = token["terminal_outcome"]
    if outcome is None:
        kinds = ", ".join(o["outcome"] for o in token["outcomes"]) or "none"
        branch.add(f"[yellow]no terminal outcome[/] (outcomes: {kinds})")
        return
    text = f"⇒ [{_colour(outcome['outcome'])}]{outcome['outcome']}[/]"
    if outcome["sink_name"]:
        text += f" → sink {outcome['sink_name']} line {outcome['sink_line']}"
        artifact = outcome["artifact"]
        if artifact:
            text += (
                f" ({escape(artifact['path_or_uri'])}, content {_short(artifact['content_hash'])})"
            )
    if outcome["reason"]:
        text += f": {escape(outcome['reason'])}"
    branch.add(text)


def _short(digest: str | None) -> str:
    return f"{digest[:_HASH]}…" if digest else "-"


def _colour(status: str) -> str:
    if status in ("completed", "routed", "coalesced", "forked", "expanded", "consumed_in_batch"):
        return "green"
    if status in ("failed", "quarantined"):
        return "red"
    return "yellow"
