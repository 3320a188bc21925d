"""Notification channels and the pager policy against real servers on loopback: an HTTP server
that plays Slack's incoming webhook and PagerDuty's Events API v2, and an SMTP server (aiosmtpd);
both record what they received."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos.announcements import RunAnnouncer
from chaos.journal import Journal
from lazarus_lite.audit import note_deliveries
from lazarus_lite.paging import Pager, PageState, escalation_key
from notifications.config import NotificationConfig, load_notification_config
from notifications.delivery import Delivery
from notifications.errors import NotificationConfigError
from notifications.notifier import Notifier
from notifications.slack import cut_escaped, escape
from tests.lazarus.recorders import HttpRecorder, LoopbackSmtp, SmtpRecorder, serving_http_recorder

ROUTING_KEY = "R0UT1NGKEY0000000000000000000001"
ESCALATION_ROUTING_KEY = "R0UT1NGKEY00000000000000000000E5"
FAST_RETRY = {"attempts": 3, "backoff_seconds": 0.05, "timeout_seconds": 2}


@pytest.fixture
def http() -> Iterator[HttpRecorder]:
    with serving_http_recorder() as recorder:
        yield recorder


@pytest.fixture
def smtp() -> Iterator[tuple[SmtpRecorder, int]]:
    handler = SmtpRecorder()
    controller = LoopbackSmtp(handler, hostname="127.0.0.1", port=0)
    controller.start()
    yield handler, controller.port
    controller.stop()


def refused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed on exit: nothing listens there


def config_for(http: HttpRecorder, smtp_port: int, **overrides: Any) -> NotificationConfig:
    data: dict[str, Any] = {
        "ack_deadline_seconds": 60,
        "retry": FAST_RETRY,
        "teams": {
            "ratequeue-oncall": {
                "slack": {"webhook_url": f"{http.url}/slack/T000/B000/secret"},
                "pagerduty": {"routing_key": ROUTING_KEY, "url": f"{http.url}/v2/enqueue"},
                "email": {
                    "smtp_host": "127.0.0.1",
                    "smtp_port": smtp_port,
                    "sender": "lazarus@example.com",
                    "to": ["oncall@example.com"],
                },
                "channels": ["pagerduty", "email"],
            },
        },
        "services": {
            "ratequeue": {"team": "ratequeue-oncall", "channels": ["pagerduty", "slack"]},
            "ratequeue-http": {"team": "ratequeue-oncall"},
        },
    }
    for key, value in overrides.items():
        data[key] = value
    return NotificationConfig.parse(data)


@pytest.fixture
async def notifier(http: HttpRecorder, smtp: tuple[SmtpRecorder, int]) -> AsyncIterator[Pager]:
    async with Pager(config_for(http, smtp[1])) as instance:
        yield instance


def all_ok(deliveries: list[Delivery]) -> bool:
    return bool(deliveries) and all(d.ok for d in deliveries)


async def sensor_pages(
    pager: Pager, incident_key: str, service: str, summary: str, *args: Any, **fields: Any
) -> list[Delivery]:
    """A sensor pages through the notifier and the controller tracks the page on intake."""
    state = pager.track(incident_key, service, summary=summary)
    return await pager.notifier.page(
        incident_key, service, summary, *args, triggered_at=state.triggered_at, **fields
    )


# -- channels -----------------------------------------------------------------------------------
async def test_trigger_acknowledge_resolve_carry_the_incident_key(
    notifier: Pager, http: HttpRecorder
) -> None:
    key = "ratequeue/s0/RedisMasterDown/10.0.0.5:6379"
    paged = await sensor_pages(
        notifier,
        key,
        "ratequeue",
        "primary of s0 down",
        {"shard": "s0"},
        source="10.0.0.5:6379",
        component="redis",
    )
    acked = await notifier.acknowledge(key, "ratequeue")
    resolved = await notifier.resolve(key, "ratequeue", "replica promoted")
    assert all_ok(paged + acked + resolved)

    events = http.pagerduty_events()
    assert [e["event_action"] for e in events] == ["trigger", "acknowledge", "resolve"]
    assert {e["dedup_key"] for e in events} == {key}
    assert {e["routing_key"] for e in events} == {ROUTING_KEY}
    payload = events[0]["payload"]
    assert payload["summary"] == "ratequeue: primary of s0 down"
    assert (payload["source"], payload["severity"]) == ("10.0.0.5:6379", "critical")
    assert (payload["component"], payload["group"]) == ("redis", "ratequeue")
    assert payload["custom_details"] == {"shard": "s0"}
    assert "payload" not in events[1] and "payload" not in events[2]

    pd = [d for d in paged + acked + resolved if d.channel == "pagerduty"]
    assert [(d.action, d.status, d.dedup_key) for d in pd] == [
        ("trigger", 202, key),
        ("acknowledge", 202, key),
        ("resolve", 202, key),
    ]
    assert [d.purpose for d in pd] == ["page", "acknowledge", "resolve"]
    assert all(ROUTING_KEY not in d.model_dump_json() for d in paged + acked + resolved)


async def test_the_sensors_notifier_pages_without_holding_the_page(
    http: HttpRecorder, smtp: tuple[SmtpRecorder, int]
) -> None:
    key = "ratequeue/s0/RedisMasterDown/10.0.0.6:6379"
    async with Notifier(config_for(http, smtp[1])) as notifier:
        paged = await notifier.page(key, "ratequeue", "primary of s0 down", triggered_at=1000.0)
    assert all_ok(paged)
    assert {d.purpose for d in paged} == {"page"}
    (event,) = http.pagerduty_events()
    assert (event["event_action"], event["dedup_key"]) == ("trigger", key)
    assert event["payload"]["timestamp"].startswith("1970-01-01T00:16:40")


AUDIT_URL = "http://lazarus.example:8090"


async def test_a_page_links_to_the_audit_record_of_its_event(
    http: HttpRecorder, smtp: tuple[SmtpRecorder, int]
) -> None:
    config = config_for(http, smtp[1], audit_url=AUDIT_URL)
    async with Notifier(config) as notifier:
        assert all_ok(await notifier.page("inc-7", "ratequeue", "s0 down", event_id="ev/7"))
    (event,) = http.pagerduty_events()
    assert event["links"] == [
        {"href": f"{AUDIT_URL}/v1/events/ev%2F7", "text": "audit record of event ev/7"}
    ]


async def test_a_page_without_an_audit_url_carries_no_links(
    http: HttpRecorder, smtp: tuple[SmtpRecorder, int]
) -> None:
    async with Notifier(config_for(http, smtp[1])) as notifier:
        assert all_ok(await notifier.page("inc-8", "ratequeue", "s0 down", event_id="ev-8"))
    (event,) = http.pagerduty_events()
    assert "links" not in event


async def test_an_escalation_links_to_the_audit_record_of_the_tracked_event(
    http: HttpRecorder, smtp: tuple[SmtpRecorder, int]
) -> None:
    config = config_for(http, smtp[1], audit_url=f"{AUDIT_URL}/")
    async with Pager(config, watch=False) as pager:
        pager.track("inc-9", "ratequeue", summary="s1 down", event_id="ev-9")
        assert all_ok(await pager.escalate("inc-9", "ratequeue", "quorum not reached"))
    (trigger,) = [e for e in http.pagerduty_events() if e["event_action"] == "trigger"]
    assert [link["href"] for link in trigger["links"]] == [f"{AUDIT_URL}/v1/events/ev-9"]


async def test_slack_gets_the_message_text(notifier: Pager, http: HttpRecorder) -> None:
    deliveries = await notifier.escalate(
        "inc-42", "ratequeue", "quorum not reached: 1 of 2 nodes passed"
    )
    slack = [d for d in deliveries if d.channel == "slack"]
    assert len(slack) == 1 and slack[0].ok and slack[0].status == 200
    assert "secret" not in slack[0].target  # the webhook path is a credential
    (message,) = http.received("/slack/")
    assert "ESCALATED" in message["text"]
    assert "quorum not reached" in message["text"] and "inc-42" in message["text"]
    assert message["blocks"][0]["type"] == "section"


async def test_email_arrives_naming_the_incident(
    http: HttpRecorder, smtp: tuple[SmtpRecorder, int]
) -> None:
    recorder, port = smtp
    async with Pager(config_for(http, port)) as notifier:  # ratequeue-http: team default
        deliveries = await notifier.escalate(
            "inc-mail-7", "ratequeue-http", "workflow failed", {"workflow": "wf-9"}
        )
    (mail,) = [d for d in deliveries if d.channel == "email"]
    assert mail.ok and mail.attempts == 1
    ((sender, recipients, message),) = recorder.messages
    assert (sender, recipients) == ("lazarus@example.com", ["oncall@example.com"])
    assert "ESCALATED" in message["Subject"] and "inc-mail-7" in message["Subject"]
    body = message.get_content()
    assert "incident: inc-mail-7" in body and "workflow failed" in body and "wf-9" in body


def test_a_chaos_verdict_email_carries_the_link_to_its_journal(
    tmp_path: Path, http: HttpRecorder, smtp: tuple[SmtpRecorder, int]
) -> None:
    recorder, port = smtp
    config = config_for(http, port)
    announcer = RunAnnouncer(
        config, "ratequeue-http", tmp_path, say=print, journal_url="https://chaos.example/journals"
    )
    journal = Journal(run_id="run-7", experiment="Kill a replica", deployment="staging",
                      environment="dev", started_at=time.time(), verdict="passed")  # fmt: skip
    announcer.ended(journal)
    ((_, _, message),) = recorder.messages
    body = message.get_content()
    assert "PASSED" in message["Subject"]
    assert "journal of run run-7: https://chaos.example/journals/run-7.json" in body


async def test_each_service_gets_its_own_channels_or_its_teams(
    notifier: Pager, http: HttpRecorder, smtp: tuple[SmtpRecorder, int]
) -> None:
    own = await notifier.notifier.notify("ratequeue", "shadow mode on", incident_key="a")
    assert [d.channel for d in own] == ["slack"]  # pagerduty is for pages, not information
    team_default = await notifier.notifier.page("b", "ratequeue-http", "healthz failing")
    assert sorted(d.channel for d in team_default) == ["email", "pagerduty"]
    assert all_ok(own + team_default)
    assert len(http.received("/slack/")) == 1 and len(smtp[0].messages) == 1
    assert [e["dedup_key"] for e in http.pagerduty_events()] == ["b"]

    (unrouted,) = await notifier.notifier.page("c", "unknown-service", "who owns this?")
    assert (unrouted.channel, unrouted.ok) == ("notifier", False)
    assert "no notification route for service 'unknown-service'" in (unrouted.error or "")


async def test_default_team_routes_unlisted_services(
    http: HttpRecorder, smtp: tuple[SmtpRecorder, int]
) -> None:
    config = config_for(http, smtp[1], default_team="ratequeue-oncall")
    async with Pager(config) as notifier:
        deliveries = await notifier.notifier.page("d", "billing", "down")
    assert sorted(d.channel for d in deliveries) == ["email", "pagerduty"]


async def test_a_failing_channel_is_a_failed_delivery_after_bounded_retries(
    http: HttpRecorder, smtp: tuple[SmtpRecorder, int]
) -> None:
    teams = {
        "broken": {
            "slack": {"webhook_url": f"{http.url}/fail/T000/B000/secret"},
            "pagerduty": {
                "routing_key": ROUTING_KEY,
                "url": f"http://127.0.0.1:{refused_port()}/v2/enqueue",
            },
            "email": {
                "smtp_host": "127.0.0.1",
                "smtp_port": refused_port(),
                "sender": "lazarus@example.com",
                "to": ["oncall@example.com"],
            },
        },
        "gone": {"slack": {"webhook_url": f"{http.url}/gone/T000/B000/secret"}},
    }
    services = {"flaky": {"team": "broken"}, "gone": {"team": "gone"}}
    config = config_for(http, smtp[1], teams=teams, services=services)
    started = time.monotonic()
    async with Pager(config) as notifier:
        deliveries = await notifier.notifier.page("e", "flaky", "everything is broken")
        (gone,) = await notifier.notifier.notify("gone", "nobody listens")
    assert time.monotonic() - started < 10
    by_channel = {d.channel: d for d in deliveries}
    assert sorted(by_channel) == ["email", "pagerduty", "slack"]
    for delivery in deliveries:
        assert not delivery.ok and delivery.attempts == 3, delivery
    assert by_channel["slack"].status == 500 and "500" in (by_channel["slack"].error or "")
    assert "Connect" in (by_channel["pagerduty"].error or "")
    assert "Connection refused" in (by_channel["email"].error or "")
    assert len(http.received("/fail/")) == 3  # every attempt reached the server
    assert all("secret" not in d.model_dump_json() for d in deliveries)
    # a 4xx other than 429 is final: no retry
    assert (gone.ok, gone.status, gone.attempts) == (False, 404, 1)


# -- the acknowledgement deadline ---------------------------------------------------------------
async def test_an_acknowledged_page_not_resolved_by_the_deadline_is_escalated(
    http: HttpRecorder, smtp: tuple[SmtpRecorder, int]
) -> None:
    escalated: asyncio.Queue[tuple[PageState, list[Delivery]]] = asyncio.Queue()

    async def on_deadline(state: PageState, deliveries: list[Delivery]) -> None:
        await escalated.put((state, deliveries))

    config = config_for(http, smtp[1], ack_deadline_seconds=0.3)
    async with Pager(config, on_deadline=on_deadline) as notifier:
        key = "held-page"
        notifier.track(key, "ratequeue", summary="primary of s1 down")  # the sensor paged
        assert all_ok(await notifier.acknowledge(key, "ratequeue"))
        state, deliveries = await asyncio.wait_for(escalated.get(), timeout=5)
        assert state.status == "escalated" and state.escalated_at is not None
        assert state.escalated_at - state.triggered_at < 1.5
        assert "not resolved within the 0.3s deadline" in state.reason
        assert all_ok(deliveries) and {d.purpose for d in deliveries} == {"escalate"}

        events = http.pagerduty_events()
        assert [(e["event_action"], e["dedup_key"]) for e in events] == [
            ("acknowledge", key),
            ("trigger", escalation_key(key)),
        ]
        details = events[1]["payload"]["custom_details"]
        assert details["incident_key"] == key and "0.3s deadline" in details["escalation_reason"]
        assert "ESCALATED" in http.received("/slack/")[-1]["text"]

        # the controller never takes the page back ...
        (refused,) = await notifier.acknowledge(key, "ratequeue")
        assert (refused.channel, refused.ok) == ("notifier", False)
        assert "escalated" in (refused.error or "")
        # ... but resolves both alerts when its workflow succeeds after all
        resolved = await notifier.resolve(key, "ratequeue")
        assert all_ok(resolved)
    resolves = [e["dedup_key"] for e in http.pagerduty_events() if e["event_action"] == "resolve"]
    assert sorted(resolves) == [key, escalation_key(key)]  # sent at once, in either order
    assert len([e for e in http.pagerduty_events() if e["event_action"] == "acknowledge"]) == 1


async def test_an_undecided_page_is_escalated_and_a_late_ack_refused(
    http: HttpRecorder, smtp: tuple[SmtpRecorder, int]
) -> None:
    config = config_for(http, smtp[1], ack_deadline_seconds=0.3)
    async with Pager(config, watch=False) as notifier:
        notifier.track("late", "ratequeue", summary="s2 down", triggered_at=time.time() - 1)
        deliveries = await notifier.acknowledge("late", "ratequeue")
        refusal, *escalation = deliveries
        assert (refusal.channel, refusal.ok) == ("notifier", False)
        assert "past the 0.3s deadline" in (refusal.error or "")
        assert all_ok(escalation) and {d.purpose for d in escalation} == {"escalate"}
        # never acknowledged; the still-triggered page is re-triggered with the reason
        assert [(e["event_action"], e["dedup_key"]) for e in http.pagerduty_events()] == [
            ("trigger", "late")
        ]
        assert "escalation_reason" in http.pagerduty_events()[0]["payload"]["custom_details"]

        notifier.track("silent", "ratequeue", summary="s3 down")
        deliveries = await asyncio.wait_for(notifier.enforce_ack_deadline("silent"), timeout=5)
        assert all_ok(deliveries)
        state = notifier.page_state("silent")
        assert state is not None and state.status == "escalated"
        assert "no decision within the 0.3s" in state.reason


async def test_a_page_resolved_in_time_is_not_escalated(
    http: HttpRecorder, smtp: tuple[SmtpRecorder, int]
) -> None:
    fired: list[PageState] = []

    async def on_deadline(state: PageState, deliveries: list[Delivery]) -> None:
        fired.append(state)

    config = config_for(http, smtp[1], ack_deadline_seconds=0.3)
    async with Pager(config, on_deadline=on_deadline) as notifier:
        await sensor_pages(notifier, "quick", "ratequeue", "s0 down")
        await notifier.acknowledge("quick", "ratequeue")
        await notifier.resolve("quick", "ratequeue")
        assert await notifier.enforce_ack_deadline("quick") == []
        await asyncio.sleep(0.5)
    assert fired == []
    assert [e["event_action"] for e in http.pagerduty_events()] == [
        "trigger",
        "acknowledge",
        "resolve",
    ]


def test_deliveries_go_into_the_audit_record() -> None:
    from lazarus_lite.audit import AuditRecord

    record = AuditRecord(
        event_id="e1", event={}, service="ratequeue", received_at=0.0, coordinator="n1"
    )
    delivered = Delivery(
        channel="pagerduty",
        action="acknowledge",
        ok=True,
        status=202,
        attempts=1,
        purpose="acknowledge",
        incident_key="k",
        dedup_key="k",
    )
    failed = Delivery(
        channel="slack",
        action="message",
        ok=False,
        status=500,
        attempts=3,
        error="slack webhook answered HTTP 500",
        purpose="acknowledge",
    )
    note_deliveries(record, [delivered, failed])
    assert [n.kind for n in record.notes] == ["notification", "notification"]
    assert record.notes[0].detail == "acknowledge: pagerduty acknowledge delivered (202)"
    assert "FAILED after 3 attempt(s)" in record.notes[1].detail
    assert record.notes[1].data["status"] == 500 and record.notes[0].data["dedup_key"] == "k"


# -- configuration ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            lambda d: d["teams"]["oncall"]["email"].update(smtp_port="25"),
            "field 'teams.oncall.email.smtp_port'",
        ),
        (
            lambda d: d["teams"]["oncall"].update(slak={"webhook_url": "http://x"}),
            "field 'teams.oncall.slak'",
        ),
        (
            lambda d: d["services"]["ratequeue"].update(team="nobody"),
            "field 'services.ratequeue.team'",
        ),
        (
            lambda d: d["services"]["ratequeue"].update(channels=["pager"]),
            "field 'services.ratequeue.channels.0'",
        ),
        (
            lambda d: d["teams"]["oncall"]["pagerduty"].update(routing_key=""),
            "field 'teams.oncall.pagerduty.routing_key'",
        ),
        (
            lambda d: d["teams"]["oncall"].update(channels=["slack"]),
            "field 'teams.oncall.channels'",
        ),
        (lambda d: d.update(ack_deadline_seconds=0), "field 'ack_deadline_seconds'"),
    ],
)
def test_a_bad_config_names_the_field(tmp_path: Path, change: Any, named: str) -> None:
    import yaml

    data: dict[str, Any] = {
        "teams": {
            "oncall": {
                "pagerduty": {"routing_key": "${PD_KEY}"},
                "email": {
                    "smtp_host": "localhost",
                    "smtp_port": 25,
                    "sender": "lazarus@example.com",
                    "to": ["oncall@example.com"],
                },
            }
        },
        "services": {"ratequeue": {"team": "oncall", "channels": ["pagerduty"]}},
    }
    path = tmp_path / "notifications.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_notification_config(path, env={"PD_KEY": "k"}).route("ratequeue") is not None
    change(data)
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(NotificationConfigError) as error:
        load_notification_config(path, env={"PD_KEY": "k"})
    assert named in str(error.value) and str(path) in str(error.value)


def test_an_unset_environment_variable_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "n.yaml"
    path.write_text("teams:\n  t:\n    slack: {webhook_url: '${NO_SUCH_HOOK}'}\n")
    with pytest.raises(NotificationConfigError, match=r"teams\.t\.slack\.webhook_url.*NO_SUCH"):
        load_notification_config(path, env={})


def test_the_example_config_loads() -> None:
    example = (
        Path(__file__).parents[2] / "lazarus_lite" / "definitions" / "notifications.example.yaml"
    )
    env = {
        "RATEQUEUE_SLACK_WEBHOOK": "https://hooks.slack.example/services/T/B/x",
        "RATEQUEUE_PD_ROUTING_KEY": "k" * 32,
        "PLATFORM_SLACK_WEBHOOK": "https://hooks.slack.example/services/T/B/y",
    }
    config = load_notification_config(example, env=env)
    ratequeue = config.route("ratequeue")
    assert ratequeue is not None and ratequeue.channels == ("pagerduty", "slack")
    http_route = config.route("ratequeue-http")
    assert http_route is not None
    assert http_route.channels == ("pagerduty", "slack", "email")
    assert (ratequeue.ack_deadline, http_route.ack_deadline) == (60, 120)
    assert config.route("lazarus") is not None and config.route("lazarus").team == "platform"
    assert config.route("unlisted") is not None  # default_team


async def test_slack_text_escapes_ampersand_and_angle_brackets(
    notifier: Pager, http: HttpRecorder
) -> None:
    await notifier.notifier.notify("ratequeue", "lag <5s & <!channel> > 0", {"reason": "a<b & c>d"})
    (message,) = http.received("/slack/")
    assert "lag &lt;5s &amp; &lt;!channel&gt; &gt; 0" in message["text"]
    assert "<" not in message["text"].replace("*[INFO]*", "")
    context = message["blocks"][1]["elements"]
    assert {"type": "mrkdwn", "text": "*reason*: a&lt;b &amp; c&gt;d"} in context


async def test_a_long_slack_headline_is_cut_without_splitting_an_escaped_character(
    notifier: Pager, http: HttpRecorder
) -> None:
    await notifier.notifier.notify("ratequeue", "&" * 1000)  # escaped: 5000 characters
    (message,) = http.received("/slack/")
    section = message["blocks"][0]["text"]["text"]
    assert 3000 - len("&amp;") < len(section) <= 3000
    assert section.endswith("&amp;") and "&" not in section.replace("&amp;", "")


async def test_slack_links_stay_whole_in_a_block_of_their_own_after_a_long_headline(
    notifier: Pager, http: HttpRecorder
) -> None:
    link = {"href": "https://chaos.example/journals/r1.json?a=1&b=2", "text": "journal of r1"}
    await notifier.notifier.change("ratequeue", "x" * 4000, links=[link])
    (message,) = http.received("/slack/")
    headline, links, context = message["blocks"]
    assert len(headline["text"]["text"]) == 3000 and "chaos.example" not in str(headline)
    whole = "<https://chaos.example/journals/r1.json?a=1&amp;b=2|journal of r1>"
    assert links == {"type": "section", "text": {"type": "mrkdwn", "text": whole}}
    assert context["type"] == "context" and whole in message["text"]


async def test_a_long_detail_is_cut_to_slack_s_text_limit_and_the_message_delivered(
    notifier: Pager, http: HttpRecorder
) -> None:
    deliveries = await notifier.notifier.notify("ratequeue", "lag", {"reason": "<" * 4000})
    assert [d.ok for d in deliveries if d.channel == "slack"] == [True]
    (message,) = http.received("/slack/")
    reason = next(e["text"] for e in message["blocks"][-1]["elements"] if "reason" in e["text"])
    assert 3000 - len("&lt;") < len(reason) <= 3000 and reason.endswith("&lt;")


async def test_links_past_slack_s_text_limit_are_left_out_whole_and_counted(
    notifier: Pager, http: HttpRecorder
) -> None:
    links = [{"href": f"https://chaos.example/journals/{i:03}.json", "text": "x" * 60}
             for i in range(60)]  # fmt: skip
    deliveries = await notifier.notifier.change("ratequeue", "a run", links=links)
    assert [d.ok for d in deliveries if d.channel == "slack"] == [True]
    (message,) = http.received("/slack/")
    lines = message["blocks"][1]["text"]["text"].split("\n")
    assert all(line.startswith("<https://") and line.endswith(">") for line in lines[:-1])
    assert lines[-1] == f"(and {60 - len(lines) + 1} more)"


@pytest.mark.parametrize("limit", range(20, 30))
def test_escaped_text_is_cut_only_between_entities(limit: int) -> None:
    cut = cut_escaped(escape("ab<&>" * 10), limit)
    assert len(cut) <= limit
    assert cut == escape("ab<&>" * 10)[: len(cut)]
    assert "&" not in cut.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "")
