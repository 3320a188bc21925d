"""`lazarus` command line: run a controller node, validate rules, read the audit trail."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from common.errors import InvalidSetting
from common.settings_options import refuse_to_start, with_settings
from common.version import add_version_option
from lazarus_lite.settings import DEFINITIONS, ControllerSettings
from lazarus_lite.workflow.definition import CATEGORIES

app = typer.Typer(help="Lazarus-lite remediation controller.", no_args_is_help=True)
rules_app = typer.Typer(help="Rule files.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
add_version_option(app, "lazarus")
console = Console()


@app.command()
@with_settings(ControllerSettings, env_prefix="LAZARUS_", command_name="lazarus serve")
def serve(settings: ControllerSettings) -> None:
    """Run one controller node (HTTP API + stream consumer + workflow engine)."""
    import logging

    import uvicorn

    try:
        from lazarus_lite.service import create_app

        application = create_app(settings)
    except (InvalidSetting, ValueError) as error:
        raise refuse_to_start("lazarus serve", error) from None
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s {settings.node_id} %(levelname)s %(name)s: %(message)s",
    )
    uvicorn.run(application, host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=False)  # fmt: skip


@rules_app.command("validate")
def validate_rules(
    paths: list[Path] = typer.Argument(..., help="rule files or directories"),
) -> None:
    """Load rule files strictly; name the file, rule and field of every mistake."""
    from lazarus_lite import steps  # noqa: F401  (registers the steps)
    from lazarus_lite.checks import CHECKS
    from lazarus_lite.errors import RuleError, WorkflowError
    from lazarus_lite.rules import load_rules
    from lazarus_lite.workflow.loading import load_workflows

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
    since: str = typer.Option(
        None,
        "--since",
        metavar="TIME|DURATION",
        help="only events received since an ISO 8601 time (2026-12-03T04:00:00Z, UTC when no "
        "offset) or a duration ago (10m, 4h)",
    ),
    limit: int = typer.Option(50, "--limit"),
    json_output: bool = typer.Option(
        False, "--json", help="print the API's answer as one JSON document instead of a table"
    ),
) -> None:
    """The audit trail, newest first; times are ISO 8601 UTC."""
    import time

    from rich.table import Table

    from common.points_in_time import iso_utc, parse_since

    since_epoch = None
    if since is not None:
        try:
            since_epoch = parse_since(since, now=time.time())
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="'--since'") from None
    params = {
        k: v
        for k, v in {"service": service, "since": since_epoch, "limit": limit}.items()
        if v is not None
    }
    answer = _call("GET", f"{url}/v1/events", params=params)
    if json_output:
        typer.echo(json.dumps(answer))
        return
    table = Table(title="lazarus events")
    for column in ("received (UTC)", "event", "type", "shard", "outcome", "rule", "reason"):
        table.add_column(column, overflow="fold")
    for record in answer.get("events", []):
        event = record["event"]
        table.add_row(
            iso_utc(record["received_at"]),
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
    typer.echo(json.dumps(_call("GET", f"{url}/v1/events/{event_id}"), indent=2))


def _url_option() -> str:
    return typer.Option("http://127.0.0.1:8090", "--url", envvar="LAZARUS_URL")


def _token_option() -> str:
    return typer.Option(None, "--token", envvar="LAZARUS_API_TOKEN", help="bearer token")


def _call(method: str, url: str, token: str | None = None, **kwargs: object) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(method, url, headers=headers, timeout=10, **kwargs)
    except httpx.HTTPError as error:
        typer.echo(f"cannot reach {url}: {error}", err=True)
        raise typer.Exit(1) from None
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"message": response.text[:200]}}
    if response.status_code >= 400:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        message = error.get("message", body) if isinstance(error, dict) else body
        hint = " (pass --token or set LAZARUS_API_TOKEN)" if response.status_code == 401 else ""
        typer.echo(f"refused ({response.status_code}): {message}{hint}", err=True)
        raise typer.Exit(1)
    return body


killswitch_app = typer.Typer(help="Suspend remediation per event category.", no_args_is_help=True)
shadow_app = typer.Typer(help="Notification-only mode per service.", no_args_is_help=True)
app.add_typer(killswitch_app, name="killswitch")
app.add_typer(shadow_app, name="shadow")


def _print_switches(engaged: dict) -> None:
    if not engaged:
        console.print("kill switch: off for every category")
    for category, info in engaged.items():
        console.print(
            f"kill switch ON: {'all categories' if category == '*' else category}"
            f" (by {info.get('by') or '?'}: {info.get('reason') or 'no reason given'})"
        )


@killswitch_app.command("enable")
def killswitch_enable(
    category: str = typer.Option("all", "--category", help=" | ".join([*CATEGORIES, "all"])),
    reason: str = typer.Option("", "--reason"),
    url: str = _url_option(),
    token: str = _token_option(),
) -> None:
    """Suspend every action of a category: events escalate to a person instead."""
    import getpass

    body = _call(
        "POST",
        f"{url}/v1/killswitch",
        token,
        json={"enabled": True, "category": category, "reason": reason, "by": getpass.getuser()},
    )
    _print_switches(body["engaged"])


@killswitch_app.command("disable")
def killswitch_disable(
    category: str = typer.Option("all", "--category"),
    url: str = _url_option(),
    token: str = _token_option(),
) -> None:
    body = _call(
        "POST", f"{url}/v1/killswitch", token, json={"enabled": False, "category": category}
    )
    _print_switches(body["engaged"])


@killswitch_app.command("status")
def killswitch_status(url: str = _url_option()) -> None:
    _print_switches(_call("GET", f"{url}/v1/killswitch")["engaged"])


@shadow_app.command("enable")
def shadow_enable(
    service: str = typer.Option("*", "--service", help="a service, or * for all"),
    url: str = _url_option(),
    token: str = _token_option(),
) -> None:
    """Decide as usual, record what would have been done, do nothing."""
    body = _call("POST", f"{url}/v1/shadow", token, json={"enabled": True, "service": service})
    console.print(f"shadow mode: {body['services'] or 'off everywhere'}")


@shadow_app.command("disable")
def shadow_disable(
    service: str = typer.Option("*", "--service"),
    url: str = _url_option(),
    token: str = _token_option(),
) -> None:
    body = _call("POST", f"{url}/v1/shadow", token, json={"enabled": False, "service": service})
    console.print(f"shadow mode: {body['services'] or 'off everywhere'}")


@shadow_app.command("status")
def shadow_status(url: str = _url_option()) -> None:
    services = _call("GET", f"{url}/v1/shadow")["services"]
    console.print(f"shadow mode: {services or 'off everywhere'}")


@app.command("shadow-report")
def shadow_report_command(url: str = _url_option()) -> None:
    """What shadow mode would have done, next to what happened afterwards."""
    from rich.table import Table

    table = Table(title="shadow decisions")
    for column in ("event", "service", "shard", "would run", "afterwards", "agrees"):
        table.add_column(column)
    for row in _call("GET", f"{url}/v1/shadow-report")["decisions"]:
        agrees = {True: "yes", False: "[red]no[/]", None: "?"}[row["agrees"]]
        table.add_row(
            row["event_id"] or "(shard keeper)",  # the keeper's changes have no event
            row["service"],
            row.get("shard") or "",
            row["action"],
            row["afterwards"],
            agrees,
        )
    console.print(table)


@app.command()
def breaker(url: str = _url_option(), region: str = typer.Option(None, "--region")) -> None:
    """Circuit breaker state per region."""
    params = {"region": region} if region else {}
    states = _call("GET", f"{url}/v1/breaker", params=params)["breakers"]
    if not states:
        console.print("no failing services recorded in any region: every breaker closed")
    for state in states:
        status = "[red]OPEN[/]" if state["open"] else "closed"
        console.print(
            f"{state['region']}: {status} — {len(state['failing'])} failing services "
            f"(threshold {state['threshold']}): {', '.join(state['failing'])}"
        )
