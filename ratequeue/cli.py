"""`ratequeue` command line: run the HTTP service, look at the topology."""

from __future__ import annotations

import asyncio
import json
import logging

import typer
import uvicorn

from ratequeue.config import InvalidSetting, ServiceSettings

app = typer.Typer(help="Per-number rate-limited queues on sharded Redis.", no_args_is_help=True)


@app.command()
def serve(
    control: str = typer.Option(..., envvar="RATEQUEUE_CONTROL_URL", help="control store URL"),
    host: str = typer.Option("127.0.0.1", envvar="RATEQUEUE_HOST"),
    port: int = typer.Option(8080, envvar="RATEQUEUE_PORT"),
    min_replicas: int = typer.Option(None, envvar="RATEQUEUE_MIN_REPLICAS"),
    wait_timeout_ms: int = typer.Option(None, envvar="RATEQUEUE_WAIT_TIMEOUT_MS"),
    max_body_bytes: int = typer.Option(None, envvar="RATEQUEUE_MAX_BODY_BYTES"),
    max_queue_seconds: float = typer.Option(None, envvar="RATEQUEUE_MAX_QUEUE_SECONDS"),
    refresh_interval: float = typer.Option(None, envvar="RATEQUEUE_REFRESH_INTERVAL"),
    retry_deadline: float = typer.Option(None, envvar="RATEQUEUE_RETRY_DEADLINE"),
    log_level: str = typer.Option("warning", envvar="RATEQUEUE_LOG_LEVEL"),
) -> None:
    """Serve the ratequeue HTTP API."""
    try:
        settings = ServiceSettings.parse(
            control_url=control,
            min_replicas=min_replicas,
            wait_timeout_ms=wait_timeout_ms,
            max_body_bytes=max_body_bytes,
            max_queue_seconds=max_queue_seconds,
            refresh_interval=refresh_interval,
            retry_deadline=retry_deadline,
        )
    except InvalidSetting as error:
        typer.echo(f"ratequeue serve: refusing to start: {error}", err=True)
        raise typer.Exit(2) from None
    if not 0 < port < 65536:
        typer.echo(f"ratequeue serve: refusing to start: setting 'port': {port} is not 1-65535",
                   err=True)  # fmt: skip
        raise typer.Exit(2)
    from ratequeue.service import create_app

    logging.basicConfig(level=log_level.upper())
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level,
                access_log=False)  # fmt: skip


@app.command()
def topology(
    control: str = typer.Option(..., envvar="RATEQUEUE_CONTROL_URL", help="control store URL"),
) -> None:
    """Print the current topology as JSON."""
    import redis.asyncio as aioredis

    from ratequeue.topology import TopologyStore, topology_json

    async def load() -> dict | None:
        connection = aioredis.Redis.from_url(control)
        try:
            found = await TopologyStore(connection).load()
        finally:
            await connection.aclose()
        return None if found is None else topology_json(found)

    found = asyncio.run(load())
    if found is None:
        typer.echo("no topology in the control store", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(found, indent=2))
