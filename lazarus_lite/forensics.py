"""What is kept of a shard's former members, and for how long: the rules a returning node is
held by before it rejoins (a copy of its data files first, or a hold time), the bound on the
shard's forensics list (a count and an age), and the copies on disk under the same bound.

A copy is taken from the node's own data directory (`CONFIG GET dir`) after a `BGSAVE`, so it
holds the RDB of what the node held when it came back plus its AOF: read directly where the
controller can read that directory (the local testbed), or through a `DataCopier` (the Docker
actuator copies the files out of the container through the engine).
Not for: when a node rejoins or how (`shard_keeper`), or parking it (`ratequeue.membership`).
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError, ResponseError

from lazarus_lite.actuators import DataCopier
from lazarus_lite.errors import ActuatorError, ForensicsCopyFailed
from lazarus_lite.steps.ratequeue_promotion import connect
from ratequeue.topology import HeldNode

WEEK = 7 * 24 * 3600.0
# Where copies are written before they are renamed into their shard's place (beside the shards).
INCOMING = ".incoming"


class ForensicsRules(BaseModel):
    """How returning former members are held (`ControllerSettings` carries the same values)."""

    model_config = ConfigDict(extra="forbid")

    rejoin: bool = Field(True, description="a former member that answers again rejoins")
    hold_seconds: float = Field(
        0.0, ge=0, le=WEEK, description="a returning node stays parked this long after its failover"
    )
    keep: int = Field(5, ge=1, le=1000, description="held nodes (and copies) kept per shard")
    max_age: float = Field(WEEK, gt=0, description="older held nodes and copies are dropped")
    copy_dir: Path | None = Field(None, description="where data copies go (None: no copies)")


def bounded(held: list[HeldNode], rules: ForensicsRules, now: float) -> list[HeldNode]:
    """The forensics list within the rules' bound: nodes held longer than `max_age` dropped, and
    of the rest the `keep` most recently held (a node with no time recorded counts as held now:
    it is dated on this pass, and ages from here)."""
    dated = [n if n.held_at is not None else n.model_copy(update={"held_at": now}) for n in held]
    young = [n for n in dated if now - (n.held_at or now) <= rules.max_age]
    newest = sorted(young, key=lambda n: n.held_at or now)[-rules.keep :]
    return [n for n in dated if n in newest]  # in the list's own order


async def copy_data_files(
    node: HeldNode,
    shard: str,
    directory: Path,
    timeout: float = 30,
    copier: DataCopier | None = None,
) -> Path:
    """Save what `node` holds (`BGSAVE`) and copy its RDB and AOF files to a new directory under
    `directory/shard/` (through `copier` when given, else from the node's directory on this
    machine); returns it. Raises `ForensicsCopyFailed` naming what went wrong."""
    try:
        async with connect(node, timeout=5) as conn:
            await _save(conn, node.name, time.monotonic() + timeout)
            data_dir = Path((await conn.config_get("dir"))["dir"])
            rdb = (await conn.config_get("dbfilename"))["dbfilename"]
            aof = (await conn.config_get("appenddirname")).get("appenddirname", "")
    except (RedisError, OSError) as error:
        raise ForensicsCopyFailed(f"{node.name}: could not save its data: {error}") from error
    destination = directory / shard / f"{node.name}@{time.time():.3f}"
    # Three keepers may copy the same node at once: each writes its own directory under
    # INCOMING and renames it into place whole, so a copy in the shard's place is never partial
    # and no keeper removes another's copy.
    incoming = directory / INCOMING / f"{shard}-{uuid.uuid4().hex}"
    try:
        if copier is None:
            await asyncio.to_thread(_copy, data_dir, rdb, aof, incoming)
        else:
            names = [rdb, aof] if aof else [rdb]
            await asyncio.to_thread(copier.copy_data_out, node.name, data_dir, names, incoming)
        destination.parent.mkdir(parents=True, exist_ok=True)
        incoming.rename(destination)
    except (OSError, ActuatorError) as error:
        shutil.rmtree(incoming, ignore_errors=True)
        raise ForensicsCopyFailed(f"{node.name}: could not copy {data_dir}: {error}") from error
    return destination


def discard_copy(copy: Path) -> None:
    """Remove a copy taken for a return another keeper settled: moved out of the shard's place
    (`directory/shard/copy`) first, so readers of the place never see it half removed."""
    doomed = copy.parent.parent / INCOMING / f"discarded-{uuid.uuid4().hex}"
    try:
        doomed.parent.mkdir(parents=True, exist_ok=True)
        copy.rename(doomed)
    except OSError:
        doomed = copy
    shutil.rmtree(doomed, ignore_errors=True)


async def _save(conn: aioredis.Redis, name: str, deadline: float) -> None:
    """BGSAVE, once no other child (an AOF rewrite) is at work, and wait until it is written: a
    BGSAVE that was answered runs until `rdb_bgsave_in_progress` drops to 0."""
    while True:
        try:
            await conn.bgsave()
            break
        except ResponseError as error:  # another background save or rewrite is running
            if time.monotonic() > deadline:
                raise ForensicsCopyFailed(f"{name}: BGSAVE refused: {error}") from error
        await asyncio.sleep(0.05)
    while int((persistence := await conn.info("persistence"))["rdb_bgsave_in_progress"]):
        if time.monotonic() > deadline:
            raise ForensicsCopyFailed(f"{name}: BGSAVE not done in time")
        await asyncio.sleep(0.05)
    if persistence["rdb_last_bgsave_status"] != "ok":
        raise ForensicsCopyFailed(f"{name}: BGSAVE failed (see its log)")


def _copy(data_dir: Path, rdb: str, aof: str, destination: Path) -> None:
    if not (data_dir / rdb).is_file():
        raise FileNotFoundError(f"{data_dir / rdb} is not readable here")
    destination.mkdir(parents=True)
    shutil.copy2(data_dir / rdb, destination / rdb)
    if aof and (data_dir / aof).is_dir():
        shutil.copytree(data_dir / aof, destination / aof)


def copies_beyond_bound(
    directory: Path, shard: str, rules: ForensicsRules, now: float
) -> list[Path]:
    """The shard's copies beyond the bound (older than `max_age`, or beyond the `keep` newest)."""
    place = directory / shard
    if not place.is_dir():
        return []
    copies = sorted((p for p in place.iterdir() if p.is_dir()), key=_copied_at)
    old = [p for p in copies if now - _copied_at(p) > rules.max_age]
    young = [p for p in copies if p not in old]
    return old + young[: max(0, len(young) - rules.keep)]


def prune_copies(directory: Path, shard: str, rules: ForensicsRules, now: float) -> list[Path]:
    """Remove the shard's copies beyond the bound; returns what was removed."""
    removed = copies_beyond_bound(directory, shard, rules, now)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _copied_at(copy: Path) -> float:
    """When a copy was taken: its name says (`node@unix-seconds`); else its directory's time."""
    try:
        return float(copy.name.rpartition("@")[2])
    except ValueError:
        return copy.stat().st_mtime
