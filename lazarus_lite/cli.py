"""`lazarus` command line: run a controller node, validate rules, read the audit trail."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from common.errors import InvalidSetting
from common.version import add_version_option
from lazarus_lite.settings import DEFINITIONS, ControllerSettings

app = typer.Typer(help="Lazarus-lite remediation controller.", no_args_is_help=True)
rules_app = typer.Typer(help="Rule files.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
add_version_option(app, "lazarus")
console = Console()


@app.command()
def serve(
    node_id: str = typer.Option(..., "--node-id", envvar="LAZARUS_NODE_ID"),
    control: str = typer.Option(..., envvar="LAZARUS_CONTROL_URL", help="control store URL"),
    coordination_backend: str = typer.Option(
        None, envvar="LAZARUS_COORDINATION_BACKEND", help="what keeps the store: redis | etcd"
    ),
    etcd_endpoints: str = typer.Option(
        None, "--etcd-endpoints", envvar="LAZARUS_ETCD_ENDPOINTS", help="etcd member URLs, a,b,c"
    ),
    host: str = typer.Option("127.0.0.1", envvar="LAZARUS_HOST"),
    port: int = typer.Option(8090, envvar="LAZARUS_PORT"),
    peer: list[str] = typer.Option([], "--peer", help="URL of another node (repeat)"),
    quorum: int = typer.Option(None, envvar="LAZARUS_QUORUM"),
    quorum_timeout: float = typer.Option(None),
    min_replicas: int = typer.Option(None, envvar="LAZARUS_MIN_REPLICAS"),
    probe_timeout: float = typer.Option(
        None, envvar="LAZARUS_PROBE_TIMEOUT", help="seconds a check's probe of a host may take"
    ),
    rules: list[Path] = typer.Option(None, "--rules", help="rule file or directory (repeat)"),
    workflows: Path = typer.Option(None, "--workflows"),
    actuator: str = typer.Option(
        None, "--actuator", envvar="LAZARUS_ACTUATOR", help="none | local | docker"
    ),
    actuator_dir: Path = typer.Option(None, "--actuator-dir", help="local actuator's workdir"),
    replica_maxmemory: str = typer.Option(
        None, "--replica-maxmemory", help="local actuator's replacements' maxmemory (e.g. 1gb)"
    ),
    docker_deployment: str = typer.Option(None, envvar="LAZARUS_DOCKER_DEPLOYMENT"),
    docker_client_network: str = typer.Option(None, envvar="LAZARUS_DOCKER_CLIENT_NETWORK"),
    docker_peer_network: str = typer.Option(None, envvar="LAZARUS_DOCKER_PEER_NETWORK"),
    docker_redis_image: str = typer.Option(None, envvar="LAZARUS_DOCKER_REDIS_IMAGE"),
    docker_image: str = typer.Option(None, envvar="LAZARUS_DOCKER_IMAGE"),
    forensics_policy: str = typer.Option(None, "--forensics-policy", help="demote | stop"),
    rejoin_returning: bool = typer.Option(
        None, "--rejoin-returning/--no-rejoin-returning", help="former members rejoin"
    ),
    forensics_hold: float = typer.Option(None, help="seconds a returning node stays parked"),
    forensics_keep: int = typer.Option(None, help="held nodes and copies kept per shard"),
    forensics_max_age: float = typer.Option(None, help="seconds a held node or copy is kept"),
    forensics_dir: Path = typer.Option(None, "--forensics-dir", help="copies of data files"),
    stream: str = typer.Option(None, "--stream", help="redis | kinesis"),
    kinesis_stream: str = typer.Option(None),
    kinesis_region: str = typer.Option(None),
    kinesis_endpoint: str = typer.Option(None),
    api_token: str = typer.Option(None, envvar="LAZARUS_API_TOKEN", help="bearer token"),
    region: str = typer.Option(None, envvar="LAZARUS_REGION"),
    control_realm: list[str] = typer.Option(None, "--control-realm", help="controlled region"),
    max_event_age: float = typer.Option(None, help="seconds; older events are stale"),
    incident_ttl: float = typer.Option(
        None, envvar="LAZARUS_INCIDENT_TTL", help="seconds duplicate alarms collapse"
    ),
    incident_retry_seconds: float = typer.Option(
        None, help="a declined incident is decided again on a report this much later"
    ),
    resume_interval: float = typer.Option(
        None,
        envvar="LAZARUS_RESUME_INTERVAL",
        help="seconds between looks for workflows a stopped node left",
    ),
    forensics_interval: float = typer.Option(
        None, envvar="LAZARUS_FORENSICS_INTERVAL", help="seconds between the shard keeper's rounds"
    ),
    rate_limit_threshold: int = typer.Option(None, help="incidents per service per window"),
    rate_limit_override: list[str] = typer.Option(
        None,
        "--rate-limit-override",
        envvar="LAZARUS_RATE_LIMIT_OVERRIDES",
        help="SERVICE=N: N incidents per window for that service (repeat; env: space-separated)",
    ),
    rate_limit_window: float = typer.Option(None, help="seconds"),
    breaker_threshold: int = typer.Option(None, help="failing services per region"),
    breaker_window: float = typer.Option(None, help="seconds"),
    notifications: Path = typer.Option(None, "--notifications", help="channels (YAML)"),
    services: Path = typer.Option(None, "--services", help="service profiles directory"),
    environment: str = typer.Option(None, envvar="LAZARUS_ENVIRONMENT"),
    watch_interval: float = typer.Option(None, envvar="LAZARUS_WATCH_INTERVAL", help="seconds"),
    sensor_silence_after: float = typer.Option(
        None, envvar="LAZARUS_SENSOR_SILENCE_AFTER", help="seconds without a sensor heartbeat"
    ),
    self_report_after: float = typer.Option(
        None, envvar="LAZARUS_SELF_REPORT_AFTER", help="seconds a primary is down, unreported"
    ),
    unwritable_after: float = typer.Option(
        None, envvar="LAZARUS_UNWRITABLE_AFTER", help="seconds a shard may stay unwritable"
    ),
    log_level: str = typer.Option("warning", envvar="LAZARUS_LOG_LEVEL"),
) -> None:
    """Run one controller node (HTTP API + stream consumer + workflow engine)."""
    import logging

    import uvicorn

    try:
        settings = ControllerSettings.parse(
            node_id=node_id,
            control_url=control,
            coordination_backend=coordination_backend,
            etcd_endpoints=etcd_endpoints,
            peers=peer or None,
            quorum=quorum,
            quorum_timeout=quorum_timeout,
            min_replicas=min_replicas,
            probe_timeout=probe_timeout,
            rules=rules or None,
            workflows=workflows,
            actuator=actuator,
            actuator_dir=actuator_dir,
            replica_maxmemory=replica_maxmemory,
            docker_deployment=docker_deployment,
            docker_client_network=docker_client_network,
            docker_peer_network=docker_peer_network,
            docker_redis_image=docker_redis_image,
            docker_image=docker_image,
            forensics_policy=forensics_policy,
            rejoin_returning=rejoin_returning,
            forensics_hold=forensics_hold,
            forensics_keep=forensics_keep,
            forensics_max_age=forensics_max_age,
            forensics_dir=forensics_dir,
            stream=stream,
            kinesis_stream=kinesis_stream,
            kinesis_region=kinesis_region,
            kinesis_endpoint=kinesis_endpoint,
            api_token=api_token,
            region=region,
            control_realm=control_realm or None,
            max_event_age=max_event_age,
            incident_ttl=incident_ttl,
            incident_retry_seconds=incident_retry_seconds,
            resume_interval=resume_interval,
            forensics_interval=forensics_interval,
            rate_limit_threshold=rate_limit_threshold,
            rate_limit_overrides=rate_limit_override or None,
            rate_limit_window=rate_limit_window,
            breaker_threshold=breaker_threshold,
            breaker_window=breaker_window,
            notifications=notifications,
            services=services,
            environment=environment,
            watch_interval=watch_interval,
            sensor_silence_after=sensor_silence_after,
            self_report_after=self_report_after,
            unwritable_after=unwritable_after,
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
    category: str = typer.Option(
        "all", "--category", help="failover | host_replacement | scaling | all"
    ),
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
            row["event_id"],
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
