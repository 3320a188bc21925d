"""`ratequeue-chaos report DIR`: one self-contained HTML page (a timeline chart per run, drawn as
inline SVG, the recovery-time trend across runs, and experiments run under both failover managers
side by side: `comparison`) and a markdown summary, from the run journals, so someone who was not
there can read what happened. Not for: running anything."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from chaos.comparison import comparison_html, comparison_markdown
from chaos.journal import TIMELINE_ORDER, Journal, read_journals

# Journals the report left out, and why: said at the top, lest its figures look complete.
UNREADABLE_TITLE = "Journals not read (left out of every figure)"
MAX_TICKS = 30  # labels on a timeline's axis

COLOURS = {
    "load_started": "#888",
    "fault_injected": "#d62728",
    "first_sensor_event": "#ff7f0e",
    "decision": "#9467bd",
    "promotion": "#1f77b4",
    "topology_published": "#17becf",
    "first_acknowledged_write": "#2ca02c",
    "first_write_after_switch": "#bcbd22",
    "rolled_back": "#8c564b",
    "load_drained": "#7f7f7f",
}


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def timeline_svg(journal: Journal, width: int = 760) -> str:
    """Markers on a time axis, seconds relative to the fault (or the start)."""
    entries = [e for e in journal.timeline if e.name != "load_drained"]
    if not entries:
        return "<p>no timeline (the run did not get as far as a fault)</p>"
    low = min(e.offset for e in entries)
    high = max(max(e.offset for e in entries), low + 1)
    span = high - low
    left, right, row = 190, 40, 22

    def x(offset: float) -> float:
        return left + (offset - low) / span * (width - left - right)

    height = 40 + row * len(entries)
    parts = [
        f'<svg width="{width}" height="{height}" role="img" '
        f'aria-label="timeline of {html.escape(journal.run_id)}">'
    ]
    parts.append(
        f'<line x1="{x(0):.1f}" y1="10" x2="{x(0):.1f}" y2="{height - 20}" '
        'stroke="#d62728" stroke-dasharray="4 3"/>'
    )
    ordered = sorted(
        entries,
        key=lambda e: (TIMELINE_ORDER.index(e.name) if e.name in TIMELINE_ORDER else 99, e.at),
    )
    for index, entry in enumerate(ordered):
        y = 24 + index * row
        colour = COLOURS.get(entry.name, "#333")
        parts.append(f'<text x="4" y="{y + 4}" font-size="12">{html.escape(entry.name)}</text>')
        parts.append(
            f'<line x1="{left}" y1="{y}" x2="{x(entry.offset):.1f}" y2="{y}" '
            f'stroke="{colour}" stroke-opacity="0.35" stroke-width="6"/>'
        )
        parts.append(
            f'<circle cx="{x(entry.offset):.1f}" cy="{y}" r="5" fill="{colour}">'
            f"<title>{html.escape(entry.detail)}</title></circle>"
        )
        parts.append(
            f'<text x="{x(entry.offset) + 8:.1f}" y="{y + 4}" font-size="11">'
            f"{entry.offset:+.2f}s</text>"
        )
    axis_y = height - 12
    # A tick a second, or fewer over a long run (an hour's would be 3,600 labels; a time cut
    # short or hand-edited can put a run's entries years apart).
    every = max(1, math.ceil(span / MAX_TICKS))
    for tick in range(int(low) // every * every, int(high) + 1, every):
        parts.append(
            f'<text x="{x(tick):.1f}" y="{axis_y}" font-size="10" '
            f'text-anchor="middle">{tick}s</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def trend_svg(journals: list[Journal], width: int = 760, height: int = 220) -> str:
    points = [(j.started_at, j.recovery_seconds(), j.verdict) for j in journals]
    measured = [(t, r, v) for t, r, v in points if r is not None]
    if not measured:
        return "<p>no run measured a recovery yet</p>"
    top = max(r for _, r, _ in measured) * 1.2 or 1.0
    left, bottom = 50, 30
    step = (width - left - 20) / max(1, len(measured) - 1)

    def y(value: float) -> float:
        return height - bottom - value / top * (height - bottom - 10)

    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="recovery trend">']
    for fraction in (0, 0.5, 1):
        value = top * fraction
        parts.append(
            f'<line x1="{left}" y1="{y(value):.1f}" x2="{width - 10}" '
            f'y2="{y(value):.1f}" stroke="#ddd"/><text x="4" y="{y(value) + 4:.1f}" '
            f'font-size="10">{value:.1f}s</text>'
        )
    coords = [(left + i * step, y(r)) for i, (_, r, _) in enumerate(measured)]
    parts.append(
        '<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="'
        + " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
        + '"/>'
    )
    for (cx, cy), (started, recovery, verdict) in zip(coords, measured, strict=True):
        colour = "#2ca02c" if verdict == "passed" else "#d62728"
        parts.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{colour}"><title>'
            f"{_when(started)}: {recovery:.2f} s ({verdict})</title></circle>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(journals: list[Journal], unreadable: Sequence[str] = ()) -> str:
    passed = sum(j.verdict == "passed" for j in journals)
    rows = "".join(
        f"<tr><td>{_when(j.started_at)}</td><td>{html.escape(j.experiment)}</td>"
        f"<td>{html.escape(j.shard or '')}</td><td class='{j.verdict}'>{j.verdict}</td>"
        f"<td>{'' if j.recovery_seconds() is None else f'{j.recovery_seconds():.2f} s'}</td>"
        f"<td>{j.load.get('acknowledged', '')}</td><td>{j.load.get('lost', '')}</td></tr>"
        for j in reversed(journals)
    )
    runs = []
    for j in reversed(journals):
        hypotheses = "".join(
            f"<li class='skipped'>{html.escape(h.hypothesis)}: SKIPPED — "
            f"{html.escape(h.skipped)}</li>"
            if h.skipped
            else f"<li class='{'passed' if h.ok else 'failed'}'>{html.escape(h.hypothesis)}: "
            f"measured {html.escape(str(h.measured))}, expected {html.escape(h.expected)}"
            f"{' — ' + html.escape(h.detail) if h.detail else ''}</li>"
            for h in j.hypotheses
        )
        decisions = "".join(
            f"<li>{html.escape(str(d.get('type')))} from {html.escape(str(d.get('source')))}: "
            f"<b>{html.escape(str(d.get('outcome')))}</b> — {html.escape(str(d.get('reason')))}"
            "</li>"
            for d in j.decisions
        )
        errors = "".join(f"<li>{html.escape(e)}</li>" for e in j.errors)
        plan = "".join(f"<li>{html.escape(line)}</li>" for line in j.plan)
        faults = "".join(
            f"<li>{html.escape(str(f['action']))} <b>{html.escape(str(f['target']))}</b> via "
            f"{html.escape(str(f['backend']))} at {_when(f['injected_at'])}; "
            + (
                f"rolled back at {_when(f['rolled_back_at'])}"
                if f.get("rolled_back_at")
                else "nothing to roll back (e.g. a kill)"
                if not f.get("rollback_error")
                else f"rollback failed: {html.escape(str(f['rollback_error']))}"
            )
            + "</li>"
            for f in j.faults
        )
        probes = "".join(
            f"<li>{stage}: {html.escape(p.probe)} "
            f"{'SKIPPED' if p.skipped else 'ok' if p.ok else 'FAILED'} "
            f"({html.escape(p.skipped or p.detail)})</li>"
            for stage, outcomes in (
                ("before", j.steady_state_before),
                ("after", j.steady_state_after),
            )
            for p in outcomes
        )
        load = ", ".join(
            f"{k}: {html.escape(str(v))}" for k, v in j.load.items() if k != "availability"
        )
        runs.append(
            f"<section><h2>{html.escape(j.experiment)} <small>{_when(j.started_at)} · "
            f"{html.escape(j.run_id)} · shard {html.escape(j.shard or '-')} · "
            f"failover {j.failover}{f' (ack {j.ack})' if j.ack else ''} · "
            f"<span class='{j.verdict}'>{j.verdict}</span></small></h2>"
            + (f"<h3>Plan</h3><ul>{plan}</ul>" if plan else "")
            + (f"<h3>Faults</h3><ul>{faults}</ul>" if faults else "")
            + (f"<h3>Steady state</h3><ul>{probes}</ul>" if probes else "")
            + (f"<p>Load: {load}</p>" if load else "")
            + f"<h3>Timeline</h3><p>Seconds after the fault; hover a point for its detail."
            f"</p>{timeline_svg(j)}<h3>Hypotheses</h3><ul>{hypotheses}</ul>"
            + (f"<h3>Controller decisions</h3><ul>{decisions}</ul>" if decisions else "")
            + (f"<h3>Errors</h3><ul>{errors}</ul>" if errors else "")
            + "</section>"
        )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Chaos runs</title><style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 960px; }}
table {{ border-collapse: collapse; }}
td, th {{ padding: 4px 10px; border-bottom: 1px solid #eee; }}
.passed {{ color: #2ca02c; }} .failed, .aborted {{ color: #d62728; }}
.skipped {{ color: #888; }}
section {{ border-top: 2px solid #eee; margin-top: 2em; }}
small {{ color: #666; font-weight: normal; }}
</style></head><body>
<h1>Chaos runs</h1>
<p>{len(journals)} run(s), {passed} passed. Recovery is the time from the fault to the first
acknowledged write on the shard whose primary was hit; under Sentinel, once it promoted, to the
first one sent after the API routed to the promoted primary (blank: the run measured none, e.g.
an experiment where nothing was expected to fail over).</p>
{_unreadable_html(unreadable)}<h2>Recovery time across runs</h2>{trend_svg(journals)}
{comparison_html(journals, COLOURS)}
<h2>Runs</h2><table><tr><th>started</th><th>experiment</th><th>shard</th><th>verdict</th>
<th>recovery</th><th>acknowledged</th><th>lost</th></tr>{rows}</table>
{"".join(runs)}
</body></html>
"""


def _unreadable_html(unreadable: Sequence[str]) -> str:
    if not unreadable:
        return ""
    items = "".join(f"<li>{html.escape(problem)}</li>" for problem in unreadable)
    return f"<h2 class='failed'>{UNREADABLE_TITLE}</h2><ul>{items}</ul>"


def render_markdown(journals: list[Journal], unreadable: Sequence[str] = ()) -> str:
    lines = [
        "# Chaos runs",
        "",
        f"{len(journals)} runs, {sum(j.verdict == 'passed' for j in journals)} passed.",
        "",
    ]
    if unreadable:
        lines += [f"## {UNREADABLE_TITLE}", "", *(f"- {problem}" for problem in unreadable), ""]
    lines += [
        "| started | experiment | shard | verdict | recovery (s) | acknowledged | lost |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for j in reversed(journals):
        recovery = "" if j.recovery_seconds() is None else f"{j.recovery_seconds():.2f}"
        lines.append(
            f"| {_when(j.started_at)} | {j.experiment} | {j.shard or ''} | {j.verdict} "
            f"| {recovery} | {j.load.get('acknowledged', '')} | "
            f"{j.load.get('lost', '')} |"
        )
    lines += comparison_markdown(journals)
    failed = [j for j in journals if j.verdict != "passed"]
    if failed:
        lines += ["", "## Runs that did not pass", ""]
        for j in failed:
            bad = [h for h in j.hypotheses if h.judged and not h.ok]
            reasons = "; ".join(
                f"{h.hypothesis} measured {h.measured} (expected {h.expected})" for h in bad
            ) or "; ".join(j.errors)
            lines.append(f"- {j.run_id}: {reasons}")
    return "\n".join(lines) + "\n"


def write_report(
    journal_dir: Path, output: Path | None = None, unreadable: list[str] | None = None
) -> tuple[Path, Path]:
    """The report and summary of the journals in `journal_dir`; the journals it could not read
    are named in both, first, and added to `unreadable` (for the command to say too)."""
    unreadable = [] if unreadable is None else unreadable
    journals = read_journals(journal_dir, unreadable)
    html_path = output or journal_dir / "report.html"
    markdown_path = html_path.with_suffix(".md")
    html_path.write_text(render_html(journals, unreadable))
    markdown_path.write_text(render_markdown(journals, unreadable))
    return html_path, markdown_path
