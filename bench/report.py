"""What a run leaves behind: RESULTS.md (a table per model-load setting), one PNG chart per
scenario and setting, results.json with every request, and the deploy logs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.metrics import Summary, format_ratio, ratio
from bench.scenarios import SCENARIOS, Measurement

SEED = "seed"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _with_ratio(text: str, ours: float | None, seed: float | None, is_seed: bool) -> str:
    if is_seed:
        return text
    return f"{text} ({format_ratio(ratio(ours, seed))})"


def _failed_cell(s: Summary) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in s.failures_by_status.items())
    text = f"{s.failed} / {s.requests} ({s.failed_pct:.1f}%)"
    return f"{text} {kinds}" if kinds else text


def _window_cell(s: Summary) -> str:
    if s.longest_failure_ongoing:
        return f"≥{s.longest_failure_s:.2f} (still failing)"
    return f"{s.longest_failure_s:.2f}"


def _target_label(name: str) -> str:
    return "seed script" if name == SEED else f"ours: {name}"


COLUMNS = (
    "Scenario",
    "Target",
    "Deploy result",
    "Wall s (xseed)",
    "Failed requests (xseed)",
    "Longest failure window s (xseed)",
    "p50 / p99 steady ms",
    "p50 / p99 during deploy ms (p99 xsteady)",
    "Serves after",
)


def render_table(measurements: Sequence[Measurement], titles: dict[str, str]) -> str:
    """A Markdown table: one row per scenario and target, ratios against the seed's row of the
    same scenario (from the same run)."""
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    by_scenario: dict[str, list[Measurement]] = {}
    for m in measurements:
        by_scenario.setdefault(m.scenario, []).append(m)
    for key, group in by_scenario.items():
        base = next((m for m in group if m.target == SEED and m.summary and m.outcome), None)
        bs = base.summary if base else None
        for i, m in enumerate(sorted(group, key=lambda m: (m.target != SEED,))):
            title = titles.get(key, key) if i == 0 else ""
            is_seed = m.target == SEED
            if m.summary is None or m.outcome is None:
                cells = [title, _target_label(m.target), m.error or "not measured"]
                cells += ["-"] * (len(COLUMNS) - len(cells))
            else:
                s, o = m.summary, m.outcome
                p99x = format_ratio(ratio(s.deploy_p99_ms, s.steady_p99_ms))
                cells = [
                    title,
                    _target_label(m.target),
                    o.result,
                    _with_ratio(
                        f"{o.wall_s:.1f}",
                        o.wall_s,
                        base.outcome.wall_s if base and base.outcome else None,
                        is_seed,
                    ),
                    _with_ratio(_failed_cell(s), s.failed, bs.failed if bs else None, is_seed),
                    _with_ratio(
                        _window_cell(s),
                        s.longest_failure_s,
                        bs.longest_failure_s if bs else None,
                        is_seed,
                    ),
                    f"{_ms(s.steady_p50_ms)} / {_ms(s.steady_p99_ms)}",
                    f"{_ms(s.deploy_p50_ms)} / {_ms(s.deploy_p99_ms)} ({p99x})",
                    s.serves_after,
                ]
            lines.append(
                "| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |"
            )
    return "\n".join(lines) + "\n"


@dataclass
class RunInfo:
    command: str
    date: str
    machine: str
    hosts: str
    load: str
    timeouts: str
    windows: str
    seed_health: str
    runtime_s: float = 0.0
    notes: tuple[str, ...] = ()


def render_markdown(info: RunInfo, settings: dict[float, list[Measurement]]) -> str:
    titles = {s.key: s.title for s in SCENARIOS}
    out = [
        "# Deploy benchmark: our deploy vs the seed's procedure\n",
        f"- Command: `{info.command}`",
        f"- Date: {info.date}; runtime {info.runtime_s / 60:.1f} min",
        f"- Machine: {info.machine}",
        f"- Hosts: {info.hosts}",
        f"- Load: {info.load}",
        f"- Client timeouts: {info.timeouts}",
        f"- Windows: {info.windows}",
        f"- Seed health check: {info.seed_health}",
        "",
        "Failed requests count every request scheduled from the deploy's start to the end of "
        "the window after it; the longest failure window runs from the first failed request "
        "to the next one that succeeded; latencies are of successful requests only; ratios are "
        "ours / seed from the same run (- when both are 0, ∞ when only the seed's is).",
        "",
    ]
    for ml, ms in settings.items():
        out.append(f"## MODEL_LOAD_SECONDS={ml:g}\n")
        out.append(render_table(ms, titles))
        charts = sorted({m.scenario for m in ms})
        out.append(
            "Charts: " + ", ".join(f"[{k}](charts/{chart_name(ml, k)})" for k in charts) + "\n"
        )
    if info.notes:
        out.append("## Notes\n")
        out.extend(f"- {n}" for n in info.notes)
        out.append("")
    return "\n".join(out)


def chart_name(model_load_s: float, scenario: str) -> str:
    return f"load{model_load_s:g}s-{scenario}.png"


def measurement_json(m: Measurement) -> dict[str, object]:
    return {
        "scenario": m.scenario,
        "target": m.target,
        "model_load_s": m.model_load_s,
        "client_timeout_s": m.client_timeout_s,
        "error": m.error,
        "detail": m.detail,
        "outcome": None
        if m.outcome is None
        else {"ok": m.outcome.ok, "result": m.outcome.result, "wall_s": m.outcome.wall_s},
        "deploy_start_s": m.deploy_start,
        "deploy_end_s": m.deploy_end,
        "end_s": m.end,
        "summary": m.summary.as_dict() if m.summary else None,
        "record_fields": ["seq", "scheduled", "start", "end", "status", "code", "variant"],
        "records": [
            [
                r.seq,
                round(r.scheduled, 4),
                round(r.start, 4),
                round(r.end, 4),
                r.status,
                r.code,
                r.variant,
            ]
            for r in m.records
        ],
        "deploy_output": [
            [round(t - m.t0, 3), line.rstrip("\n")]
            for t, line in (m.outcome.lines if m.outcome else [])
        ],
    }


def write_log(out: Path, m: Measurement) -> Path | None:
    """The measured deploy's output, each line stamped with seconds since the load started."""
    if m.outcome is None and not m.detail:
        return None
    path = out / "logs" / f"load{m.model_load_s:g}s-{m.scenario}-{m.target}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    if m.outcome is None:
        path.write_text(f"{m.target}, scenario {m.scenario}: {m.error}\n{m.detail}\n")
        return path
    stamped = "".join(f"[+{t - m.t0:7.2f}s] {line}" for t, line in m.outcome.lines)
    path.write_text(
        f"{m.target}, scenario {m.scenario}: {m.outcome.result} in {m.outcome.wall_s:.2f} s "
        f"(deploy from +{m.deploy_start:.2f}s to +{m.deploy_end:.2f}s)\n{stamped}"
    )
    return path


def write_results(
    out: Path, info: RunInfo, settings: dict[float, list[Measurement]], extra: dict[str, object]
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for ms in settings.values():
        for m in ms:
            write_log(out, m)
    (out / "results.json").write_text(
        json.dumps(
            {
                "run": {**info.__dict__, **extra},
                "settings": [
                    {"model_load_s": ml, "measurements": [measurement_json(m) for m in ms]}
                    for ml, ms in settings.items()
                ],
            },
            indent=1,
        )
        + "\n"
    )
    for ml, ms in settings.items():
        for key in {m.scenario for m in ms}:
            chart(out / "charts" / chart_name(ml, key), [m for m in ms if m.scenario == key])
    path = out / "RESULTS.md"
    path.write_text(render_markdown(info, settings))
    return path


def chart(path: Path, measurements: Sequence[Measurement]) -> None:
    """One figure per scenario: a row per target with each request's latency over time
    (failures as red crosses at the time they gave up), requests per second answered and
    failed, and the deploy's start and end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [m for m in measurements if m.records]
    if not rows:
        return
    rows.sort(key=lambda m: m.target != SEED)  # stable: the strategies keep their order
    # One latency scale for every row, so the targets compare at a glance.
    top = max(max(r.latency for r in m.records) for m in rows) * 1000
    ylim = (0.1, max(top, 100.0) * 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(rows), 1, figsize=(11, 2.8 * len(rows)), squeeze=False)
    for ax, m in zip(axes[:, 0], rows, strict=True):
        x0 = m.deploy_start
        ok = [r for r in m.records if r.ok]
        bad = [r for r in m.records if not r.ok]
        ax.scatter(
            [r.scheduled - x0 for r in ok],
            [max(r.latency, 1e-4) * 1000 for r in ok],
            s=6,
            color="tab:blue",
            label="answered (latency)",
        )
        ax.scatter(
            [r.scheduled - x0 for r in bad],
            [max(r.latency, 1e-4) * 1000 for r in bad],
            s=14,
            marker="x",
            color="tab:red",
            label="failed (time to failure)",
        )
        ax.set_yscale("log")
        ax.set_ylim(*ylim)
        ax.set_ylabel("latency ms")
        ax.axvspan(0, m.deploy_end - x0, color="0.9", zorder=0)
        ax.axvline(0, color="k", linestyle="--", linewidth=1, label="deploy start / end")
        ax.axvline(m.deploy_end - x0, color="k", linestyle="--", linewidth=1)
        rate = ax.twinx()
        bins = 0.5
        nbins = int(m.end / bins)  # whole bins only: a partial last bin would read as a drop
        edges = [i * bins for i in range(nbins + 1)]
        for subset, colour, label in (
            (ok, "tab:green", "answered / s (by scheduled time)"),
            (bad, "tab:red", "failed / s (by scheduled time)"),
        ):
            counts = [0] * nbins
            for r in subset:
                if 0 <= int(r.scheduled / bins) < nbins:
                    counts[int(r.scheduled / bins)] += 1
            rate.stairs(
                [c / bins for c in counts],
                [e - x0 for e in edges],
                color=colour,
                alpha=0.6,
                linewidth=1,
                label=label,
            )
        rate.set_ylabel("requests / s")
        rate.set_ylim(bottom=0)
        s, o = m.summary, m.outcome
        head = f"{_target_label(m.target)}"
        if s and o:
            head += (
                f": {o.result}, deploy {o.wall_s:.1f} s, {s.failed}/{s.requests} failed, "
                f"longest failure {s.longest_failure_s:.2f} s, serves {s.serves_after}"
            )
        ax.set_title(head, fontsize=9)
        if ax is axes[0, 0]:
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = rate.get_legend_handles_labels()
            fig.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower center", ncol=5)
    first = rows[0]
    axes[-1, 0].set_xlabel("seconds since the deploy started")
    fig.suptitle(f"{first.scenario} (MODEL_LOAD_SECONDS={first.model_load_s:g})", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def contention(seen: dict[str, list[str]], what: str) -> str:
    """Which other sandbox hosts were running before each measured WHAT (a step, a run): the
    report's note on how shared the machine was."""
    busy = {step: names for step, names in seen.items() if names}
    if not busy:
        return f"no other sandbox host running before any of the {len(seen)} {what}"
    return "other sandbox hosts running before: " + "; ".join(
        f"{step}: {', '.join(names)}" for step, names in busy.items()
    )
