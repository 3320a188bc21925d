"""The same automated failover with the event stream on AWS Kinesis (boto3 against moto's
standalone server over HTTP) instead of Redis Streams: sensors publish to Kinesis, the
controllers consume it."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import failed_over, send, wait_for
from tests.moto_server import MotoServer

pytestmark = pytest.mark.slow


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)  # the testbed's processes inherit them
    with MotoServer() as server:
        yield server.url


def test_a_killed_primary_fails_over_with_events_on_kinesis(moto: str, tmp_path: Path) -> None:
    from chaos.testbed import running_testbed

    stream = ["--stream", "kinesis", "--kinesis-endpoint", moto, "--kinesis-stream", "rq-events"]
    with running_testbed(tmp_path / "tb", shards=2, replicas=2, controller_args=stream,
                         sensor_args=stream) as testbed:  # fmt: skip
        send(testbed, "s0-primary", signal.SIGKILL)
        after = wait_for("s0 to fail over", lambda: failed_over(testbed, "s0", "s0-primary"),
                         timeout=40)  # fmt: skip
        events = httpx.get(f"{testbed.lazarus[0]}/v1/events").json()["events"]
    assert after.shard("s0").primary.name != "s0-primary"
    assert any(e["outcome"] in ("scheduled", "remediated") and e["event"]["shard"] == "s0"
               for e in events)  # fmt: skip
