"""The API as several worker processes (`ratequeue serve --workers N`): uvicorn's process
supervisor shares one listening socket among N workers and starts again one that dies; each
worker builds its own app (`worker_app`), so it has its own Redis connections and its own
topology watch. The workers write their metrics to one private directory (prometheus-client's
multiprocess mode), fresh for every start and removed at exit, so `/metrics` from any worker
counts the requests of all of them. A worker dies with the process that started it, so killing
`ratequeue serve` (SIGKILL included) takes the whole API down, as a chaos fault expects.

Not for: what the API does (`ratequeue.service`), or one-process serving (`ratequeue.cli`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from common.redis_processes import die_with_parent
from ratequeue.config import ServiceSettings

# How the serving process hands its validated settings and its pid to the workers it spawns.
SETTINGS_VARIABLE = "RATEQUEUE_WORKER_SETTINGS"
PARENT_VARIABLE = "RATEQUEUE_WORKER_PARENT"
# prometheus-client reads it when first imported: the workers are fresh interpreters.
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
METRICS_DIR_PREFIX = "ratequeue-metrics-"


def serve_with_workers(settings: ServiceSettings, *, host: str, port: int, log_level: str) -> None:
    """Serve the API with `settings.workers` processes until stopped (SIGTERM or SIGINT)."""
    remove_orphaned_metrics_dirs(Path(tempfile.gettempdir()))
    metrics_dir = Path(tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-"))
    os.environ[MULTIPROC_VARIABLE] = str(metrics_dir)
    os.environ[SETTINGS_VARIABLE] = settings.model_dump_json()
    os.environ[PARENT_VARIABLE] = str(os.getpid())
    try:
        uvicorn.run(f"{__name__}:worker_app", factory=True, workers=settings.workers, host=host,
                    port=port, log_level=log_level, access_log=False, http="httptools",
                    loop="uvloop",
                    timeout_worker_healthcheck=settings.worker_healthcheck_seconds)  # fmt: skip
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn calls this in each worker it spawns)."""
    die_with_parent()
    if os.getppid() != int(os.environ[PARENT_VARIABLE]):
        os._exit(1)  # the serving process died before the line above took effect
    settings = ServiceSettings.model_validate_json(os.environ[SETTINGS_VARIABLE])
    from ratequeue.service import create_app

    return create_app(settings, metrics_dir=Path(os.environ[MULTIPROC_VARIABLE]))


def remove_orphaned_metrics_dirs(parent: Path) -> None:
    """Remove the metrics directories of serving processes that were killed before they could
    (their name carries the pid that made them)."""
    for candidate in parent.glob(f"{METRICS_DIR_PREFIX}*"):
        pid_text = candidate.name.removeprefix(METRICS_DIR_PREFIX).partition("-")[0]
        if pid_text.isdigit() and not _running(int(pid_text)):
            shutil.rmtree(candidate, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
