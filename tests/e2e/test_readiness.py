"""End-to-end on one sandbox host (socket strategy): readiness that means "can serve" and a
deadline that follows progress, with the stand-in engine scaled down per release (each variant
of the example app sets its engine's environment variables in main.py, so the release switched
back to keeps its own fast start).

- The ready probe (POST /v1/completions for one token) passes on the example app: the release
  goes live, and a second deploy with the same input changes nothing.
- A release whose /health answers 200 but which does not serve the probe's model (404) is
  switched back, the probe and its last answer in the reason.
- A release that reports progress on /health for longer than health_deadline_s goes live.
- A release whose progress stops (a warm-up step far longer than the deadline) fails
  health_deadline_s after its last step, with that step in the message."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import (
    APP_ROOT,
    Artifact,
    assert_failed,
    assert_ok,
    build_variant,
    example_artifact,
    grand_total,
    revisions,
    run_deploy,
    sandbox_with,
    serving_release,
)

pytestmark = pytest.mark.e2e
DEADLINE_S = 4
READY = {
    "ready_path": "/v1/completions",
    "ready_method": "POST",
    "ready_body": json.dumps({"model": "demo-model", "prompt": "hi", "max_tokens": 1}),
    "health_deadline_s": DEADLINE_S,
    "health_deadline_max_s": 120,
}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with sandbox_with("r24-ready", READY, tmp_path_factory.mktemp("r24-inventory")) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("r24-ready")


@pytest.fixture(scope="module")
def base(host: Sandbox, workdir: Path) -> Artifact:
    """The example app, live behind the ready probe; a second deploy changes nothing."""
    artifact = example_artifact(workdir)
    out = assert_ok(run_deploy(host.inventory, artifact.data))
    assert "/v1/completions answered 200" in out, out
    again = assert_ok(run_deploy(host.inventory, artifact.data))
    assert grand_total(again).success == 0, again
    return artifact


def with_engine(**env: str) -> Callable[[str], str]:
    """A main.py patch: the engine's variables set before the app reads them."""

    def patch(text: str) -> str:
        anchor = "# Settings: environment variables only"
        return text.replace(anchor, f"os.environ.update({env!r})\n{anchor}", 1)

    return patch


def live(host: Sandbox, artifact: Artifact) -> None:
    if serving_release(host.address) != artifact.release_id:
        assert_ok(run_deploy(host.inventory, artifact.data))
    assert serving_release(host.address) == artifact.release_id


def switched_back(host: Sandbox, base: Artifact, bad: Artifact, out: str) -> None:
    assert f"rolled back to {base.release_id}" in out, out
    assert serving_release(host.address) == base.release_id
    current = host.sudo(f"readlink {APP_ROOT}/current").strip()
    assert current == f"releases/{base.release_id}"
    last = revisions(host)[-1]
    assert last.split()[1:4] == ["deploy", bad.release_id, "failed"], last


def test_healthy_but_not_ready_is_switched_back(
    host: Sandbox, base: Artifact, workdir: Path
) -> None:
    live(host, base)
    # /health answers 200 at once; the probe asks for demo-model, which it does not serve.
    bad = build_variant(workdir, "r24-other-model", patch_main=with_engine(MODEL_NAME="other"))
    out = assert_failed(run_deploy(host.inventory, bad.data))
    assert "/health answered 200 but POST http://127.0.0.1:8000/v1/completions" in out
    assert "did not answer 200 (last answer 404)" in out
    switched_back(host, base, bad, out)


def test_a_start_reporting_progress_goes_live_past_the_deadline(
    host: Sandbox, base: Artifact, workdir: Path
) -> None:
    live(host, base)
    # Three times the deadline of warm-up (compile is cached by the first start), one step of
    # progress every 1.2 s.
    slow = with_engine(
        ENGINE_SERVE_WHILE_LOADING="1", MODEL_LOAD_SECONDS="0", ENGINE_WARMUP_SECONDS="12"
    )
    release = build_variant(workdir, "r24-progress", patch_main=slow)
    out = assert_ok(run_deploy(host.inventory, release.data))
    assert serving_release(host.address) == release.release_id
    healthy = re.search(r"/health answered 200 after ([0-9.]+) s", out)
    assert healthy and float(healthy.group(1)) > DEADLINE_S, out
    assert re.search(r"loading \d+/40 \(warmup\)", out), out  # the gate showed the progress


def test_a_start_that_stops_progressing_fails_at_the_deadline(
    host: Sandbox, base: Artifact, workdir: Path
) -> None:
    live(host, base)
    # No files, no load, a cached compile: 30 of 40 at once, then warm-up's first step at 60 s.
    stuck = with_engine(
        ENGINE_SERVE_WHILE_LOADING="1", MODEL_LOAD_SECONDS="0", ENGINE_WARMUP_SECONDS="600"
    )
    bad = build_variant(workdir, "r24-stalled", patch_main=stuck)
    out = assert_failed(run_deploy(host.inventory, bad.data))
    assert f"within health_deadline_s={DEADLINE_S} s of its last progress" in out, out
    assert "last progress loading 30/40 (warmup)" in out
    switched_back(host, base, bad, out)
