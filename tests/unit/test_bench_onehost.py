"""The one-host benchmark's pure parts: the closing `phases:` line read back, the breakdown of
a run from its timestamped lines (the parts add up to the wall time, a missing mark gives no
number rather than a wrong one, a no-op has no upload), the medians that leave failed runs out,
the ratios and the report."""

from __future__ import annotations

import pytest

from bench.onehost import parse_args
from bench.onehost_parse import PARTS, parse_phases, pyinfra_breakdown, tool_breakdown
from bench.onehost_report import Run, breakdown_table, render_markdown, wall_median, walls_table

pytestmark = pytest.mark.unit

PYINFRA = [
    (1.0, "--> Loading config...\n"),
    (1.1, "--> Connecting to hosts...\n"),
    (2.5, "    [10.201.1.2] Ready: deploy.py\n"),
    (2.5, "--> Beginning operation run...\n"),
    (2.5, "--> Starting operation: Service user | Ensure /app/ai-server exists \n"),
    (4.0, "--> Starting operation: Release in service | Upload artifact a.tar.gz (skipped) \n"),
    (4.4, "--> Starting operation: Release | Ensure release abc serves and is healthy\n"),
    (9.0, "    [10.201.1.2] deploy of abc healthy\n"),
    (9.1, "--> Results:\n"),
    (9.2, "--> Disconnecting from hosts...\n"),
]
TOOL = [
    (5.0, "==> Check the artifact and the settings\n"),
    (6.5, "==> Check SSH\n"),
    (6.8, "==> Deploy with pyinfra\n"),
    *((t + 7.0, line) for t, line in PYINFRA),
    (16.4, "==> Check health from outside\n"),
    (16.5, "phases: artifact 1.5 s, ssh 0.3 s, deploy 9.6 s, health 0.1 s\n"),
    (16.5, "ai-server deploy succeeded: release abc on 1 host in 11.5 s\n"),
]


def test_phases_are_read_from_the_last_closing_line() -> None:
    out = "phases: artifact 9 s\nnoise\nphases: artifact 1.2 s, ssh 0.3 s, deploy 2 min 5 s, "
    out += "health 0.0 s (failed)\n"
    assert parse_phases(out) == {"artifact": 1.2, "ssh": 0.3, "deploy": 125.0, "health": 0.0}
    assert parse_phases("no closing line here\n") == {}


def test_a_tool_run_is_split_into_parts_that_add_up_to_its_wall_time() -> None:
    phases = parse_phases("".join(line for _, line in TOOL))
    parts = tool_breakdown(TOOL, 0.0, 17.5, phases)
    assert list(parts) == list(PARTS)
    assert parts["wrapper start"] == pytest.approx(5.0)
    assert parts["artifact"] == 1.5 and parts["access"] == 0.3
    assert parts["pyinfra start"] == pytest.approx(1.2)  # deploy heading to Loading config
    assert parts["connect and facts"] == pytest.approx(1.5)
    assert parts["host ops"] == pytest.approx(1.5)
    assert parts["upload"] == pytest.approx(0.4)
    assert parts["gate"] == pytest.approx(4.7)
    assert parts["pyinfra end"] == pytest.approx(0.3)  # Results to the health heading
    assert parts["outside check"] == 0.1
    assert parts["exit"] == pytest.approx(1.0)
    assert sum(v for v in parts.values() if v is not None) == pytest.approx(17.5)


def test_access_is_every_phase_that_is_not_artifact_deploy_or_health() -> None:
    phases = {"artifact": 1.0, "instance": 0.5, "host-keys": 0.2, "ssh": 0.3, "deploy": 9.0}
    assert tool_breakdown(TOOL, 0.0, 17.5, phases)["access"] == pytest.approx(1.0)
    assert tool_breakdown(TOOL, 0.0, 17.5, {"deploy": 9.0})["access"] is None


def test_a_no_op_has_no_upload_and_its_host_ops_end_at_the_release_operation() -> None:
    lines = [x for x in PYINFRA if "Upload artifact" not in x[1]]
    parts = pyinfra_breakdown(lines, 0.0, 9.5)
    assert parts["upload"] == 0.0
    assert parts["host ops"] == pytest.approx(1.9)


def test_missing_marks_give_no_number_and_the_rest_goes_to_other() -> None:
    lines = [(0.5, "Traceback (most recent call last):\n"), (0.6, "boom\n")]
    parts = tool_breakdown(lines, 0.0, 1.0, {})
    assert parts["wrapper start"] is None and parts["gate"] is None
    assert parts["connect and facts"] is None and parts["upload"] is None
    assert parts["exit"] == pytest.approx(0.4)
    assert parts["other"] == pytest.approx(0.6)
    assert pyinfra_breakdown([], 0.0, 2.0)["other"] == pytest.approx(2.0)


def test_a_plain_pyinfra_run_starts_at_loading_config_and_ends_at_exit() -> None:
    parts = pyinfra_breakdown(PYINFRA, 0.0, 9.5)
    assert parts["wrapper start"] == pytest.approx(1.0)
    assert parts["pyinfra end"] == pytest.approx(0.4)
    assert parts["artifact"] is None and parts["outside check"] is None
    assert sum(v for v in parts.values() if v is not None) == pytest.approx(9.5)


def _run(tool: str, kind: str, wall: float, ok: bool = True) -> Run:
    parts = {p: None for p in PARTS} | {"gate": wall / 2}
    return Run(tool, 1, kind, 0 if ok else 14, wall, ok, "" if ok else "exit 14", {}, parts, "x")


def test_medians_and_ratios_leave_failed_runs_out() -> None:
    runs = [
        _run("before", "code", 10.0),
        _run("before", "code", 12.0),
        _run("before", "code", 99.0, ok=False),
        _run("after", "code", 11.0),
    ]
    assert wall_median(runs, "before", "code") == 11.0
    assert wall_median(runs, "after", "noop") is None
    table = walls_table(runs)
    assert "| 11.00 (10.00, 12.00) | 11.00 (11.00) | 1.00x |" in table
    assert "99.00" not in table
    assert "| gate | 5.50 | 5.50 | +0.00 |" in breakdown_table(runs, "code")
    report = render_markdown([("Command", "`x`")], runs, "how", ["a note"])
    assert "**not ok**: exit 14" in report and "- a note" in report


def test_rounds_must_be_positive() -> None:
    assert parse_args([]).base == "e2b7edb" and parse_args([]).rounds == 3
    with pytest.raises(SystemExit):
        parse_args(["--rounds", "0"])
