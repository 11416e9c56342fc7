"""What ``make bench`` concludes from its results: the issue-10 ratios and targets, and the plots.

Everything here reads :class:`~tests.bench.BenchResult` objects of one run (or ``summary.json``), so
the agent, the peer and the raw limits compared are always from the same run on the same machine.

``python -m tests.bench.report [bench-results/summary.json]`` redraws the plots and prints the targets
from a finished run.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bench import RESULTS_DIR, format_value


@dataclass(frozen=True)
class Target:
    name: str
    value: float
    limit: float
    unit: str
    higher_is_better: bool

    @property
    def met(self) -> bool:
        if math.isnan(self.value) or math.isnan(self.limit):
            return False
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit


def _metrics(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {r["name"]: {m["key"]: m["value"] for m in r.get("metrics", [])} for r in results}


def targets(results: list[dict[str, Any]]) -> list[Target]:
    """Issue 10's targets, each from numbers of this run (missing numbers make NaN, not met)."""
    m = _metrics(results)
    raw, tput, lat = m.get("libvirt_raw", {}), m.get("agent_throughput", {}), m.get("latency", {})
    nan = math.nan
    raw_events = raw.get("raw_events_per_s", nan)
    snap = max((v for k, v in raw.items() if k.startswith("raw_snapshot_reads_per_s_t")), default=nan)
    out: list[Target] = []
    for key, label in (("define", "define burst"), ("undefine", "undefine burst")):
        agent = tput.get(f"agent_{key}_events_per_s", nan)
        out.append(Target(f"{label}: agent events/s >= peer's", agent, tput.get(f"peer_{key}_events_per_s", nan),
                          "events/s", True))
        out.append(Target(f"{label}: agent events/s >= 80% of raw libvirt events/s", agent, 0.8 * raw_events,
                          "events/s", True))
    out.append(Target("define burst: agent events/s >= 50% of raw snapshot reads/s (best thread count)",
                      tput.get("agent_define_events_per_s", nan), 0.5 * snap, "events/s", True))
    for rate, limit in ((500, 25.0), (1000, 50.0)):
        p99 = lat.get(f"r{rate}_event_to_visible_p99", nan)
        out.append(Target(f"@{rate}/s: event -> visible p99 <= {limit:.0f} ms", p99, limit, "ms", False))
        out.append(Target(f"@{rate}/s: event -> visible p99 <= peer's p99", p99,
                          lat.get(f"peer_r{rate}_event_to_visible_p99", nan), "ms", False))
        out.append(Target(f"@{rate}/s: call -> visible p99 <= peer's p99", lat.get(f"r{rate}_call_to_visible_p99", nan),
                          lat.get(f"peer_r{rate}_call_to_visible_p99", nan), "ms", False))
    scale = m.get("scale", {})
    if scale:
        out.append(Target("10,000 domains: launch -> inventory acknowledged <= 5 s", scale.get("inventory_s", nan),
                          5.0, "s", False))
        out.append(Target("10,000 domains: agent RSS <= 120 MiB", scale.get("rss_mib", nan), 120.0, "MiB", False))
    rebuild = m.get("rebuild", {})
    if rebuild:
        for key, floor in (("rebuild_raw_records_per_s", "RecordCodec"), ("rebuild_raw_fastavro_records_per_s",
                                                                          "fastavro")):
            out.append(Target(f"rebuild: Informer records/s >= 90% of raw consume + {floor} decode",
                              rebuild.get("rebuild_informer_records_per_s", nan), 0.9 * rebuild.get(key, nan),
                              "records/s", True))
    fleet = m.get("fleet_log", {})
    if fleet:
        out.append(Target("1,000-host fleet: Informer records/s >= 50,000", fleet.get("first_sync_records_per_s", nan),
                          50_000.0, "records/s", True))
        out.append(Target("1,000-host fleet: fresh sync after steady traffic <= 2x the first",
                          fleet.get("steady_sync_ratio", nan), 2.0, "x", False))
        for key, what in (("held_per_domain_b", "memory held (RSS after malloc_trim)"),
                          ("view_per_domain_b", "view (sys.getsizeof)")):
            out.append(Target(f"1,000-host fleet: consumer {what} per domain <= 2x the record",
                              fleet.get(key, nan), 2 * fleet.get("record_b", nan), "B", False))
    outage = m.get("outage", {})
    if outage:
        out.append(Target("10,000 domains, broker outage: agent RSS max <= 120 MiB",
                          outage.get("rss_during_max_mib", nan), 120.0, "MiB", False))
        out.append(Target("10,000 domains, broker outage under churn: RSS spread <= 5 %",
                          outage.get("rss_spread_pct", nan), 5.0, "%", False))
        out.append(Target("10,000 domains, broker outage: agent caught up after it", outage.get("recovered", nan),
                          1.0, "bool", True))
    steady = m.get("steady", {})
    if steady:
        out.append(Target("1,000-host steady state: apply lag p99 <= 100 ms", steady.get("lag_p99_ms", nan), 100.0,
                          "ms", False))
        out.append(Target("1,000-host steady state: events produced/s >= 99% of 500", steady.get("events_per_s", nan),
                          495.0, "records/s", True))
        out.append(Target("1,000-host steady state: consumer saw every domain's last version",
                          steady.get("caught_up", nan), 1.0, "bool", True))
    return out


def print_targets(results: list[dict[str, Any]]) -> list[Target]:
    ts = targets(results)
    width = max(len(t.name) for t in ts) + 2
    print("issue 10 targets (numbers of this run):")
    for t in ts:
        print(f"  {'MET ' if t.met else 'MISS'} {t.name:<{width}}{format_value(t.value):>10} vs "
              f"{format_value(t.limit):>10} {t.unit}")
    print()
    return ts


def plot(results: list[dict[str, Any]], directory: Path = RESULTS_DIR) -> list[Path]:
    """``latency_cdf.png``, ``throughput_vs_offered.png`` and ``rss_outage.png``, for the results that are there;
    [] without matplotlib (``pip install .[bench]``)."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return []
    by_name = {r["name"]: r for r in results}
    lat = by_name.get("latency", {}).get("details", {})
    written: list[Path] = []
    directory.mkdir(parents=True, exist_ok=True)
    phases = {p["rate"]: p for p in lat.get("phases", [])}
    peers = {p["rate"]: p for p in lat.get("peer_phases", [])}
    floors = {f["rate"]: f for f in lat.get("kafka_floor_ms", []) if isinstance(f, dict)}
    if phases:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        for ax, rate in zip(axes, (500, 1000), strict=True):
            curves = [("agent: event -> visible", phases.get(rate, {}), "event_to_visible", "C0", "-"),
                      ("agent: call -> visible", phases.get(rate, {}), "call_to_visible", "C0", ":"),
                      ("peer virsh|kcat: event -> visible", peers.get(rate, {}), "event_to_visible", "C3", "-"),
                      ("peer virsh|kcat: call -> visible", peers.get(rate, {}), "call_to_visible", "C3", ":")]
            for label, phase, key, color, style in curves:
                xs = phase.get("samples_ms", {}).get(key, [])
                if xs:
                    ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], style, color=color, label=label)
            floor = floors.get(1000) or next(iter(floors.values()), None)
            if floor and floor.get("samples_ms"):
                xs = floor["samples_ms"]
                ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], "--", color="grey",
                        label=f"Kafka floor @{floor['rate']}/s: produce -> visible")
            ax.set_xscale("log")
            ax.set_xlabel("latency (ms, log scale)")
            ax.set_title(f"{rate} operations/s")
            ax.axhline(0.99, color="k", linewidth=0.5)
            ax.axvline(25 if rate == 500 else 50, color="green", linewidth=0.8, linestyle="-.",
                       label="target p99")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("fraction of events")
        axes[1].legend(loc="lower right", fontsize=8)
        fig.suptitle("event -> visible to a consumer: agent vs peer vs Kafka floor (same run)")
        written.append(_save(plt, fig, directory / "latency_cdf.png"))
    if phases:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, series, color in (("agent", phases, "C0"), ("peer virsh|kcat", peers, "C3")):
            pts = sorted((p["achieved_ops_per_s"], p["delivered_events_per_s"]) for p in series.values())
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", color=color, label=f"{label}, paced")
        tput = by_name.get("agent_throughput", {}).get("details", {})
        for key, marker in (("define_burst", "s"), ("undefine_burst", "^")):
            agent = tput.get(key)
            peer = tput.get("peer", {}).get(key)
            if agent:
                ax.plot([agent["generator_calls_per_s"]], [agent["events_per_s"]], marker, color="C0",
                        label=f"agent, {key.replace('_', ' ')} (unpaced)")
            if peer:
                ax.plot([peer["generator_calls_per_s"]], [peer["events_per_s"]], marker, color="C3",
                        label=f"peer, {key.replace('_', ' ')} (unpaced)")
        raw = _metrics(results).get("libvirt_raw", {}).get("raw_events_per_s")
        if raw:
            ax.axhline(raw, color="grey", linestyle="--", label="raw libvirt events -> bare callback")
        lim = max([*ax.get_xlim(), *ax.get_ylim()])
        ax.plot([0, lim], [0, lim], color="k", linewidth=0.5, label="delivered = offered")
        ax.set_xlabel("offered: generator's achieved calls/s (one event each)")
        ax.set_ylabel("delivered: events/s visible to a consumer")
        ax.set_title("throughput against offered rate (same run)")
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
        written.append(_save(plt, fig, directory / "throughput_vs_offered.png"))
    outage = by_name.get("outage", {})
    series = outage.get("details", {}).get("rss_series", [])
    if series:
        marks = outage["details"].get("marks", {})
        fig, ax = plt.subplots(figsize=(9, 4.5))
        ax.plot([t for t, _ in series], [mib for _, mib in series], color="C0", label="agent VmRSS (1 s samples)")
        if "broker_down" in marks and "restart_begin" in marks:
            ax.axvspan(marks["broker_down"], marks["restart_begin"], color="C3", alpha=0.15,
                       label=f"broker down ({outage.get('params', {}).get('outage_s', '?')} s)")
        for key, label, color in (("churn_start", "churn starts", "grey"), ("broker_up", "broker serving", "C2"),
                                  ("caught_up", "agent caught up", "k")):
            if key in marks:
                ax.axvline(marks[key], color=color, linestyle=":", linewidth=1, label=label)
        backlog = outage["details"].get("backlog_series", [])
        if backlog:
            ax2 = ax.twinx()
            ax2.plot([b[0] for b in backlog], [b[1] or 0 for b in backlog], color="grey", linewidth=0.8,
                     label="agent's producer queue (status.json)")
            ax2.set_ylabel("messages queued in the agent's producer")
            ax2.legend(fontsize=8, loc="upper left")
        lo = next((m["value"] for m in outage.get("metrics", []) if m["key"] == "rss_during_min_mib"),
                  min(mib for _, mib in series))
        ax.set_ylim(0, max(125.0, 1.1 * max(mib for _, mib in series)))
        ax.axhline(120, color="green", linestyle="-.", linewidth=0.8, label="target 120 MiB")
        ax.axhspan(lo, lo * 1.05, color="green", alpha=0.08, label="+5 % over the outage's minimum")
        ax.set_xlabel("seconds since sampling started (start-up resync acknowledged)")
        ax.set_ylabel("RSS (MiB)")
        domains = outage.get("params", {}).get("domains", 10_000)
        ax.set_title(f"agent RSS, {domains:,} domains, broker outage under churn")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(True, alpha=0.3)
        written.append(_save(plt, fig, directory / "rss_outage.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else RESULTS_DIR / "summary.json"
    results = json.loads(path.read_text())["results"]
    print_targets(results)
    for p in plot(results, path.parent):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
