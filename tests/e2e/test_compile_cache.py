"""End-to-end on one sandbox host (socket strategy): the second start of a release whose
compile cache is warm is faster than its first, with the stand-in engine's compile step
(ENGINE_COMPILE_SECONDS when its cache entry under the service's cache directory is missing,
ENGINE_COMPILE_WARM_SECONDS when it is there; set in the release's main.py as the other engine
tests do). The figures compared come from the same run: the engine's own log (each start's
phases and whether its compile cache was hit) and the outage each start left in the host's
last-start.json. No figure is compared with a constant: the warm compile is at most half the
cold one, and the outage shrinks by at least half of what it saved."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import (
    APP_ROOT,
    assert_ok,
    build_variant,
    cli,
    cli_ok,
    example_artifact,
    run_deploy,
    sandbox_with,
    serving_release,
)
from tests.e2e.test_readiness import with_engine

pytestmark = pytest.mark.e2e

ENGINE_LOG = "/var/log/ai-server/ai-server-error.log"
_PHASES = re.compile(r"start-up phases (\{[^}]*\}), compile cache hit: (True|False|None)")


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with sandbox_with("p24-compile", {}, tmp_path_factory.mktemp("p24-inventory")) as sandbox:
        yield sandbox


def starts(host: Sandbox) -> list[tuple[dict[str, float], bool]]:
    """Each start's phases (seconds) and compile cache hit, from the engine's log, in order."""
    text = host.sudo(f"cat {ENGINE_LOG}")
    return [(ast.literal_eval(m[1]), m[2] == "True") for m in _PHASES.finditer(text)]


def last_start(host: Sandbox) -> dict[str, object]:
    return json.loads(host.sudo(f"cat {APP_ROOT}/last-start.json"))


def test_a_warm_compile_cache_makes_the_second_start_faster(host: Sandbox, tmp_path: Path) -> None:
    # Something serving first, so both starts of the release are outages of the same kind.
    assert_ok(run_deploy(host.inventory, example_artifact(tmp_path).data))
    compiles = with_engine(
        MODEL_LOAD_SECONDS="0", ENGINE_COMPILE_SECONDS="6", ENGINE_COMPILE_WARM_SECONDS="0.5"
    )
    release = build_variant(tmp_path, "p24-compile", patch_main=compiles)

    out = assert_ok(run_deploy(host.inventory, release.data))  # its first start: cold
    assert serving_release(host.address) == release.release_id
    cold_phases, cold_hit = starts(host)[-1]
    cold = last_start(host)
    assert cold["release"] == release.release_id and not cold_hit
    assert f"outage {cold['outage_s']:.1f} s: from stopping the old process" in out, out

    cli_ok(cli(host.inventory, "restart"))  # its second start: the cache is there now
    assert serving_release(host.address) == release.release_id
    warm_phases, warm_hit = starts(host)[-1]
    warm = last_start(host)
    assert warm["release"] == release.release_id and warm["at"] > cold["at"] and warm_hit

    assert len(starts(host)) == 3  # the example's start, then the release's two
    # Measurably: the warm compile at most half the cold one, and the outage shorter by at least
    # half of what the compile saved (the rest of the start is the same code on the same host).
    saved = cold_phases["compile"] - warm_phases["compile"]
    assert warm_phases["compile"] <= cold_phases["compile"] / 2, (cold_phases, warm_phases)
    cold_outage, warm_outage = float(str(cold["outage_s"])), float(str(warm["outage_s"]))
    assert cold_outage - warm_outage >= saved / 2, (cold, warm, cold_phases, warm_phases)
