"""Chaos Toolkit interop: an extension Chaos Toolkit's `chaostoolkit run` calls (python
providers: `chaos.ctk.actions` injects faults through the runner's own fault backends,
`chaos.ctk.probes` returns the hypotheses' measurements as plain values for CTK tolerances), and
the two journal shapes converted both ways (`chaos.ctk.journals`).

Not for: running our own YAML experiments (see `chaos.runner`).
"""
