"""`lazarus` command line: run a controller node, validate rules, read the audit trail."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from lazarus_lite.settings import DEFINITIONS, ControllerSettings, InvalidSetting

app = typer.Typer(help="Lazarus-lite remediation controller.", no_args_is_help=True)
rules_app = typer.Typer(help="Rule files.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
console = Console()


@app.command()
def serve(
    node_id: str = typer.Option(..., "--node-id", envvar="LAZARUS_NODE_ID"),
    control: str = typer.Option(..., envvar="LAZARUS_CONTROL_URL", help="control store URL"),
    host: str = typer.Option("127.0.0.1", envvar="LAZARUS_HOST"),
    port: int = typer.Option(8090, envvar="LAZARUS_PORT"),
    peer: list[str] = typer.Option([], "--peer", help="URL of another node (repeat)"),
    quorum: int = typer.Option(None, envvar="LAZARUS_QUORUM"),
    quorum_timeout: float = typer.Option(None),
    min_replicas: int = typer.Option(None, envvar="LAZARUS_MIN_REPLICAS"),
    rules: list[Path] = typer.Option(None, "--rules", help="rule file or directory (repeat)"),
    workflows: Path = typer.Option(None, "--workflows"),
    actuator_dir: Path = typer.Option(None, "--actuator-dir", help="local actuator's workdir"),
    forensics_policy: str = typer.Option(None, "--forensics-policy", help="demote | stop"),
    stream: str = typer.Option(None, "--stream", help="redis | kinesis"),
    kinesis_stream: str = typer.Option(None),
    kinesis_region: str = typer.Option(None),
    kinesis_endpoint: str = typer.Option(None),
    log_level: str = typer.Option("warning", envvar="LAZARUS_LOG_LEVEL"),
) -> None:
    """Run one controller node (HTTP API + stream consumer + workflow engine)."""
    import logging

    import uvicorn

    try:
        settings = ControllerSettings.parse(
            node_id=node_id,
            control_url=control,
            peers=peer or None,
            quorum=quorum,
            quorum_timeout=quorum_timeout,
            min_replicas=min_replicas,
            rules=rules or None,
            workflows=workflows,
            actuator_dir=actuator_dir,
            forensics_policy=forensics_policy,
            stream=stream,
            kinesis_stream=kinesis_stream,
            kinesis_region=kinesis_region,
            kinesis_endpoint=kinesis_endpoint,
        )
        from lazarus_lite.service import create_app

        application = create_app(settings)
    except (InvalidSetting, ValueError) as error:
        typer.echo(f"lazarus serve: refusing to start: {error}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(
        level=log_level.upper(), format=f"%(asctime)s {node_id} %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(application, host=host, port=port, log_level=log_level, access_log=False)


@rules_app.command("validate")
def validate_rules(
    paths: list[Path] = typer.Argument(..., help="rule files or directories"),
) -> None:
    """Load rule files strictly; name the file, rule and field of every mistake."""
    from lazarus_lite import controller  # noqa: F401  (registers the steps)
    from lazarus_lite.checks import CHECKS
    from lazarus_lite.rules import RuleError, load_rules
    from lazarus_lite.workflow import WorkflowError, load_workflows

    try:
        definitions = load_workflows(DEFINITIONS / "workflows")
        book = load_rules(
            paths, known_checks=CHECKS, known_actions=[*definitions, "default.record"]
        )
    except (RuleError, WorkflowError) as error:
        typer.echo(f"invalid: {error}", err=True)
        raise typer.Exit(1) from None
    for rule in book.rules:
        console.print(f"ok: {rule.name} ({rule.criteria.event_type} → {rule.action.name})")


@app.command()
def events(
    url: str = typer.Option("http://127.0.0.1:8090", "--url", envvar="LAZARUS_URL"),
    service: str = typer.Option(None, "--service"),
    since: float = typer.Option(None, "--since", help="unix time"),
    limit: int = typer.Option(50, "--limit"),
) -> None:
    """The audit trail, newest first."""
    import httpx

    params = {
        k: v
        for k, v in {"service": service, "since": since, "limit": limit}.items()
        if v is not None
    }
    answer = httpx.get(f"{url}/v1/events", params=params, timeout=10).json()
    from rich.table import Table

    table = Table(title="lazarus events")
    for column in ("event", "type", "shard", "outcome", "rule", "reason"):
        table.add_column(column)
    for record in answer.get("events", []):
        event = record["event"]
        table.add_row(
            record["event_id"],
            event["type"],
            event.get("shard") or "",
            record["outcome"],
            record.get("rule") or "",
            record["reason"],
        )
    console.print(table)


@app.command()
def event(
    event_id: str,
    url: str = typer.Option("http://127.0.0.1:8090", "--url", envvar="LAZARUS_URL"),
) -> None:
    """One event's whole audit record (checks per node, quorum, workflow steps) as JSON."""
    import httpx

    response = httpx.get(f"{url}/v1/events/{event_id}", timeout=10)
    typer.echo(json.dumps(response.json(), indent=2))
    if response.status_code != 200:
        raise typer.Exit(1)
