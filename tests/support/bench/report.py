"""The benchmark's outputs: results.json (raw), results.md (tables) and results.png (chart).

Each figure is summarised over the rounds by its median, minimum and maximum per server; the
ratio is Realize's median over ganesha's. A row's ceiling is the machine's limit for its kind
of client: loopback TCP between two Python processes for bandwidth, the RPC NULL rate with
the same client shape (processes x outstanding calls; the better of the two servers) for
call rates.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVERS = ("realize", "ganesha")


@dataclass
class Row:
    key: str
    label: str
    unit: str
    target: float | None
    higher_is_better: bool
    stats: dict[str, tuple[float, float, float] | None]  # server -> (median, min, max)
    ratio: float | None
    met: bool | None
    ceiling: float | None

    def percent_of_ceiling(self, server: str) -> float | None:
        s = self.stats.get(server)
        if s is None or not self.ceiling:
            return None
        return 100.0 * s[0] / self.ceiling

    def target_text(self) -> str:
        if self.target is None:
            return "—"
        if not self.higher_is_better:
            return f"realize ≤ {self.target:g} {self.unit}"
        return f"≥ {self.target:g}"


def summarize(values: list[float] | None) -> tuple[float, float, float] | None:
    """(median, min, max) of some measurements, or None when there are none."""
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def ceiling_values(results: dict[str, Any]) -> dict[str, float]:
    """Each ceiling's value: the machine's, or the better server's median."""
    out = {}
    for c in results["ceilings"]:
        per_server = results["values"].get(c["key"], {})
        medians = [statistics.median(v) for v in per_server.values() if v]
        if medians:
            out[c["key"]] = max(medians)
    return out


def rows(results: dict[str, Any]) -> list[Row]:
    ceilings = ceiling_values(results)
    out = []
    for m in results["metrics"]:
        values = results["values"].get(m["key"], {})
        stats = {s: summarize(values.get(s)) for s in SERVERS}
        r, g = stats["realize"], stats["ganesha"]
        ratio = r[0] / g[0] if r and g and g[0] else None
        met: bool | None = None
        if m["target"] is not None:
            if not m["higher_is_better"]:
                met = r is not None and r[0] <= m["target"]
            else:
                met = ratio is not None and ratio >= m["target"]
        out.append(
            Row(
                m["key"], m["label"], m["unit"], m["target"], m["higher_is_better"], stats,
                ratio, met, ceilings.get(m["ceiling"]) if m["ceiling"] else None,
            )
        )  # fmt: skip
    return out


def fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def span(s: tuple[float, float, float] | None) -> str:
    """The "min-max" text of a `summarize` result."""
    return "—" if s is None else f"{fmt(s[1])}-{fmt(s[2])}"


def tree_text(settings: dict[str, Any]) -> str:
    """The walked tree in words."""
    fanout, depth, files = settings["tree_fanout"], settings["tree_depth"], settings["tree_files"]
    directories = sum(fanout**level for level in range(1, depth + 1))
    entries = directories + (directories + 1) * files
    return (
        f"a tree of {entries:,} entries for the metadata walk ({fanout} subdirectories per "
        f"directory, {depth} levels, {files} empty files in each of its {directories + 1:,} "
        "directories)"
    )


def walk_text(results: dict[str, Any]) -> str:
    """A sentence on the metadata walk: its total time and calls per server, and how."""
    values = results["values"]
    parts = []
    for server in SERVERS:
        seconds = summarize(values.get("walk_seconds", {}).get(server))
        calls = summarize(values.get("walk_calls", {}).get(server))
        if seconds is not None and calls is not None:
            low, high = seconds[1], seconds[2]
            parts.append(f"{seconds[0]:.3g} s ({low:.3g}-{high:.3g}) against {server} "
                         f"({calls[0]:,.0f} calls)")  # fmt: skip
    if not parts:
        return ""
    return (
        "Metadata walk: one walk of the whole tree took " + ", ".join(parts) + ". It is "
        "`find TREE -exec stat` as a Linux mount serves it, from a blocking client (a plain "
        "socket, one call at a time, as each system call of a walker waits for its RPC): "
        "READDIRPLUS of each directory (the kernel's first listing of a directory, whose "
        "handles and attributes spare it a LOOKUP per name), a GETATTR per entry (stat "
        "revalidating attributes older than the attribute cache), depth first."
    )


def markdown(results: dict[str, Any], command: str) -> str:
    settings, machine = results["settings"], results["machine"]
    table = rows(results)
    lines = [
        "# Realize vs nfs-ganesha on loopback",
        "",
        f"`{command}` — {machine['date']}, {machine['cores']} cores ({machine['cpu']}), "
        f"Linux {machine['kernel']}, Python {machine['python']}, nfs-ganesha "
        f"{machine['nfs-ganesha']} (FSAL VFS), libnfs-utils {machine['libnfs-utils']}, "
        f"commit {machine['commit']}. {settings['rounds']} round(s), servers alternating; "
        f"run took {results['seconds'] / 60:.1f} min.",
        "",
        f"Data: a {settings['file_size'] / (1 << 20):g} MiB random file, a directory of "
        f"{settings['dir_entries']:,} empty files, {tree_text(settings)}, "
        f"{settings['small_files']:,} small files of "
        f"{settings['small_file_size']:,} bytes ({settings['small_file_workers']} in flight). "
        f"Rates are measured for {settings['rate_seconds']:g} s each. MB = 10^6 bytes. "
        '"Own client" is the package\'s `nfsd.rpc.client` in separate processes, the same for '
        'both servers. Ratio = realize median / ganesha median. "% of ceiling" compares '
        "each median with the machine's limit for that kind of client (table below).",
        "",
        "Measurements start once both servers are idle (3 s in a row) after their start "
        "(busy for "
        + ", ".join(f"{k} {v:g} s" for k, v in results.get("startup_busy_seconds", {}).items())
        + "), and each one waits until both are idle again (under 8% of a core for "
        f"{settings.get('quiet', 0.5):g} s), so "
        "background work a workload leaves behind is not charged to the next "
        f"({results.get('idle_wait_seconds', 0):g} s of such waits in all).",
        "",
        "| workload | unit | realize median | realize min-max | ganesha median "
        "| ganesha min-max | ratio | target | met? | ceiling | % of ceiling (realize / ganesha) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for row in table:
        r, g = row.stats["realize"], row.stats["ganesha"]
        met = "—" if row.met is None else ("yes" if row.met else "**no**")
        pr, pg = row.percent_of_ceiling("realize"), row.percent_of_ceiling("ganesha")
        percent = "—" if pr is None and pg is None else f"{fmt(pr)}% / {fmt(pg)}%"
        lines.append(
            f"| {row.label} | {row.unit} | {fmt(r[0] if r else None)} | {span(r)} "
            f"| {fmt(g[0] if g else None)} | {span(g)} | {fmt(row.ratio)} "
            f"| {row.target_text()} | {met} | {fmt(row.ceiling)} | {percent} |"
        )
    walk = walk_text(results)
    if walk:
        lines += ["", walk]
    lines += [
        "",
        "Ceilings of this machine, measured in the same run:",
        "",
        "| ceiling | unit | against realize | against ganesha | machine |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for c in results["ceilings"]:
        values = results["values"].get(c["key"], {})
        cells = []
        for who in (*SERVERS, "machine"):
            s = summarize(values.get(who))
            cells.append("—" if s is None else f"{fmt(s[0])} ({span(s)})")
        lines.append(f"| {c['label']} | {c['unit']} | {' | '.join(cells)} |")
    if results["errors"]:
        lines += ["", "Errors:", ""] + [f"- {e.splitlines()[0]}" for e in results["errors"]]
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    table = rows(results)
    n = len(table)
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(14, 0.38 * n + 1.8), sharey=True, gridspec_kw={"width_ratios": [3, 2]}
    )
    ys = list(range(n))[::-1]
    colors = {True: "#2e8b57", False: "#c0392b", None: "#7f8c8d"}
    for y, row in zip(ys, table, strict=True):
        ratio = row.ratio if row.ratio else 0.0
        left.barh(y, max(ratio, 1e-3), color=colors[row.met], height=0.7)
        if row.target is not None and row.higher_is_better:
            left.plot([row.target, row.target], [y - 0.45, y + 0.45], color="black", lw=2)
        note = fmt(row.ratio)
        r = row.stats["realize"]
        if not row.higher_is_better and r is not None:
            note += f"  (realize {fmt(r[0])} {row.unit}; target <= {row.target:g})"
        left.text(max(ratio, 1e-3) * 1.12, y, note, va="center", fontsize=8)
    left.axvline(1.0, color="#34495e", lw=0.8, ls="--")
    left.set_xscale("log")
    left.set_xlim(0.01, 30)
    left.set_yticks(ys, [f"{r.label} ({r.unit})" for r in table], fontsize=8)
    left.set_xlabel("realize / ganesha (median; black tick = target; log scale)")
    left.set_title("Ratio (green: target met, red: missed, grey: no target)", fontsize=10)

    height = 0.38
    highest = 100.0
    handles = []
    for offset, server, color in ((height / 2, "realize", "#2980b9"),
                                  (-height / 2, "ganesha", "#e67e22")):  # fmt: skip
        for y, row in zip(ys, table, strict=True):
            p = row.percent_of_ceiling(server)
            if p is not None:
                right.barh(y + offset, p, height=height, color=color)
                highest = max(highest, p)
        handles.append(Patch(color=color, label=server))
    right.axvline(100.0, color="#34495e", lw=0.8, ls="--")
    right.set_xlabel("% of this machine's ceiling for that kind of client (table)")
    right.set_title("Distance to the limit", fontsize=10)
    right.legend(handles=handles, loc="lower right", fontsize=8)
    right.set_xlim(0, highest * 1.05)
    machine = results["machine"]
    fig.suptitle(
        f"Realize vs nfs-ganesha, NFSv3 over loopback — {machine['date']}, "
        f"{machine['cores']} cores, {results['settings']['rounds']} round(s)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(markdown(results, command))
    chart(results, out / "results.png")


README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


def replace_marked(text: str, start_marker: str, end_marker: str, body: str) -> str | None:
    """`text` with what lies between the two markers replaced by `body` (markers kept), or
    None when the markers are not there."""
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        return None
    section = f"{start_marker}\n{body}\n{end_marker}"
    return text[:start] + section + text[end + len(end_marker) :]


def put_subsection(readme: Path, markers: tuple[str, str], heading: str, section: str) -> bool:
    """Put `section` between `markers` in the README, adding the markers at the end of its
    `heading` section (a "## " line) when they are missing; False when there is no such
    section."""
    start_marker, end_marker = markers
    text = readme.read_text()
    updated = replace_marked(text, start_marker, end_marker, section.strip())
    if updated is None:
        at_heading = text.find(f"\n{heading}\n")
        if at_heading < 0:
            return False
        following = text.find("\n## ", at_heading + 1)
        at = len(text) if following < 0 else following + 1
        block = f"{start_marker}\n{section.strip()}\n{end_marker}\n"
        updated = text[:at].rstrip("\n") + "\n\n" + block + ("\n" + text[at:] if text[at:] else "")
    readme.write_text(updated)
    return True


def update_readme(readme: Path, results_md: str, image: str) -> bool:
    """Replace what lies between the bench markers with the latest table and chart."""
    body = results_md.split("\n", 2)[2].strip()  # without the title
    text = replace_marked(
        readme.read_text(), README_START, README_END, f"{body}\n\n![benchmark chart]({image})"
    )
    if text is None:
        return False
    readme.write_text(text)
    return True
