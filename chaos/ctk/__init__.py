"""Chaos Toolkit interop: an extension Chaos Toolkit's `chaostoolkit run` calls (python
providers: `chaos.ctk.actions` injects faults through the runner's own fault backends,
`chaos.ctk.probes` returns the hypotheses' measurements as plain values for CTK tolerances), and
the two journal shapes converted both ways (`chaos.ctk.journals`).

Not for: running our own YAML experiments (see `chaos.runner`).
"""

from importlib import metadata
from typing import Any

try:
    __version__ = metadata.version("ratequeue-testbed")
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__", "discover"]


def discover(discover_system: bool = True) -> dict[str, Any]:
    """What `chaos discover` reports of the extension: its actions and probes, with their
    arguments, defaults and docs. No system discovery: the deployment an experiment acts on is
    named in its configuration, not found on this machine."""
    from chaoslib.discovery import discover_actions, discover_probes, initialize_discovery_result

    discovery = initialize_discovery_result("chaos.ctk", __version__, "ratequeue")
    discovery["activities"].extend(discover_actions("chaos.ctk.actions"))
    discovery["activities"].extend(discover_probes("chaos.ctk.probes"))
    return discovery
