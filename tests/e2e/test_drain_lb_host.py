"""End-to-end, one sandbox host (no load balancer needed: the test reads lb_health_path itself,
as a load balancer would): with lb_drain and the one-copy `restart` strategy, nginx answers
lb_health_path in front of the app; a restart turns it 200 -> 503 -> 200 in that order, with the
deploy's lines for each step, and waits for a stream open through nginx before the stop; a
release that fails stays drained (503 "drained", never "not ready" or 200) until the previous
release is back; a second run drains nothing; lb_drain turned off gives the port back to the
app and takes nginx away; a deploy stopped by SIGTERM while the host is drained (or while its
new release starts) does not leave it out of rotation."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import (
    PYTHON,
    REPO,
    Artifact,
    assert_failed,
    assert_ok,
    build_variant,
    cli,
    cli_ok,
    example_artifact,
    grand_total,
    run_deploy,
    sandbox_with,
    serving_release,
)
from tests.e2e.test_drain import open_stream

pytestmark = pytest.mark.e2e
WAIT_S = 3  # lb_drain_wait_s: short, the test's "load balancer" looks every 0.1 s
SETTINGS = {"deploy_strategy": "restart", "lb_drain": True, "lb_drain_wait_s": WAIT_S}
FLAG = "/run/ai-server.lb-drained"
TOKENS = 150  # 30 s at the stream's 0.2 s: open when the restart reaches the drain


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with sandbox_with("l25-lb", SETTINGS, tmp_path_factory.mktemp("l25-lb")) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return example_artifact(tmp_path_factory.mktemp("l25-release"))


@dataclass
class Samples:
    """(status, body) of lb_health_path, read every 0.1 s in a thread."""

    seen: list[tuple[int, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def changes(self) -> list[int]:
        """The statuses in order, each run of equal ones once."""
        out: list[int] = []
        for code, _ in self.seen:
            if not out or out[-1] != code:
                out.append(code)
        return out

    def runs(self) -> str:
        """The samples in short, for a failure's message: status/body x count."""
        out: list[list[object]] = []
        for code, body in self.seen:
            key = f"{code}/{body[:40]}"
            if out and out[-1][0] == key:
                out[-1][1] += 1  # type: ignore[operator]
            else:
                out.append([key, 1])
        return ", ".join(f"{key} x{n}" for key, n in out)


@pytest.fixture
def lb_health(host: Sandbox, release: Artifact) -> Iterator[Samples]:
    """lb_health_path sampled from a thread, from when RELEASE is in service."""
    _deployed(host, release)
    samples = Samples()

    def sample() -> None:
        while not samples.stop.is_set():
            try:
                reply = requests.get(f"http://{host.address}:8000/lb-health", timeout=2)
                samples.seen.append((reply.status_code, reply.text.strip()))
            except requests.RequestException as exc:
                samples.seen.append((0, repr(exc)[:300]))
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    yield samples
    samples.stop.set()
    thread.join(10)


def _lb_health(host: Sandbox) -> tuple[int, str]:
    reply = requests.get(f"http://{host.address}:8000/lb-health", timeout=5)
    return reply.status_code, reply.text.strip()


def _in_order(out: str, *lines: str) -> None:
    at = 0
    for line in lines:
        found = out.find(line, at)
        assert found >= 0, f"{line!r} not after position {at} in:\n{out}"
        at = found + len(line)


def _deployed(host: Sandbox, release: Artifact) -> None:
    """RELEASE in service behind the front (deployed unless it already is)."""
    try:
        ready = _lb_health(host)[0] == 200 and serving_release(host.address) == release.release_id
    except requests.RequestException:
        ready = False
    if not ready:
        assert_ok(run_deploy(host.inventory, release.data))


def test_nginx_answers_lb_health_in_front_of_the_app(host: Sandbox, release: Artifact) -> None:
    assert_ok(run_deploy(host.inventory, release.data))
    assert _lb_health(host)[0] == 200
    assert serving_release(host.address) == release.release_id  # through nginx
    listening = host.sudo("ss -Htlnp")
    assert "0.0.0.0:8000" in listening and "nginx" in listening.split("0.0.0.0:8000")[1][:200]
    assert "127.0.0.1:18000" in listening
    unit = host.sudo("cat /etc/systemd/system/ai-server.service")
    assert "--host 127.0.0.1 --port 18000 " in unit and "--timeout-keep-alive 620" in unit
    # The app's own health_path is unchanged; the drain flag alone makes the host 503.
    host.sudo("touch /run/ai-server.lb-drained")
    try:
        assert _lb_health(host) == (503, "drained")
        assert serving_release(host.address) == release.release_id
        shown = cli_ok(cli(host.inventory, "status"))
        assert "  lb:        drained (/lb-health on port 8000: 503)\n" in shown, shown
    finally:
        host.sudo("rm -f /run/ai-server.lb-drained")
    assert _lb_health(host)[0] == 200
    shown = cli_ok(cli(host.inventory, "status"))
    assert "  lb:        in service (/lb-health on port 8000: 200)\n" in shown, shown
    # The app down: "not ready", whatever nginx gets (a refused connection).
    host.sudo("systemctl stop ai-server")
    try:
        assert _lb_health(host) == (503, "not ready")
        shown = cli(host.inventory, "status")
        assert shown.returncode == 1 and "  lb:        not ready (/lb-health" in shown.stdout
    finally:
        host.sudo("systemctl start ai-server")
    for _ in range(100):
        if _lb_health(host)[0] == 200:
            break
        time.sleep(0.2)
    assert _lb_health(host)[0] == 200


def test_a_second_run_drains_nothing(host: Sandbox, release: Artifact, lb_health: Samples) -> None:
    out = assert_ok(run_deploy(host.inventory, release.data))
    assert grand_total(out).success == 0, out
    assert "drained from the load balancer" not in out
    lb_health.stop.set()
    assert lb_health.seen and lb_health.changes() == [200], lb_health.runs()


def test_a_restart_drains_waits_for_the_stream_and_puts_the_host_back(
    host: Sandbox, release: Artifact, lb_health: Samples
) -> None:
    # An idle keep-alive connection to nginx is not a request in flight: never waited for.
    idle = requests.Session()
    assert idle.get(f"http://{host.address}:8000/health", timeout=5).status_code == 200
    stream, thread = open_stream(host.address, TOKENS)
    assert stream.first.wait(30) and stream.tokens, stream.error
    out = cli_ok(cli(host.inventory, "restart", timeout=400))
    thread.join(120)
    lb_health.stop.set()
    assert stream.error == "" and stream.done, (stream.error, len(stream.tokens), out)
    assert [t["index"] for t in stream.tokens] == list(range(TOKENS))
    idle.close()
    assert lb_health.changes() == [200, 503, 200], lb_health.runs()
    _in_order(
        out,
        f"drained from the load balancer; waiting {WAIT_S} s",
        "] 1 request(s) in flight, finished in",  # the stream, not the idle connection
        "ai-server.service: no connection open at the stop",  # the stream was waited for
        "/health answered 200 after",
        f"back in service after {WAIT_S} s",
        "restarted and healthy",
    )
    assert serving_release(host.address) == release.release_id


def test_a_failing_release_stays_drained_until_the_previous_one_is_back(
    host: Sandbox, release: Artifact, lb_health: Samples, tmp_path: Path
) -> None:
    broken = build_variant(
        tmp_path,
        "l25-broken",
        patch_main=lambda text: text.replace(
            "from fastapi import FastAPI\n",
            "from fastapi import FastAPI\n\nraise SystemExit('broken release')\n",
            1,
        ),
    )
    out = assert_failed(run_deploy(host.inventory, broken.data))
    lb_health.stop.set()
    assert lb_health.changes() == [200, 503, 200], lb_health.runs()
    # Out of service the whole time it was drained: the flag, never the failing app's answer.
    out_of_service = {body for code, body in lb_health.seen if code == 503}
    assert out_of_service == {"drained"}, out_of_service
    _in_order(
        out,
        "drained from the load balancer; waiting",
        f"release {release.release_id} serves again",
        f"back in service after {WAIT_S} s",
    )
    assert serving_release(host.address) == release.release_id


def test_a_host_that_ends_unhealthy_stays_drained(host: Sandbox, lb_health: Samples) -> None:
    """A restart of a release that then fails (its .env breaks the model load) has nothing to
    switch back to: the host stays drained, 503 "drained", until a restart is healthy again."""
    env = "/app/ai-server/.env"
    host.sudo(f"cp -p {env} {env}.l25 && echo MODEL_LOAD_SECONDS=broken >> {env}")
    try:
        failed = cli(host.inventory, "restart", timeout=400)
        assert failed.returncode != 0, failed.stdout
        assert _lb_health(host) == (503, "drained")
        time.sleep(2)  # the load balancer keeps seeing it drained
        assert _lb_health(host) == (503, "drained")
        shown = cli(host.inventory, "status")
        assert "  lb:        drained (" in shown.stdout, shown.stdout
    finally:
        host.sudo(f"mv -f {env}.l25 {env}")
    out = cli_ok(cli(host.inventory, "restart", timeout=400))
    lb_health.stop.set()
    assert "it was not in service: /lb-health answered 503), no wait" in out, out
    assert f"back in service after {WAIT_S} s" in out
    assert lb_health.changes() == [200, 503, 200], lb_health.runs()
    assert _lb_health(host)[0] == 200


@pytest.mark.parametrize(
    ("strategy", "app_listens"),
    [
        ("socket", "127.0.0.1:18000"),
        ("bluegreen", "127.0.0.1:8001"),
        ("restart", "127.0.0.1:18000"),
    ],
)
def test_every_strategy_answers_lb_health_and_keeps_its_steady_state(
    host: Sandbox, release: Artifact, strategy: str, app_listens: str
) -> None:
    """The host moves restart -> socket -> blue/green -> restart with lb_drain on: each answers
    lb_health_path from nginx, the drain flag works on each, a second run changes nothing."""
    _deployed(host, release)
    data = (release.data, f"deploy_strategy={strategy}")
    assert_ok(run_deploy(host.inventory, *data))
    assert _lb_health(host)[0] == 200
    assert serving_release(host.address) == release.release_id
    listening = host.sudo("ss -Htlnp")
    assert app_listens in listening and "nginx" in listening.split("0.0.0.0:8000")[1][:200]
    host.sudo("touch /run/ai-server.lb-drained")
    try:
        assert _lb_health(host) == (503, "drained")
    finally:
        host.sudo("rm -f /run/ai-server.lb-drained")
    again = assert_ok(run_deploy(host.inventory, *data))
    assert grand_total(again).success == 0, again
    assert "drained from the load balancer" not in again


def test_lb_drain_off_gives_the_port_back_to_the_app_and_on_takes_it_again(
    host: Sandbox, release: Artifact
) -> None:
    _deployed(host, release)
    assert_ok(run_deploy(host.inventory, release.data, "lb_drain=false"))
    assert serving_release(host.address) == release.release_id
    listening = host.sudo("ss -Htlnp")
    assert "127.0.0.1:18000" not in listening and "nginx" not in listening
    assert host.ssh("systemctl is-active nginx", check=False).strip() != "active"
    assert host.sudo("ls /etc/nginx/sites-enabled").strip() == ""
    assert requests.get(f"http://{host.address}:8000/lb-health", timeout=5).status_code == 404
    again = assert_ok(run_deploy(host.inventory, release.data, "lb_drain=false"))
    assert grand_total(again).success == 0, again
    # And on again: the service lets go of the public port before nginx's front takes it.
    back = assert_ok(run_deploy(host.inventory, release.data))
    assert _lb_health(host)[0] == 200, back
    listening = host.sudo("ss -Htlnp")
    assert "127.0.0.1:18000" in listening and "nginx" in listening, listening
    assert serving_release(host.address) == release.release_id


def _deploy_in_background(
    host: Sandbox, artifact: Artifact, *data: str
) -> tuple[subprocess.Popen[str], list[str]]:
    """`ai-deploy deploy --no-gcp` of ARTIFACT in a session of its own, its lines as read."""
    env = {k: v for k, v in os.environ.items() if k not in ("GCP_ZONE", "GCP_INSTANCE")}
    argv = [str(PYTHON), "-m", "ai_deploy.cli", "deploy", "--no-gcp", "-i", str(host.inventory)]
    argv += ["--artifact", str(artifact.path), *(a for d in data for a in ("--data", d))]
    proc = subprocess.Popen(
        argv, cwd=REPO, env={**env, "NO_COLOR": "1", "TERM": "dumb"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1,
        start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True).start()
    return proc, lines


def _stopped_at(
    proc: subprocess.Popen[str], lines: list[str], needle: str, before: Callable[[], None]
) -> str:
    """SIGTERM once a line holds NEEDLE (after BEFORE); the whole output once it has exited."""
    deadline = time.monotonic() + 300
    while not any(needle in line for line in lines):
        assert proc.poll() is None, "".join(lines)
        assert time.monotonic() < deadline, "".join(lines)
        time.sleep(0.1)
    time.sleep(1)
    before()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    time.sleep(0.5)  # the reader's last lines
    out = "".join(lines)
    assert code == 143, out
    return out


@pytest.mark.parametrize("phase", ["drain", "start"])
def test_a_deploy_stopped_by_sigterm_does_not_leave_the_host_drained(
    host: Sandbox, release: Artifact, tmp_path: Path, phase: str
) -> None:
    """SIGTERM in the drain's wait: the old release still serves, and the host is put back at
    once. SIGTERM while the new release starts: the host comes back once that release answers
    its health, never before. Either way the rollout's drain flag is gone and nothing is
    locked."""
    _deployed(host, release)
    slow = build_variant(
        tmp_path,
        f"l25-stopped-{phase}",
        patch_main=lambda text: text.replace(
            "from fastapi import FastAPI\n",
            "from fastapi import FastAPI\nimport time\n\ntime.sleep(8)\n",
            1,
        ),
    )
    needle = {"drain": "drained from the load balancer; waiting 60 s"}.get(
        phase, "current -> releases/"
    )
    proc, lines = _deploy_in_background(
        host, slow, "lb_drain_wait_s=60" if phase == "drain" else "lb_drain_wait_s=3"
    )

    def drained_by_the_rollout() -> None:
        assert _lb_health(host) == (503, "drained")
        assert host.sudo(f"cat {FLAG}").strip().startswith("drained by rollout-")

    out = _stopped_at(proc, lines, needle, drained_by_the_rollout)
    assert "the stopped deploy had drained it from the load balancer: cleared" in out, out
    assert host.sudo(f"test -e {FLAG} && echo left || true").strip() == ""
    assert host.sudo("test -e /app/ai-server/.deploy.lock && echo held || true").strip() == ""
    if phase == "drain":
        assert _lb_health(host)[0] == 200  # the old release never stopped
        assert serving_release(host.address) == release.release_id
    else:
        seen: list[tuple[int, str]] = []
        deadline = time.monotonic() + 120
        while not seen or seen[-1][0] != 200:
            assert time.monotonic() < deadline, seen
            seen.append(_lb_health(host))
            time.sleep(0.2)
        # Back only once the new release answers: "not ready" before, never "drained".
        assert {body for code, body in seen if code != 200} <= {"not ready"}, seen
        assert serving_release(host.address) == slow.release_id


def test_the_health_check_on_a_port_of_its_own_answers_only_there(
    host: Sandbox, release: Artifact
) -> None:
    """lb_health_port=9000: nginx answers lb_health_path there (and nothing else there), the
    app keeps app_port, a second run changes nothing; back on app_port afterwards."""
    _deployed(host, release)
    try:
        assert_ok(run_deploy(host.inventory, release.data, "lb_health_port=9000"))
        at = f"http://{host.address}:9000"
        assert requests.get(f"{at}/lb-health", timeout=5).status_code == 200
        assert requests.get(f"{at}/health", timeout=5).status_code == 404
        assert serving_release(host.address) == release.release_id  # app_port unchanged
        host.sudo(f"touch {FLAG}")
        try:
            reply = requests.get(f"{at}/lb-health", timeout=5)
            assert (reply.status_code, reply.text.strip()) == (503, "drained")
        finally:
            host.sudo(f"rm -f {FLAG}")
        again = assert_ok(run_deploy(host.inventory, release.data, "lb_health_port=9000"))
        assert grand_total(again).success == 0, again
    finally:
        assert_ok(run_deploy(host.inventory, release.data))
    assert _lb_health(host)[0] == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{host.address}:9000/lb-health", timeout=5)
