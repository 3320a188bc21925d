"""`chaos` command line: the local testbed and the main job."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from chaos import testbed as testbed_module
from chaos.load import LoadProfile

app = typer.Typer(help="Chaos experiments against a ratequeue deployment.", no_args_is_help=True)
testbed_app = typer.Typer(help="A whole deployment on loopback.", no_args_is_help=True)
app.add_typer(testbed_app, name="testbed")
console = Console()


@testbed_app.command("up")
def testbed_up(
    dir: Path = typer.Option(..., "--dir", help="directory for state, data and logs"),
    shards: int = typer.Option(3, min=1, max=64),
    replicas: int = typer.Option(2, min=1, max=8),
    controllers: int = typer.Option(3, min=0, max=9, help="Lazarus-lite nodes (0: none)"),
    sensors: bool = typer.Option(True, help="a heartbeat sensor beside every replica"),
) -> None:
    """Start a testbed and leave it running; writes DIR/testbed.json."""
    try:
        state = testbed_module.up(
            dir, shards=shards, replicas=replicas, controllers=controllers, sensors=sensors
        )
    except (testbed_module.TestbedError, RuntimeError) as error:
        console.print(f"[red]testbed up failed:[/] {error}")
        raise typer.Exit(1) from None
    where = testbed_module.state_path(dir)
    console.print(f"testbed up: API {state.api}, control {state.control}, "
                  f"{len(state.nodes)} processes; state in {where}")  # fmt: skip


@testbed_app.command("status")
def testbed_status(dir: Path = typer.Option(..., "--dir")) -> None:
    """Show the testbed's processes and the API's health."""
    try:
        state, alive, health = testbed_module.status(dir)
    except testbed_module.TestbedError as error:
        console.print(f"[red]{error}[/]")
        raise typer.Exit(1) from None
    table = Table(title=f"testbed {dir}")
    for column in ("name", "role", "shard", "address", "pid", "alive"):
        table.add_column(column)
    for node in state.nodes:
        table.add_row(node.name, node.role, node.shard or "", f"{node.host}:{node.port}",
                      str(node.pid), "yes" if alive[node.name] else "[red]no[/]")  # fmt: skip
    console.print(table)
    in_lb = bool(health and health.get("in_load_balancer"))
    console.print(f"API {state.api}: " + ("healthy" if in_lb else "[red]not healthy[/]"))
    if not (in_lb and all(alive.values())):
        raise typer.Exit(1)


@testbed_app.command("down")
def testbed_down(dir: Path = typer.Option(..., "--dir")) -> None:
    """Stop every process the testbed started."""
    try:
        stopped = testbed_module.down(dir)
    except testbed_module.TestbedError as error:
        console.print(f"[red]{error}[/]")
        raise typer.Exit(1) from None
    console.print(f"testbed down: stopped {len(stopped)} processes")


@app.command()
def demo(
    shards: int = typer.Option(3, min=1, max=16),
    replicas: int = typer.Option(2, min=1, max=4),
    seconds: float = typer.Option(10, min=1, max=3600),
    rate: float = typer.Option(100, help="enqueues per second", min=1),
    numbers: int = typer.Option(200, min=1),
) -> None:
    """Start a local testbed, push traffic through it, print what happened, stop it."""
    from chaos.demo import run_demo

    profile = LoadProfile(numbers=numbers, enqueue_per_second=rate)
    ok = run_demo(shards=shards, replicas=replicas, seconds=seconds, profile=profile,
                  console=console)  # fmt: skip
    raise typer.Exit(0 if ok else 1)
