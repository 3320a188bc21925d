"""moto's standalone server as a real HTTP endpoint for boto3 in tests (Kinesis and friends).

`MotoServer` starts `python -m moto.server` on a free loopback port, returns once it answers
HTTP, and always stops it: on `__exit__`, on a start that fails, and (through PR_SET_PDEATHSIG)
when the test run itself is killed. Not for: anything outside tests; no AWS credentials are set
here (tests put dummy ones in the environment).
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from common.nodes import CLIENT_HOST
from common.redis_processes import free_port


class MotoStartError(RuntimeError):
    pass


def _die_with_parent() -> None:
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class MotoServer:
    """One moto server process; use as a context manager (`with MotoServer() as moto: moto.url`)."""

    def __init__(self, *, host: str = CLIENT_HOST, start_timeout: float = 20.0) -> None:
        self.host = host
        self.port = 0
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._logdir = tempfile.TemporaryDirectory(prefix="moto-")
        self.log_path = Path(self._logdir.name) / "moto.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> MotoServer:
        for attempt in range(3):
            self.port = free_port((self.host,))
            command = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
            kwargs: dict[str, object] = {"stdout": subprocess.DEVNULL, "stdin": subprocess.DEVNULL}
            if threading.current_thread() is threading.main_thread():
                kwargs["preexec_fn"] = _die_with_parent
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(command, stderr=log, **kwargs)  # type: ignore[call-overload]
            if self._wait_until_answers():
                return self
            text = self.log()
            self.stop()
            if "Address already in use" not in text or attempt == 2:
                raise MotoStartError(f"moto server did not start on port {self.port}:\n{text}")
        raise MotoStartError("moto server: no port could be bound")  # pragma: no cover

    def _wait_until_answers(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1) as answer:
                    if answer.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        return False

    def log(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=timeout)

    def __enter__(self) -> MotoServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._logdir.cleanup()
