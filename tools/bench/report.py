"""The bench's report: tables for the terminal, the targets, and PNG charts.

Every figure of ours is shown beside etcd's from the same run, with the ratio
ours/etcd. The charts need matplotlib (``pip install -e '.[bench]'``); without
it the bench says so and writes the tables and the JSON only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

OURS, ETCD = "trio-election", "etcd"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def pair(row: dict[str, Any] | None, a: str, b: str, spec: str = ".1f") -> str:
    row = row or {}
    return f"{fmt(row.get(a), spec)}/{fmt(row.get(b), spec)}"


def _by(rows: list[dict[str, Any]], system: str, *keys: str) -> dict[tuple, dict[str, Any]]:
    return {tuple(r[k] for k in keys): r for r in rows if r["system"] == system}


def _grid(headers: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    out = [" ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    out.append("-" * len(out[0]))
    out += [" ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def with_ratios(results: dict[str, Any]) -> None:
    """Add ``vs_etcd`` (ours/etcd per figure) to each of our rows that etcd has too."""
    for part, keys in (
        ("rows", ("nodes", "workload", "concurrency")),
        ("handover", ("nodes",)),
        ("failover", ("nodes",)),
        ("memory", ("nodes",)),
        ("capacity", ("nodes", "elections")),
    ):
        etcd = _by(results[part], ETCD, *keys)
        for row in results[part]:
            other = etcd.get(tuple(row[k] for k in keys))
            if row["system"] == OURS:
                row["vs_etcd"] = other and {
                    k: ratio(v, other.get(k))
                    for k, v in row.items()
                    if isinstance(v, float) and isinstance(other.get(k), float)
                }


def workload_table(rows: list[dict[str, Any]]) -> str:
    etcd = _by(rows, ETCD, "nodes", "workload", "concurrency")
    headers = [
        "nodes",
        "workload",
        "c",
        "ops/s",
        "spread",
        "p50/p99 ms",
        "CPU us/op",
        "B/op",
        "etcd ops/s",
        "p50/p99 ms",
        "CPU us/op",
        "B/op",
        "ops x",
        "CPU x",
        "errors",
    ]
    lines = []
    for r in rows:
        if r["system"] != OURS:
            continue
        e = etcd.get((r["nodes"], r["workload"], r["concurrency"]), {})
        lo, hi = r["ops_per_s_spread"]
        lines.append(
            [
                str(r["nodes"]),
                r["workload"],
                str(r["concurrency"]),
                fmt(r["ops_per_s"], ",.0f"),
                f"{lo:,.0f}..{hi:,.0f}",
                pair(r, "p50_ms", "p99_ms"),
                fmt(r["server_cpu_us_per_op"], ",.0f"),
                fmt(r["peer_bytes_per_op"], ",.0f"),
                fmt(e.get("ops_per_s"), ",.0f"),
                pair(e, "p50_ms", "p99_ms"),
                fmt(e.get("server_cpu_us_per_op"), ",.0f"),
                fmt(e.get("peer_bytes_per_op"), ",.0f"),
                fmt(ratio(r["ops_per_s"], e.get("ops_per_s")), ".2f"),
                fmt(ratio(r["server_cpu_us_per_op"], e.get("server_cpu_us_per_op")), ".2f"),
                f"{r['errors']}/{e.get('errors', '-')}",
            ]
        )
    return _grid(headers, lines) + (
        "\nops/s: median of the runs (spread min..max). CPU us/op and B/op (bytes sent between "
        "the nodes per op) are summed over the nodes.\nx: ours/etcd. errors: failed calls, "
        "ours/etcd."
    )


def events_table(results: dict[str, Any]) -> str:
    """Hand-over, failover and memory, ours beside etcd."""
    lines = []

    def add(label: str, part: str, nodes: int, key: str, spec: str, unit: str) -> None:
        ours = _by(results[part], OURS, "nodes").get((nodes,), {})
        etcd = _by(results[part], ETCD, "nodes").get((nodes,), {})
        if ours or etcd:
            lines.append(
                [
                    label,
                    str(nodes),
                    fmt(ours.get(key), spec) + unit,
                    fmt(etcd.get(key), spec) + unit,
                    fmt(ratio(ours.get(key), etcd.get(key)), ".2f"),
                ]
            )

    for nodes in (1, 3):
        add("hand-over p50", "handover", nodes, "p50_ms", ".2f", " ms")
        add("hand-over p99", "handover", nodes, "p99_ms", ".2f", " ms")
        add("failover (median)", "failover", nodes, "median_s", ".3f", " s")
        add("failover (worst)", "failover", nodes, "max_s", ".3f", " s")
        add("RSS per 10,000 elections", "memory", nodes, "mb_per_10k", ".1f", " MB")
    return _grid(["figure", "nodes", "trio-election", "etcd", "x"], lines)


def capacity_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        [
            f"{r['elections']:,}",
            r["system"],
            str(r["nodes"]),
            fmt(r["renewals_per_s"], ",.0f"),
            fmt(r["cluster_cpu_percent"], ".0f") + "%",
            pair(r, "p50_ms", "p99_ms"),
            fmt(r["rss_mb_per_10k"], ".1f"),
            str(r["refused_messages"]),
        ]
        for r in rows
    ]
    headers = ["held", "system", "nodes", "renewals/s", "CPU", "p50/p99 ms", "MB/10k", "refused"]
    return _grid(headers, lines) + (
        "\nTTL 10 s, each election renewed every TTL/3, 16 to a message (etcd: a session lease "
        "per 16); CPU summed over the nodes, in % of one core."
    )


def _row(rows: list[dict[str, Any]], system: str, nodes: int, workload: str, c: int) -> dict:
    return _by(rows, system, "nodes", "workload", "concurrency").get((nodes, workload, c), {})


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The performance targets, each with our figure, the goal and whether it is met."""
    rows = results["rows"]
    top = max(results["config"]["concurrency"])
    c64 = 64 if 64 in results["config"]["concurrency"] else top
    out = []

    def add(name: str, ours: float | None, goal: float | None, better: str, unit: str) -> None:
        met = None
        if ours is not None and goal is not None:
            met = ours >= goal if better == ">=" else ours <= goal
        out.append(
            {"target": name, "ours": ours, "goal": goal, "better": better, "unit": unit, "met": met}
        )

    def best(nodes: int, workload: str, key: str, system: str = OURS) -> float | None:
        values = [
            r[key]
            for r in rows
            if (r["system"], r["nodes"], r["workload"]) == (system, nodes, workload)
            and r[key] is not None
        ]
        if not values:
            return None
        return max(values) if key == "ops_per_s" else min(values)

    renew = _row(rows, OURS, 3, "renew", top)
    add("3 nodes: renewals/s (renew16, best c)", best(3, "renew16", "ops_per_s"), 20e3, ">=", "/s")
    add(
        f"3 nodes: CPU per renewal, c={top}, vs etcd's",
        renew.get("server_cpu_us_per_op"),
        _row(rows, ETCD, 3, "renew", top).get("server_cpu_us_per_op"),
        "<=",
        "us",
    )
    acquire = _row(rows, OURS, 3, "acquire", c64)
    add(f"3 nodes: acquires/s at c={c64}", acquire.get("ops_per_s"), 5_000, ">=", "/s")
    add(
        f"3 nodes: CPU per acquire, c={c64}, vs etcd's",
        acquire.get("server_cpu_us_per_op"),
        _row(rows, ETCD, 3, "acquire", c64).get("server_cpu_us_per_op"),
        "<=",
        "us",
    )
    for cap in results["capacity"]:
        if cap["system"] == OURS:
            n = f"{cap['elections']:,}"
            add(f"3 nodes: {n} held, cluster CPU", cap["cluster_cpu_percent"], 100, "<=", "%")
            add(f"3 nodes: {n} held, renewal p99", cap["p99_ms"], 50, "<=", "ms")
    add(
        "1 node: server CPU per unary call (read, best c)",
        best(1, "read", "server_cpu_us_per_op"),
        120,
        "<=",
        "us",
    )
    cheapest = best(1, "renew16", "server_cpu_us_per_op")
    add("1 node: batched renewals per server core", cheapest and 1e6 / cheapest, 1e5, ">=", "/s")
    single = _row(rows, OURS, 1, "acquire", c64).get("ops_per_s")
    add(
        f"1 node: acquires/s at c={c64}, vs etcd's",
        single,
        _row(rows, ETCD, 1, "acquire", c64).get("ops_per_s"),
        ">=",
        "/s",
    )
    for mem in results["memory"]:
        if mem["system"] == OURS:
            name = f"{mem['nodes']} node(s): RSS per 10,000 elections"
            add(name, mem["mb_per_10k"], 1.0, "<=", "MB")
    for hand in results["handover"]:
        if hand["system"] == OURS:
            add(f"{hand['nodes']} node(s): hand-over p50", hand["p50_ms"], 10, "<=", "ms")
    for fail in results["failover"]:
        if fail["system"] == OURS:
            add(f"{fail['nodes']} nodes: failover (worst round)", fail["max_s"], 1.5, "<=", "s")
    return out


def targets_table(rows: list[dict[str, Any]]) -> str:
    verdict = {True: "met", False: "NOT MET", None: "-"}
    lines = [
        [
            t["target"],
            f"{fmt(t['ours'], ',.1f')} {t['unit']}",
            f"{t['better']} {fmt(t['goal'], ',.1f')} {t['unit']}",
            verdict[t["met"]],
        ]
        for t in rows
    ]
    return _grid(["target", "trio-election", "goal", ""], lines)


def render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    parts = [
        workload_table(results["rows"]),
        events_table(results),
        capacity_table(results["capacity"]),
        targets_table(results["targets"]),
        f"{machine['cpus']} CPUs ({machine['cpu_model']}), shared by the servers and this one "
        f"load generator (Python {machine['python']}); etcd: {results['etcd'] or 'not measured'}.",
    ]
    return "\n\n".join(parts)


# -- charts ------------------------------------------------------------------------


def charts(results: dict[str, Any], out: Path) -> list[Path]:
    """throughput.png, latency.png, cpu.png, memory.png in ``out``; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out.mkdir(parents=True, exist_ok=True)
    rows = results["rows"]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    node_counts = sorted({r["nodes"] for r in rows})
    systems = [s for s in (OURS, ETCD) if any(r["system"] == s for r in rows)]
    colours = {OURS: "tab:blue", ETCD: "tab:orange"}
    title = f"{results['machine']['cpus']} CPUs, {results['etcd'] or 'etcd not measured'}"
    written = []

    def series(system: str, nodes: int, workload: str, key: str) -> tuple[list, list]:
        picked = [
            r
            for r in rows
            if (r["system"], r["nodes"], r["workload"]) == (system, nodes, workload)
            and r[key] is not None
        ]
        return [r["concurrency"] for r in picked], [r[key] for r in picked]

    for name, key, label in (
        ("throughput", "ops_per_s", "ops/s"),
        ("latency", "p99_ms", "p99 latency, ms (dashed: p50)"),
    ):
        fig, axes = plt.subplots(
            len(node_counts),
            len(workloads),
            figsize=(4 * len(workloads), 3.2 * len(node_counts)),
            squeeze=False,
        )
        for y, nodes in enumerate(node_counts):
            for x, workload in enumerate(workloads):
                ax = axes[y][x]
                for system in systems:
                    cs, values = series(system, nodes, workload, key)
                    ax.plot(cs, values, "o-", color=colours[system], label=system)
                    if key == "p99_ms":
                        cs, values = series(system, nodes, workload, "p50_ms")
                        ax.plot(cs, values, "o--", color=colours[system], alpha=0.6)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_title(f"{workload}, {nodes} node{'s' if nodes > 1 else ''}")
                ax.set_xlabel("concurrency")
                ax.set_ylabel(label)
                ax.grid(True, which="both", alpha=0.3)
        axes[0][0].legend()
        fig.suptitle(f"{label} vs concurrency ({title})")
        fig.tight_layout()
        written.append(out / f"{name}.png")
        fig.savefig(written[-1], dpi=90)
        plt.close(fig)

    # CPU per op at the highest concurrency, by workload.
    top = max(results["config"]["concurrency"])
    size = (5 * len(node_counts), 3.5)
    fig, axes = plt.subplots(1, len(node_counts), figsize=size, squeeze=False)
    for x, nodes in enumerate(node_counts):
        ax = axes[0][x]
        width = 0.8 / max(1, len(systems))
        for s, system in enumerate(systems):
            values = [
                _row(rows, system, nodes, w, top).get("server_cpu_us_per_op") or 0
                for w in workloads
            ]
            ax.bar(
                [i + s * width for i in range(len(workloads))],
                values,
                width,
                color=colours[system],
                label=system,
            )
        ax.set_xticks([i + width * (len(systems) - 1) / 2 for i in range(len(workloads))])
        ax.set_xticklabels(workloads)
        ax.set_yscale("log")
        ax.set_ylabel("server CPU us per op (summed over nodes)")
        ax.set_title(f"{nodes} node{'s' if nodes > 1 else ''}, c={top}")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    written.append(out / "cpu.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)

    # Memory grown vs elections held, in the steps of the memory phase.
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for m in results["memory"]:
        style = "o-" if m["nodes"] > 1 else "s--"
        label = f"{m['system']}, {m['nodes']} node{'s' if m['nodes'] > 1 else ''}"
        ax.plot(*zip(*m["grown_mb"], strict=True), style, color=colours[m["system"]], label=label)
    ax.set_xlabel("elections held (more than at the start)")
    ax.set_ylabel("RSS grown, MB (largest node)")
    ax.set_title("memory vs elections")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    written.append(out / "memory.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)
    return written
