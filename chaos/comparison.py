"""The same experiment under different failover managers, side by side: for each experiment run
under more than one manager (Lazarus, Sentinel with either acknowledgement), its latest run under
each, with what differs where it matters (acknowledged writes lost, recovery time, duplicates,
how much earlier than its rate a delivery came, one primary per shard) and the runs' timelines
drawn on one axis. `ratequeue-chaos report` puts it on its page and in its summary;
`ratequeue-chaos compare` writes the table of every scenario file under every manager
(`scenario_table`: a run, or why that manager cannot run it).

Not for: one run's own page (`report`), or running anything.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from chaos.experiments import TestbedOverrides, applicable_experiments, load_experiment
from chaos.journal import Journal

# Where a manager's marks sit on the shared axis, and their colours (the report's, by moment).
ROW_HEIGHT, LABEL_WIDTH = 34, 190


def manager_of(journal: Journal) -> str:
    """`lazarus, ack wait`, `sentinel, ack async`: who failed over and how enqueues were
    acknowledged, the key a run's column or row is matched on (Sentinel's timers are a note on
    it, `down_after_of`: a run with other timers is still that manager's run)."""
    return journal.failover + (f", ack {journal.ack}" if journal.ack else "")


def down_after_of(journal: Journal) -> str | None:
    """`down-after 2000 ms`: how long Sentinel waited before it suspected a primary, as the run
    recorded it (None: not Sentinel, or a run that did not record it)."""
    timers = journal.sentinel_timers or {}
    return f"down-after {timers['down_after_ms']} ms" if "down_after_ms" in timers else None


@dataclass(frozen=True)
class ManagerRow:
    """One manager's latest run of an experiment, as the comparison shows it."""

    manager: str
    journal: Journal

    def hypothesis(self, name: str) -> tuple[bool, object] | None:
        """(held, measured) of a judged hypothesis of that name; None if not judged."""
        found = next((h for h in self.journal.hypotheses if h.hypothesis == name and h.judged),
                     None)  # fmt: skip
        return None if found is None else (found.ok, found.measured)

    def cells(self) -> list[str]:
        load, measures = self.journal.load, self.journal.measures
        recovery = self.journal.recovery_seconds()
        # Every run measures these (`measures`); a journal written before that has them only
        # from its hypotheses, when it had those and judged them.
        overshoot = measures.get("earliest_delivery_before_rate_seconds")
        if "earliest_delivery_before_rate_seconds" not in measures:
            judged = self.hypothesis("rate_limits_held")
            overshoot = None if judged is None else judged[1]
        answering = measures.get("primaries_answering")
        if answering is not None:
            one_each: bool | None = all(len(names) == 1 for names in answering.values())
        else:
            judged = self.hypothesis("one_primary_per_shard")
            one_each = None if judged is None else judged[0]
        down_after = down_after_of(self.journal)
        return [
            self.manager + (f" ({down_after})" if down_after else ""),
            self.journal.verdict,
            str(load.get("acknowledged", "-")),
            lost_count(load),
            "-" if recovery is None else f"{recovery:.2f}",
            str(load.get("duplicates", "-")),
            "-" if overshoot is None else f"{overshoot}",
            "-" if one_each is None else ("yes" if one_each else "NO"),
        ]


COLUMNS = ["manager", "verdict", "acknowledged", "lost", "recovery (s)", "duplicates",
           "earliest delivery before its rate allows (s)", "one primary per shard"]  # fmt: skip


def side_by_side(journals: list[Journal]) -> dict[str, list[ManagerRow]]:
    """Experiment title → the latest completed run under each manager, for the experiments run
    under at least two managers (managers in name order)."""
    latest: dict[str, dict[str, Journal]] = {}
    for journal in sorted(journals, key=lambda j: j.started_at):
        if journal.dry_run or journal.status != "completed":
            continue
        latest.setdefault(journal.experiment, {})[manager_of(journal)] = journal
    return {
        title: [ManagerRow(m, runs[m]) for m in sorted(runs)]
        for title, runs in sorted(latest.items())
        if len(runs) > 1
    }


def timelines_svg(rows: list[ManagerRow], colours: dict[str, str], width: int = 760) -> str:
    """Each manager's run as one row of marks, seconds after the fault, on one shared axis."""
    entries = [(i, e) for i, row in enumerate(rows) for e in row.journal.timeline
               if e.name != "load_drained"]  # fmt: skip
    if not entries:
        return "<p>no timeline (the runs did not get as far as a fault)</p>"
    low = min(e.offset for _, e in entries)
    high = max(max(e.offset for _, e in entries), low + 1)

    def x(offset: float) -> float:
        return LABEL_WIDTH + (offset - low) / (high - low) * (width - LABEL_WIDTH - 40)

    height = 40 + ROW_HEIGHT * len(rows)
    parts = [f'<svg width="{width}" height="{height}" role="img" '
             'aria-label="timelines of the managers on one axis">',
             f'<line x1="{x(0):.1f}" y1="6" x2="{x(0):.1f}" y2="{height - 20}" '
             'stroke="#d62728" stroke-dasharray="4 3"/>']  # fmt: skip
    for index, row in enumerate(rows):
        y = 22 + index * ROW_HEIGHT
        parts.append(f'<text x="4" y="{y + 4}" font-size="12">{html.escape(row.manager)}</text>')
        parts.append(f'<line x1="{LABEL_WIDTH}" y1="{y}" x2="{width - 40}" y2="{y}" '
                     'stroke="#eee" stroke-width="2"/>')  # fmt: skip
    for index, entry in entries:
        y = 22 + index * ROW_HEIGHT
        colour = colours.get(entry.name, "#333")
        parts.append(
            f'<circle cx="{x(entry.offset):.1f}" cy="{y}" r="5" fill="{colour}"><title>'
            f"{html.escape(entry.name)} {entry.offset:+.2f}s {html.escape(entry.detail)}"
            "</title></circle>"
        )
    for tick in range(int(low), int(high) + 1):
        parts.append(f'<text x="{x(tick):.1f}" y="{height - 8}" font-size="10" '
                     f'text-anchor="middle">{tick}s</text>')  # fmt: skip
    parts.append("</svg>")
    legend = " ".join(
        f"<span style='color:{colour}'>●</span> {html.escape(name)}"
        for name, colour in colours.items()
        if any(e.name == name for _, e in entries)
    )
    return "".join(parts) + f"<p><small>{legend}</small></p>"


def comparison_html(journals: list[Journal], colours: dict[str, str]) -> str:
    """The page's section: a table and the timelines per experiment ("" when none compares)."""
    compared = side_by_side(journals)
    if not compared:
        return ""
    sections = []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    for title, rows in compared.items():
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row.cells()) + "</tr>"
            for row in rows
        )
        sections.append(
            f"<h3>{html.escape(title)}</h3><table><tr>{head}</tr>{body}</table>"
            f"{timelines_svg(rows, colours)}"
        )
    return (
        "<h2>Failover managers side by side</h2><p>The latest completed run of each experiment "
        "under each manager. Recovery: fault to the first acknowledged write on the faulted "
        "shard; under Sentinel once it promoted, to the first one sent after the API routed to "
        "the promoted primary: a primary cut off on the clients' side may acknowledge writes "
        "its demotion discards. Sentinel's promotion is placed when the sentinels announced "
        "it, topology_published when the API took that map, by the API's clock and only if "
        "that falls after the promotion (each detail names its source and how much later "
        "the run's poll saw it; one placed by the poll says so).</p>" + "".join(sections)
    )


def comparison_markdown(journals: list[Journal]) -> list[str]:
    """The summary's section, as markdown lines (none when no experiment compares)."""
    compared = side_by_side(journals)
    if not compared:
        return []
    lines = ["", "## Failover managers side by side", ""]
    for title, rows in compared.items():
        lines += [f"### {title}", "", "| " + " | ".join(COLUMNS) + " |",
                  "|" + " --- |" * len(COLUMNS)]  # fmt: skip
        lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
        lines.append("")
    return lines


# The managers a scenario table has a column for (besides any its journals name), and the run
# options that select each.
TABLE_MANAGERS: dict[str, TestbedOverrides] = {
    "lazarus, ack wait": TestbedOverrides(failover="lazarus", ack="wait"),
    "sentinel, ack async": TestbedOverrides(failover="sentinel", ack="async"),
    "sentinel, ack wait": TestbedOverrides(failover="sentinel", ack="wait"),
}
DEFAULT_TABLE_MANAGERS = ("lazarus, ack wait", "sentinel, ack async")


def lost_count(load: dict) -> str:
    """The acknowledged writes not delivered, and where they were at the run's end when the run
    looked (`14 (14 still held, 0 gone)`): undelivered on a shard with no primary is not lost."""
    lost = str(load.get("lost", "-"))
    found = load.get("undelivered_whereabouts")
    if not found:
        return lost
    where = f"{found['held']} still held, {found['gone']} gone"
    if found.get("unknown"):
        where += f", {found['unknown']} not known"
    return f"{lost} ({where})"


def _run_cell(journal: Journal) -> str:
    """A run in a cell: verdict, acknowledged writes lost, recovery, the hypotheses it broke."""
    load, recovery = journal.load, journal.recovery_seconds()
    failed = [h.hypothesis for h in journal.hypotheses if h.judged and not h.ok]
    skipped = [h.hypothesis for h in journal.hypotheses if not h.judged]
    parts = [journal.verdict, f"lost {lost_count(load)} of {load.get('acknowledged', '-')}",
             "recovery -" if recovery is None else f"recovery {recovery:.2f} s"]  # fmt: skip
    if failed:
        parts.append("broke " + ", ".join(failed))
    if skipped:
        parts.append("skipped " + ", ".join(skipped))
    return "; ".join(parts)


def scenario_table(journals: list[Journal], scenarios: list[Path]) -> list[str]:
    """Markdown: a row per scenario file and a column per failover manager, each cell the
    latest completed run of that scenario under that manager, or why the manager cannot run it
    (the reason `ratequeue-chaos run` skips it with), or `not run`. Sentinel's down-after is a
    line under the table for a column whose runs all recorded the same, else in each cell."""
    latest: dict[tuple[str, str], Journal] = {}
    for journal in sorted(journals, key=lambda j: j.started_at):
        if not journal.dry_run and journal.status == "completed":
            latest[(journal.experiment, manager_of(journal))] = journal
    managers = sorted({m for _, m in latest} | set(DEFAULT_TABLE_MANAGERS))
    titles = [load_experiment(path).title for path in scenarios]
    shown = {m: [latest[(t, m)] for t in titles if (t, m) in latest] for m in managers}
    down_afters = {m: {down_after_of(j) for j in runs} for m, runs in shown.items()}
    per_cell = {m for m, values in down_afters.items() if len(values) > 1}
    lines = ["| scenario | " + " | ".join(managers) + " |", "|" + " --- |" * (len(managers) + 1)]
    for path, title in zip(scenarios, titles, strict=True):
        cells = []
        for manager in managers:
            run = latest.get((title, manager))
            if run is not None:
                note = down_after_of(run) or "down-after not recorded"
                cells.append(_run_cell(run) + (f"; {note}" if manager in per_cell else ""))
                continue
            overrides = TABLE_MANAGERS.get(manager)
            _, skipped = applicable_experiments([path], overrides) if overrides else ([], [])
            # The reason names the file first: the row does already.
            cells.append(f"skipped: {skipped[0][1].split(': ', 1)[-1]}" if skipped else "not run")
        row = [f"`{path.name}` {title}", *cells]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    agreed = [f"{m}: {next(iter(v))}" for m, v in down_afters.items()
              if len(v) == 1 and None not in v]  # fmt: skip
    if agreed:
        lines += ["", "Sentinel's timer, the same in every run of its column: "
                  + "; ".join(agreed) + "."]  # fmt: skip
    return lines
