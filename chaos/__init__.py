"""Chaos: hypothesis-driven experiments against the queue, on the embedded testbed or a deployed
one, once or on a schedule.

- a fault is **injected** through `faults/` (one interface in `faults/base.py`; this machine's
  processes and network in `faults/local/`, containers in `faults/docker.py`, Gremlin's API in
  `faults/gremlin.py`), or asked of the Gremlin-compatible agent (`agent/`);
- an experiment file (`experiments`) is run by `runner`: steady state (`steady_state`), load
  with a ledger of every acknowledged message (`load`, `ledger`), the fault (`fault_phase`), what
  the controllers did (`controller_answers`, `recovery_watch`), the hypotheses (`hypotheses`),
  the journal and its report (`journal`, `report`); `scheduler` runs it every few hours;
- the local testbed (`testbed`, `demo`) and the deployments a run may target (`targets`,
  `processes`: which program a pid runs).

CLI `ratequeue-chaos`; exceptions in `errors`; the Chaos Toolkit extension in `ctk`. Not for:
deciding remediation (`lazarus_lite`).
"""

from typing import Any


def discover(discover_system: bool = True) -> dict[str, Any]:
    """`chaos discover ratequeue-testbed` (Chaos Toolkit) imports this package and calls its
    `discover`: the extension's (`chaos.ctk.discover`), imported only then, so the runner never
    loads chaoslib."""
    from chaos.ctk import discover as discover_extension

    return discover_extension(discover_system)
