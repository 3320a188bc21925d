"""Chaos Toolkit probes (python provider, module `chaos.ctk.probes`): the steady-state checks
and the hypotheses' measurements of `ratequeue-chaos run`, returned as plain values (a bool, a
count, seconds) so CTK tolerances judge them: `acknowledged_lost` with tolerance 0,
`recovery_seconds` with a range, `one_primary_per_shard` with `true`...

A measurement that cannot be made (no load ran, nothing was acknowledged, no write after the
fault) raises, so CTK records the probe as failed instead of judging a value that proves
nothing. Not for: injecting faults (see `chaos.ctk.actions`).
"""

import time

from chaos.ctk.session import Configuration, Session, session_for
from chaos.errors import RunAborted
from chaos.experiments import Probe
from chaos.ledger import Ledger
from chaos.load import BackgroundLoad, LoadProfile, default_rates

# What CTK's discovery lists as this module's probes.
__all__ = [
    "acknowledged_lost",
    "api_healthy",
    "controllers_healthy",
    "duplicates",
    "every_shard_writable",
    "one_primary_per_shard",
    "promoted_shards",
    "rate_overshoot_seconds",
    "recovery_seconds",
    "replicas_attached",
]  # fmt: skip


def api_healthy(timeout: float = 10, configuration: Configuration = None) -> bool:
    """The API answers /healthz with every check passing (retried up to `timeout` s)."""
    return _steady_state("api_healthy", timeout, configuration)


def controllers_healthy(timeout: float = 10, configuration: Configuration = None) -> bool:
    """Every controller node answers /healthz."""
    return _steady_state("controllers_healthy", timeout, configuration)


def every_shard_writable(timeout: float = 10, configuration: Configuration = None) -> bool:
    """Every shard acknowledges a write through the API."""
    return _steady_state("every_shard_writable", timeout, configuration)


def one_primary_per_shard(timeout: float = 10, configuration: Configuration = None) -> bool:
    """Exactly one node answers as master per shard (primary, replicas, held former ones)."""
    return _steady_state("one_primary_per_shard", timeout, configuration)


def replicas_attached(timeout: float = 10, configuration: Configuration = None) -> bool:
    """Every listed replica follows its shard's primary over a link that is up."""
    return _steady_state("replicas_attached", timeout, configuration)


def acknowledged_lost(burst_seconds: float = 2, configuration: Configuration = None) -> int:
    """How many messages the API acknowledged were never delivered. Measured on the load
    `start_load` began (stopped and drained now); without one (the steady state before the
    method), on a short load of `burst_seconds` run now."""
    ledger = _drained_ledger(session_for(configuration), burst_seconds)
    if not ledger.acknowledged:
        raise RunAborted("acknowledged_lost: the load had nothing acknowledged; proves nothing")
    return len(ledger.lost())


def duplicates(burst_seconds: float = 2, configuration: Configuration = None) -> int:
    """Deliveries beyond the first of each id (redeliveries after a lease or a failover)."""
    ledger = _drained_ledger(session_for(configuration), burst_seconds)
    if not ledger.deliveries:
        raise RunAborted("duplicates: nothing was delivered; proves nothing")
    return ledger.duplicates()


def rate_overshoot_seconds(burst_seconds: float = 2, configuration: Configuration = None) -> float:
    """How much earlier than its number's rate allows the worst delivery came (0: never)."""
    ledger = _drained_ledger(session_for(configuration), burst_seconds)
    checks = ledger.rate_checks(default_rates(sorted({d.number for d in ledger.deliveries})))
    if not checks:
        raise RunAborted("rate_overshoot_seconds: nothing was delivered; proves nothing")
    return round(max(c.max_early_seconds for c in checks), 4)


def recovery_seconds(timeout: float = 30, configuration: Configuration = None) -> float:
    """Seconds from the first fault on a shard's Redis node to the first acknowledged write on
    every faulted shard after it (the slowest), waiting up to `timeout` s for it; needs the
    load of `start_load` running."""
    session = session_for(configuration)
    if session.load is None:
        raise RunAborted("recovery_seconds: no load is running (start_load first)")
    if session.fault_at is None:
        raise RunAborted("recovery_seconds: no fault on a primary or replica was injected")
    fault_at, ledger = session.fault_at, session.load.ledger
    deadline = time.monotonic() + timeout
    while True:
        acks = [ledger.first_ack_after(fault_at, shard) for shard in session.faulted_shards]
        if all(at is not None for at in acks):
            return round(max(acks) - fault_at, 3)  # type: ignore[type-var]
        if time.monotonic() > deadline:
            raise RunAborted(f"recovery_seconds: no acknowledged write within {timeout:g} s")
        time.sleep(0.1)


def promoted_shards(configuration: Configuration = None) -> int:
    """How many shards have another primary than when the experiment first looked."""
    session = session_for(configuration)
    before = session.first_topology()
    after = session.deployment.topology()
    return sum(s.primary.name != before.shard(s.id).primary.name for s in after.shards)


def _steady_state(name: str, timeout: float, configuration: Configuration) -> bool:
    session = session_for(configuration)
    session.first_topology()  # what promoted_shards compares with: before any fault
    [outcome] = session.probes.check([Probe(probe=name, timeout=timeout)])  # type: ignore[arg-type]
    return outcome.ok


def _drained_ledger(session: Session, burst_seconds: float) -> Ledger:
    """The ledger of the experiment's load, drained; a short load's if none was started."""
    if session.load is None and session.ledger is None:
        burst = BackgroundLoad(session.deployment.api, LoadProfile(numbers=20,
                               enqueue_per_second=20, producers=2, consumers=2),
                               drain_timeout=15).start()  # fmt: skip
        time.sleep(burst_seconds)
        return burst.join()
    if session.load is not None:
        session.ledger = session.load.join()
        session.load = None
    assert session.ledger is not None
    return session.ledger
