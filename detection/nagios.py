"""The sensor's check as a Nagios plugin (`detection check`): is the primary of this replica alive,
and is the replica's link to it fresh?

The verdict and the output line are pure functions of the probe results (`evaluate`,
`CheckOutcome.line`), tested without Redis; `run_check` only gathers the probes. Output follows
the Nagios plugin conventions: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, and one line
`REDIS-PRIMARY <STATUS> - <text> | <perfdata>` with perfdata as
`'label'=value[UOM];[warn];[crit];[min];[max]`.

Verdict: the replica cannot be read or is not a replica → UNKNOWN (the check cannot judge the
primary); the primary does not answer PING within the timeout → CRITICAL; otherwise the age of
the replica's last I/O from its primary (`master_last_io_seconds_ago`, or
`master_link_down_since_seconds` while the link is down) against the warning and critical
thresholds, and a link that is not up is at least WARNING.

For: Nagios/NRPE and humans. Not for: the sensor's incident logic (detection.sensor) or any
remediation.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TypeVar

from common.durations import parse_duration
from detection import probes
from detection.errors import UsageProblem
from detection.probes import ProbeResult

SERVICE_LABEL = "REDIS-PRIMARY"
T = TypeVar("T")


class Status(IntEnum):
    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


@dataclass(frozen=True)
class Thresholds:
    warning_io_seconds: float = 2.0
    critical_io_seconds: float = 5.0

    def __post_init__(self) -> None:
        for name in ("warning_io_seconds", "critical_io_seconds"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: {value!r} is not a number >= 0")
        if self.warning_io_seconds > self.critical_io_seconds:
            raise ValueError(
                f"warning_io_seconds ({self.warning_io_seconds:g}) is above "
                f"critical_io_seconds ({self.critical_io_seconds:g})"
            )


def format_number(value: float) -> str:
    """Plain decimal notation (perfdata must not use exponents), no trailing zeros."""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"


_LABEL_NEEDS_QUOTES = re.compile(r"[\s='|]")


@dataclass(frozen=True)
class Perfdata:
    """One performance value: `'label'=value[UOM];[warn];[crit];[min];[max]`."""

    label: str
    value: float | None  # None: unknown ('U')
    uom: str = ""  # "", "s", "%", "B", "c", ...
    warn: float | None = None
    crit: float | None = None
    min: float | None = None
    max: float | None = None

    def render(self) -> str:
        label = self.label.replace("'", "''")
        if _LABEL_NEEDS_QUOTES.search(self.label):
            label = f"'{label}'"
        value = "U" if self.value is None else f"{format_number(self.value)}{self.uom}"
        fields = [value] + [
            "" if limit is None else format_number(limit)
            for limit in (self.warn, self.crit, self.min, self.max)
        ]
        while len(fields) > 1 and fields[-1] == "":
            fields.pop()
        return f"{label}={';'.join(fields)}"


def _one_line(text: str) -> str:
    # '|' starts the perfdata part; the first line is all Nagios keeps.
    return " ".join(text.replace("|", "/").split())


@dataclass(frozen=True)
class CheckOutcome:
    status: Status
    summary: str
    perfdata: list[Perfdata] = field(default_factory=list)

    def line(self) -> str:
        text = f"{SERVICE_LABEL} {self.status.name} - {_one_line(self.summary)}"
        if self.perfdata:
            text += " | " + " ".join(p.render() for p in self.perfdata)
        return text

    @property
    def exit_code(self) -> int:
        return int(self.status)

    def as_json(self) -> dict[str, Any]:
        """The outcome as one JSON document (`detection check --json`): the same verdict, the
        status line and the perfdata as fields (a value of None is perfdata's 'U')."""
        return {
            "status": self.status.name,
            "exit_code": self.exit_code,
            "summary": self.summary,
            "line": self.line(),
            "perfdata": [
                {"label": p.label, "value": p.value, "uom": p.uom, "warn": p.warn,
                 "crit": p.crit, "min": p.min, "max": p.max}
                for p in self.perfdata
            ],
        }  # fmt: skip


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def io_age(info: dict[str, Any]) -> float | None:
    """Seconds since the replica last heard from its primary, or None if unknown."""
    if info.get("master_link_status") == "up":
        age = _number(info.get("master_last_io_seconds_ago"))
    else:
        age = _number(info.get("master_link_down_since_seconds"))
    return age if age is not None and age >= 0 else None


def unknown(summary: str) -> CheckOutcome:
    return CheckOutcome(Status.UNKNOWN, summary)


def evaluate(
    *,
    replica: str,
    replica_info: dict[str, Any] | None,
    replica_error: str | None,
    primary: str | None,
    probe: ProbeResult | None,
    thresholds: Thresholds,
    timeout: float,
) -> CheckOutcome:
    """The verdict on one replica and its primary, from what the probes found.

    `primary` is the address that was PINGed (None if it could not be determined) and `probe`
    the PING result (None if no PING was sent)."""
    if replica_info is None:
        return unknown(f"replica {replica} cannot be read: {replica_error or 'no answer'}")
    role = replica_info.get("role")
    if role != "slave":
        return unknown(f"{replica} is not a replica (role {role or 'unknown'})")
    if primary is None or probe is None:
        return unknown(f"replica {replica} does not name its primary")

    link = str(replica_info.get("master_link_status") or "unknown")
    age = io_age(replica_info)
    _, offset = probes.replica_offset(replica_info)
    perf = [Perfdata("last_io", age, "s", thresholds.warning_io_seconds,
                     thresholds.critical_io_seconds, 0)]  # fmt: skip
    if offset is not None:
        perf.append(Perfdata("offset", offset, "c"))
    follows = probes.replica_master(replica_info)
    note = f" (the replica follows {follows})" if follows and follows != primary else ""

    if not probe.ok:
        reason = probe.error or "no answer"
        if reason == "timed out":
            reason = f"timed out after {format_number(timeout)} s"
        return CheckOutcome(
            Status.CRITICAL,
            f"primary {primary} does not answer PING: {reason}; replica link {link}{note}",
            [Perfdata("latency", None, "s"), *perf],
        )
    perf.insert(0, Perfdata("latency", probe.latency_s, "s"))
    answers = f"primary {primary} answers in {_ms(probe.latency_s)}"

    if age is None:
        status = Status.OK if link == "up" else Status.WARNING
        io_text = "last I/O unknown"
    # Past the threshold, not at it: the perfdata's `;2;5` is the plugin guidelines' range
    # "2", which alerts outside 0..2, its ends included (01.range_expressions.md).
    elif age > thresholds.critical_io_seconds:
        status, io_text = Status.CRITICAL, f"last I/O {format_number(age)} s ago"
    elif age > thresholds.warning_io_seconds:
        status, io_text = Status.WARNING, f"last I/O {format_number(age)} s ago"
    else:
        status, io_text = Status.OK, f"last I/O {format_number(age)} s ago"

    if link != "up":
        status = max(status, Status.WARNING)
        where = f"down for {format_number(age)} s" if age is not None else link
        summary = f"{answers}, but the replica's link is {where}{note}"
    elif status is Status.OK:
        summary = f"{answers}, link up{note}"
    else:
        summary = f"{answers}, link up but {io_text}{note}"
    return CheckOutcome(status, summary, perf)


# The Monitoring Plugins Interface (monitoring-plugins/monitoring-plugin-guidelines,
# 02.Input.md): -t/--timeout limits the whole run, "integer (meaning seconds) or a time duration
# string", and a run it ends exits UNKNOWN with a message. Each probe has its own, shorter limit
# (--probe-timeout): a primary that does not answer within it is the CRITICAL the check is for.
DEFAULT_PLUGIN_TIMEOUT = 10.0
DEFAULT_PROBE_TIMEOUT = 1.0


@dataclass(frozen=True)
class CheckRequest:
    replica: str
    primary: str | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    timeout: float = DEFAULT_PROBE_TIMEOUT
    plugin_timeout: float = DEFAULT_PLUGIN_TIMEOUT


REPLICA_INFO = "the replica's INFO"
PRIMARY_PING = "the primary's PING"


@dataclass
class PendingProbes:
    """The probes a check is waiting for, so a check cut short by -t/--timeout can say where
    it was."""

    names: list[str] = field(default_factory=list)

    async def wait_for(self, name: str, probe: Awaitable[T]) -> T:
        self.names.append(name)
        answer = await probe  # a probe cancelled by -t stays pending, for the message
        self.names.remove(name)
        return answer


def timed_out(plugin_timeout: float, waiting_for: list[str] | None = None) -> CheckOutcome:
    where = f", waiting for {' and '.join(waiting_for)}" if waiting_for else ""
    return unknown(f"the check did not finish within its -t/--timeout of "
                   f"{format_number(plugin_timeout)} s{where}")  # fmt: skip


def _seconds(option: str, text: str, *, minimum_exclusive: bool) -> float:
    try:
        value = parse_duration(text)
    except ValueError as error:
        raise UsageProblem(f"invalid value for {option}: {error}") from None
    bad = value <= 0 if minimum_exclusive else value < 0
    if bad or not math.isfinite(value):
        bound = "> 0" if minimum_exclusive else ">= 0"
        raise UsageProblem(f"invalid value for {option}: {text!r} is not a number {bound}")
    return value


def parse_request(
    *,
    replica: str | None,
    primary: str | None = None,
    warning_io_seconds: str = "2",
    critical_io_seconds: str = "5",
    timeout: str = "10",
    probe_timeout: str = "1",
    extra: list[str] | None = None,
) -> CheckRequest:
    """The check's options from their command-line text; raises UsageProblem naming the
    option."""
    if extra:
        raise UsageProblem(f"unexpected argument {' '.join(extra)!r}")
    if not replica:
        raise UsageProblem("missing option --replica HOST:PORT")
    for option, address in (("--replica", replica), ("--primary", primary)):
        if address is not None:
            try:
                probes.parse_address(address)
            except ValueError as error:
                raise UsageProblem(f"invalid value for {option}: {error}") from None
    warning = _seconds("--warning-io-seconds", warning_io_seconds, minimum_exclusive=False)
    critical = _seconds("--critical-io-seconds", critical_io_seconds, minimum_exclusive=False)
    if warning > critical:
        raise UsageProblem(
            f"invalid value for --warning-io-seconds: {format_number(warning)} is above "
            f"--critical-io-seconds {format_number(critical)}"
        )
    per_probe = _seconds("--probe-timeout", probe_timeout, minimum_exclusive=True)
    whole = _seconds("--timeout", timeout, minimum_exclusive=True)
    # Without --primary the probes run one after the other (INFO names the primary to PING).
    # Probes that cannot all time out within -t would turn a silent primary (CRITICAL) into
    # UNKNOWN. -t/--timeout used to be the per-probe limit, so the message names both.
    in_sequence = 1 if primary is not None else 2
    if in_sequence * per_probe >= whole:
        probes_text = "the probe" if in_sequence == 1 else "2 probes in sequence (INFO, PING)"
        raise UsageProblem(
            f"invalid value for --probe-timeout: {probes_text} of {format_number(per_probe)} s "
            f"each cannot finish within -t/--timeout {format_number(whole)} s, which limits the "
            f"whole check; give a shorter --probe-timeout or a longer -t/--timeout"
        )
    return CheckRequest(
        replica=replica.strip(),
        primary=None if primary is None else primary.strip(),
        thresholds=Thresholds(warning, critical),
        timeout=per_probe,
        plugin_timeout=whole,
    )


async def run_request(request: CheckRequest) -> CheckOutcome:
    """The check, or UNKNOWN (naming the probes it waited for) when it outlasts the request's
    plugin timeout."""
    pending = PendingProbes()
    try:
        async with asyncio.timeout(request.plugin_timeout):
            return await run_check(
                request.replica,
                primary=request.primary,
                thresholds=request.thresholds,
                timeout=request.timeout,
                pending=pending,
            )
    except TimeoutError:
        return timed_out(request.plugin_timeout, pending.names)


async def run_check(
    replica: str,
    *,
    primary: str | None = None,
    thresholds: Thresholds | None = None,
    timeout: float = 1.0,
    pending: PendingProbes | None = None,
) -> CheckOutcome:
    """Probe `replica` (INFO replication) and its primary (PING: `primary`, or the
    master_host:master_port the replica reports). Each probe waits at most `timeout`; `pending`
    holds the probes not yet answered."""
    thresholds = thresholds or Thresholds()
    pending = pending or PendingProbes()
    replica_host, replica_port = probes.parse_address(replica)
    replica_info = probes.replication_info_or_error(replica_host, replica_port, timeout)
    if primary is not None:
        primary_host, primary_port = probes.parse_address(primary)
        (info, error), probe = await asyncio.gather(
            pending.wait_for(REPLICA_INFO, replica_info),
            pending.wait_for(PRIMARY_PING, probes.ping(primary_host, primary_port, timeout)),
        )
    else:
        info, error = await pending.wait_for(REPLICA_INFO, replica_info)
        primary = probes.replica_master(info) if info else None
        probe = None
        if primary is not None:
            ping = probes.ping(*probes.parse_address(primary), timeout)
            probe = await pending.wait_for(PRIMARY_PING, ping)
    return evaluate(
        replica=replica, replica_info=info, replica_error=error, primary=primary, probe=probe,
        thresholds=thresholds, timeout=timeout,
    )  # fmt: skip
