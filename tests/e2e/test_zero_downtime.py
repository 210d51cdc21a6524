"""Zero downtime under a steady load on /predict (counts, not timings): socket activation and
blue/green lose no request, the failing release under blue/green never gets one, and moving a
host between strategies is a normal deploy that leaves it serving."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from testkit.load import LoadGenerator, RequestRecord
from testkit.variants import crash_at_import, health_500
from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import (
    Artifact,
    assert_failed,
    assert_ok,
    build_variant,
    grand_total,
    run_deploy,
    serving_release,
)

pytestmark = pytest.mark.e2e
RATE = 20.0


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Artifact]:
    work = tmp_path_factory.mktemp("zd")
    same: Callable[[str], str] = lambda text: text + "\nZD_BASE = 1\n"  # noqa: E731
    return {
        "base": build_variant(work, "base", patch_main=same),
        "new": build_variant(work, "new", patch_main=lambda t: t + "\nZD_NEW = 2\n"),
        "crash": build_variant(work, "crash", patch_main=crash_at_import),
        "health500": build_variant(work, "health500", patch_main=health_500),
    }


def _under_load(
    address: str, timeout: float, deploy: Callable[[], object]
) -> tuple[object, list[RequestRecord]]:
    load = LoadGenerator(address, rate=RATE, timeout=timeout, max_duration=180).start()
    try:
        result = deploy()
    finally:
        records = load.stop()
    return result, records


def _failures(records: list[RequestRecord]) -> list[RequestRecord]:
    return [r for r in records if not r.ok]


def _assert_no_loss(records: list[RequestRecord], what: str) -> None:
    assert len(records) >= 2 * RATE, f"{what}: too few requests to judge ({len(records)})"
    failed = _failures(records)
    assert not failed, f"{what}: {len(failed)} of {len(records)} failed, first: {failed[:3]}"


def test_socket_activation_loses_no_request(
    sandbox: Sandbox, releases: dict[str, Artifact]
) -> None:
    inv = sandbox.inventory
    assert_ok(run_deploy(inv, f"artifact={releases['base'].path}"))
    assert sandbox.ssh("systemctl is-active ai-server.socket").strip() == "active"

    result, records = _under_load(
        sandbox.address, 10.0, lambda: run_deploy(inv, f"artifact={releases['new'].path}")
    )
    assert_ok(result)  # type: ignore[arg-type]
    _assert_no_loss(records, "new code")
    assert serving_release(sandbox.address) == releases["new"].release_id

    for bad in ("crash", "health500"):
        result, records = _under_load(
            sandbox.address, 10.0, lambda b=bad: run_deploy(inv, f"artifact={releases[b].path}")
        )
        assert_failed(result)  # type: ignore[arg-type]
        _assert_no_loss(records, bad)
        assert serving_release(sandbox.address) == releases["new"].release_id


def _colour_log_requests(sandbox: Sandbox, colour: str) -> list[str]:
    log = f"/var/log/ai-server/ai-server-{colour}.log"
    lines = sandbox.sudo(f"cat {log} 2>/dev/null || true").splitlines()
    return [line for line in lines if '"GET ' in line]


def test_bluegreen_loses_no_request_and_a_failing_colour_gets_none(
    fresh_sandbox: Sandbox, releases: dict[str, Artifact]
) -> None:
    sandbox, inv = fresh_sandbox, fresh_sandbox.inventory
    bg = "deploy_strategy=bluegreen"
    assert_ok(run_deploy(inv, f"artifact={releases['base'].path}", bg))

    result, records = _under_load(
        sandbox.address, 2.0, lambda: run_deploy(inv, f"artifact={releases['new'].path}", bg)
    )
    assert_ok(result)  # type: ignore[arg-type]
    _assert_no_loss(records, "blue/green new code")
    assert serving_release(sandbox.address) == releases["new"].release_id

    for bad in ("crash", "health500"):
        live = sandbox.sudo("cat /app/ai-server/colors/LIVE").strip()
        idle = "green" if live == "blue" else "blue"
        sandbox.sudo(f": > /var/log/ai-server/ai-server-{idle}.log")
        result, records = _under_load(
            sandbox.address,
            2.0,
            lambda b=bad: run_deploy(inv, f"artifact={releases[b].path}", bg),
        )
        out = assert_failed(result)  # type: ignore[arg-type]
        assert "never received traffic" in out
        _assert_no_loss(records, f"blue/green {bad}")
        assert serving_release(sandbox.address) == releases["new"].release_id
        assert sandbox.sudo("cat /app/ai-server/colors/LIVE").strip() == live
        # What reached the failing colour: the health gate's checks and nothing else.
        seen = _colour_log_requests(sandbox, idle)
        assert all('"GET /health ' in line for line in seen), seen
        if bad == "health500":
            assert seen, "the health gate's requests should show in the failing colour's log"


def test_switching_strategies_is_a_normal_deploy(
    fresh_sandbox: Sandbox, releases: dict[str, Artifact]
) -> None:
    sandbox, inv = fresh_sandbox, fresh_sandbox.inventory
    expected = {
        "restart": ("active", "inactive", "inactive"),
        "socket": ("active", "active", "inactive"),
        "bluegreen": ("inactive", "inactive", "active"),
    }
    artifacts = ["base", "new"]
    for n, strategy in enumerate(["restart", "socket", "bluegreen", "socket", "restart"]):
        art = releases[artifacts[n % 2]]
        data = (f"artifact={art.path}", f"deploy_strategy={strategy}")
        assert_ok(run_deploy(inv, *data))
        assert serving_release(sandbox.address) == art.release_id, strategy
        units = sandbox.ssh(
            "systemctl is-active ai-server.service ai-server.socket nginx.service; true"
        ).split()
        assert tuple(units) == expected[strategy], (strategy, units)
        again = run_deploy(inv, *data)
        assert_ok(again)
        assert grand_total(again.stdout).success == 0, f"{strategy}: second run changed things"
