"""`lazarus events` against one real controller node (real HTTP, a real redis-server control
store): full ISO 8601 UTC dates, `--since` as an ISO time or a duration ago, `--json`."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from lazarus_lite.cli import app
from tests.lazarus.served_node import post_unmatched_event, served_node

TOKEN = f"events-token-{uuid.uuid4().hex}"
WIDE = {"COLUMNS": "300"}  # so the table folds no cell


@pytest.fixture(scope="module")
def node_with_an_event(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A node's URL and the id of one event in its audit trail."""
    with served_node(tmp_path_factory.mktemp("events"), TOKEN) as url:
        yield url, post_unmatched_event(url, TOKEN)


def lazarus_events(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["events", *args], env=WIDE)
    return result.exit_code, result.output


def test_events_json_is_one_document_with_the_audit_records(
    node_with_an_event: tuple[str, str],
) -> None:
    url, event_id = node_with_an_event
    code, output = lazarus_events("--url", url, "--json")
    assert code == 0, output
    document = json.loads(output)
    assert [record["event_id"] for record in document["events"]] == [event_id]


def test_events_table_shows_the_full_date_in_iso_8601_utc(
    node_with_an_event: tuple[str, str],
) -> None:
    url, event_id = node_with_an_event
    code, output = lazarus_events("--url", url)
    assert code == 0, output
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert re.search(rf"{today}T\d\d:\d\d:\d\dZ", output), output
    assert event_id in output


@pytest.mark.parametrize(
    ("since", "listed"),
    [("1h", True), ("2000-01-01T00:00:00Z", True), ("2999-01-01T00:00:00+02:00", False)],
)
def test_events_since_takes_an_iso_time_or_a_duration_ago(
    node_with_an_event: tuple[str, str], since: str, listed: bool
) -> None:
    url, _ = node_with_an_event
    code, output = lazarus_events("--url", url, "--since", since, "--json")
    assert code == 0, output
    assert bool(json.loads(output)["events"]) is listed


@pytest.mark.parametrize("since", ["1700000000", "yesterday", "10 minutes"])
def test_events_since_refuses_anything_else_naming_the_option(since: str) -> None:
    code, output = lazarus_events("--url", "http://127.0.0.1:9", "--since", since)
    assert code == 2
    assert "--since" in output and "ISO 8601" in output and "Traceback" not in output
