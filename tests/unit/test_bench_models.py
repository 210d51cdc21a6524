"""The model-files benchmark's pure parts: the fetcher's DONE lines and curl's answer read back
from real-looking output, MB/s and the fetch/curl ratio, medians that leave bad deploys out,
the acceptance line both ways, the tables, the releases it builds (a valid models.toml, a
fresh release id each, the same uv.lock), and its steps run against a fake host and deploy."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from ai_deploy.artifact.models_manifest import manifest_from_artifact
from bench.models import ModelsBench, parse_args
from bench.models_host import MODEL, Served, build_release
from bench.models_report import (
    Deploy,
    Done,
    Throughput,
    acceptance,
    deploys_table,
    mb_per_s,
    median,
    pair_differences,
    parse_curl,
    parse_done,
    present_count,
    render_markdown,
    throughput_table,
)
from bench.proc import CmdResult
from testkit.variants import Variant

pytestmark = pytest.mark.unit

SHA = "ab" * 32
OTHER = "cd" * 32


def deploy(kind: str, i: int, wall: float, **changes: object) -> Deploy:
    label = f"{kind}-{i}"
    values: dict[str, object] = {
        "kind": kind,
        "label": label,
        "release_id": f"r{i}",
        "rc": 0,
        "wall_s": wall,
        "serves": label,
        "present_lines": 1 if kind == "present" else 0,
        "done_lines": 0,
        "requests": 0,
    }
    values.update(changes)
    return Deploy(**values)  # type: ignore[arg-type]


def test_done_lines_are_read_from_the_deploys_output() -> None:
    output = (
        "--> Starting operation: Ensure the release\n"
        f"    [10.201.3.2] models: PROGRESS {SHA} m/v1/weights.bin 5 10 1 5\n"
        f"    [10.201.3.2] models: DONE {SHA} bench-model/v1/weights.bin 1073741824 7.412\n"
        f"[10.201.3.2] models: DONE {OTHER} other/v2/a.bin 12 0.001  \n"
        f"[10.201.3.2] models: DONE {SHA} truncated-line\n"
        f"DONE {SHA} not/said/by/the/deploy 1 1.0\n"
    )
    assert parse_done(output) == [
        Done(SHA, "bench-model/v1/weights.bin", 1073741824, 7.412),
        Done(OTHER, "other/v2/a.bin", 12, 0.001),
    ]
    assert parse_done("") == []


def test_present_lines_are_counted() -> None:
    output = f"[h] models: PRESENT {SHA} m/v1/w.bin\n[h] models: MISSING {OTHER} m/v1/x\n"
    assert present_count(output) == 1
    assert present_count("nothing about models\n") == 0


def test_curls_answer_is_read_and_nonsense_refused() -> None:
    assert parse_curl("1.234567 1073741824") == (1.234567, 1073741824)
    assert parse_curl("0.5 2.68435456E8\n") == (0.5, 268435456)
    for bad in ("", "1.0", "0 100", "1.0 0", "1.0 2 3", "x 1"):
        with pytest.raises(ValueError):
            parse_curl(bad)


def test_throughput_is_in_mb_per_second_and_the_ratio_is_fetch_over_curl() -> None:
    assert mb_per_s(2_000_000, 0.5) == 4.0
    t = Throughput(1_000_000_000, curl_s=[2.5, 2.0], hash_s=4.0, disk_s=1.0)
    t.fetch = Done(SHA, "m/v1/w", 1_000_000_000, 5.0)
    assert t.curl_best_s == 2.0 and t.curl_mb_s == 500.0
    assert t.fetch_mb_s == 200.0
    assert t.ratio == pytest.approx(0.4)
    assert t.as_dict()["fetch_over_curl"] == pytest.approx(0.4)
    table = throughput_table(t)
    assert "| curl to /dev/null, better of 2 (2.50, 2.00 s) | 2.00 | 500 | 1.00x |" in table
    assert "| 5.00 | 200 | 0.40x |" in table
    assert "| 4.00 | 250 | - |" in table
    assert "| copy to the store's disk + fsync alone, dd (context) | 1.00 | 1000 | - |" in table
    empty = Throughput(1)
    assert empty.ratio is None and empty.curl_mb_s is None and empty.fetch_mb_s is None
    assert "(its DONE line) | - | - | - |" in throughput_table(empty)


def test_medians_leave_bad_deploys_out_and_the_acceptance_holds_within_half_a_second() -> None:
    assert median([]) is None and median([3.0, 1.0, 2.0]) == 2.0 and median([1.0, 2.0]) == 1.5
    deploys = [
        deploy("present", 1, 8.3),
        deploy("none", 1, 8.0),
        deploy("present", 2, 8.1),
        deploy("none", 2, 7.9),
        deploy("present", 3, 30.0, done_lines=1),  # it downloaded: not a "present" deploy
        deploy("none", 3, 7.7, rc=1),
    ]
    assert [d.ok for d in deploys] == [True, True, True, True, False, False]
    verdict = acceptance(deploys)
    assert verdict.holds is True
    assert "holds: 8.20 s against 7.95 s, difference +0.25 s" in verdict.text
    table = deploys_table(deploys)
    assert (
        "| models.toml, its files present (PRESENT) | 3 (2) | 8.30, 8.10, 30.00 (bad) | 8.20 |"
        in (table)
    )
    assert "| no models.toml | 3 (2) | 8.00, 7.90, 7.70 (bad) | 7.95 |" in table
    # Pairs run back to back: (8.3, 8.0) and (8.1, 7.9); the third has bad runs.
    assert pair_differences(deploys) == pytest.approx([0.3, 0.2])
    assert "| difference (present - none) | | each pair: +0.30, +0.20 | +0.25 |" in table


def test_the_acceptance_fails_honestly_and_is_undecided_without_runs() -> None:
    slow = [deploy("present", 1, 9.0), deploy("none", 1, 8.4)]
    verdict = acceptance(slow)
    assert verdict.holds is False and "does not hold" in verdict.text and "+0.60 s" in verdict.text
    assert acceptance([deploy("present", 1, 1.0)]).holds is None
    # A request for the file during a "present" deploy, or the wrong release serving: bad.
    assert not deploy("present", 1, 1.0, requests=1).ok
    assert not deploy("none", 1, 1.0, serves="present-1").ok
    assert not deploy("none", 1, 1.0, present_lines=1).ok


def test_the_markdown_names_what_was_left_out() -> None:
    t = Throughput(10, curl_s=[1.0])
    text = render_markdown(
        [("Command", "`x`")], t, [deploy("none", 1, 2.0, rc=3)], ["the run was interrupted"]
    )
    assert text.startswith("# Model files")
    assert "| Command | `x` |" in text
    assert "- none-1 (none) left out of the medians: exit 3" in text
    assert "- the run was interrupted" in text
    assert "acceptance not decided" in text


def test_quick_is_smaller() -> None:
    full, quick = parse_args([]), parse_args(["--quick"])
    assert (full.mib, full.pairs) == (1024, 3)
    assert (quick.mib, quick.pairs) == (256, 1)


def test_releases_have_a_valid_manifest_a_fresh_id_each_and_the_same_lock(tmp_path: Path) -> None:
    served = Served("bench/weights.bin", SHA, 1073741824, 3.0)
    with_models = build_release(tmp_path, "present-1", 2, served.manifest())
    without = build_release(tmp_path, "none-1", 3, None)
    again = build_release(tmp_path, "present-2", 4, served.manifest())
    assert len({with_models.release_id, without.release_id, again.release_id}) == 3
    (model,) = manifest_from_artifact(with_models.path, allow_http=True)
    assert model.name == MODEL and model.version == "v1"
    (f,) = model.files
    assert (f.path, f.sha256, f.size) == ("weights.bin", SHA, 1073741824)
    assert f.url == "http://127.0.0.1:8765/bench/weights.bin"
    assert manifest_from_artifact(without.path, allow_http=True) == []

    def lock(path: Path) -> bytes:
        with tarfile.open(path) as tar:
            name = next(n for n in tar.getnames() if n.endswith("uv.lock"))
            member = tar.extractfile(name)
            assert member is not None
            return member.read()

    assert lock(with_models.path) == lock(without.path) == lock(again.path)


class FakeServer:
    """The host's file server as the benchmark sees it: curl answers, a request count."""

    def __init__(self) -> None:
        self.count = 0

    def curl(self, served: Served) -> tuple[float, int]:
        return 0.5, served.size

    def requests(self, served: Served) -> int:
        return self.count

    def disk_write(self, served: Served, directory: str) -> float:
        return 2.5


def test_the_run_reads_each_deploy_into_results(tmp_path: Path) -> None:
    served = Served("bench/weights.bin", SHA, 1_000_000_000, 2.0)
    server = FakeServer()
    bench = ModelsBench(parse_args(["--quick", "--settle", "0"]), tmp_path)
    bench.server, bench.served = server, served  # type: ignore[assignment]
    walls = {"fetch": 9.0, "present-1": 7.6, "none-1": 7.4}
    said = {
        "fetch": f"[h] models: MISSING {SHA} m\n"
        f"[h] models: DONE {SHA} m/v1/weights.bin 1000000000 4.0\n",
        "present-1": f"[h] models: PRESENT {SHA} bench-model/v1/weights.bin\n",
        "none-1": "[h] Success\n",
    }

    def fake_deploy(variant: Variant, why: str) -> tuple[CmdResult, str]:
        server.count += 1 if variant.label == "fetch" else 0
        cmd = CmdResult([], 0, 0.0, walls[variant.label])
        cmd.lines = [(0.0, line + "\n") for line in said[variant.label].splitlines()]
        return cmd, variant.label

    bench.deploy = fake_deploy  # type: ignore[method-assign]
    releases = {k: Variant(k, tmp_path / k, f"id-{k}") for k in walls}
    bench.measure_throughput(releases["fetch"])
    bench.measure_pairs(releases)
    t = bench.throughput
    assert t is not None and t.curl_s == [0.5, 0.5] and (t.hash_s, t.disk_s) == (2.0, 2.5)
    assert t.fetch == Done(SHA, "m/v1/weights.bin", 1_000_000_000, 4.0)
    assert (t.curl_mb_s, t.fetch_mb_s, t.deploy_wall_s) == (2000.0, 250.0, 9.0)
    assert [(d.kind, d.wall_s, d.present_lines, d.requests, d.ok) for d in bench.deploys] == [
        ("present", 7.6, 1, 0, True),
        ("none", 7.4, 0, 0, True),
    ]
    assert acceptance(bench.deploys).holds is True
    steps = ["curl-1", "curl-2", "disk-write", "fetch", "present-1", "none-1"]
    assert list(bench.seen) == steps
