"""The plan's GPU line on one blue/green sandbox host, computed by the real code from real pids.

A container has no GPU, so a stand-in `nvidia-smi` on the host's PATH (where
ai_deploy.host.gpu_memory looks) answers the two queries the memory check makes: one GPU of
81559 MiB, and every running colour unit's MainPID (read from systemd on each call) holding the
MiB written in HELD_FILE. Which colour is live, which pids belong to it and whether a second copy
fits is all left to the code under test:

- live holds 70000 MiB: `deploy --plan` prints "two copies do not fit" and the one-copy restart
  with the expected outage, and changes nothing on the host;
- the deploy of that release goes live by the one-copy fallback and says so; the next plan's
  expected outage is the last start's (`last-start.json`), as a number; the same release again
  changes nothing and restarts nothing;
- live holds 1000 MiB: the plan says blue/green, with no GPU line."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import (
    APP_ROOT,
    REPO,
    Artifact,
    build_variant,
    cli_env,
    read_host,
    revisions,
    run_cli,
    sandbox_with,
    serving_release,
)

pytestmark = pytest.mark.e2e

AI_DEPLOY = REPO / ".venv" / "bin" / "ai-deploy"
TOTAL_MIB = 81559
HELD_FILE = "/etc/test-gpu-held-mib"
COLOURS = ("blue", "green")

# The apps query lists each running colour's MainPID: the verdict depends on the real code
# mapping those pids to the live colour's cgroup. Anything else it is asked fails loudly.
STANDIN = f"""#!/bin/sh
held=$(cat {HELD_FILE} 2>/dev/null || echo 0)
pids=
for c in {" ".join(COLOURS)}; do
  pid=$(systemctl show -p MainPID --value ai-server@$c.service 2>/dev/null)
  [ -n "$pid" ] && [ "$pid" != 0 ] && pids="$pids $pid"
done
case "$*" in
  *--query-gpu=index,uuid,memory.total,memory.used,memory.free*)
    used=0
    for p in $pids; do used=$((used + held)); done
    echo "0, GPU-00000000-test-0000-0000-000000000000, {TOTAL_MIB}, $used, $(({TOTAL_MIB} - used))"
    ;;
  *--query-compute-apps=pid,gpu_uuid,used_memory*)
    for p in $pids; do echo "$p, GPU-00000000-test-0000-0000-000000000000, $held"; done
    ;;
  *) echo "stand-in nvidia-smi: not answered: $*" >&2; exit 2 ;;
esac
"""


@dataclass
class Host:
    sandbox: Sandbox
    base: Artifact
    new: Artifact
    next: Artifact


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    work = tmp_path_factory.mktemp("g28-gpu-plan")
    base, new, nxt = (build_variant(work, f"g28-{label}") for label in ("base", "new", "next"))
    with sandbox_with("g28-gpu", {"deploy_strategy": "bluegreen"}, work) as sandbox:
        sandbox.sudo(
            f"cat > /usr/local/bin/nvidia-smi <<'STANDIN'\n{STANDIN}STANDIN\n"
            f"chmod 755 /usr/local/bin/nvidia-smi && echo 70000 > {HELD_FILE}"
        )
        code, out = deploy(sandbox, base)
        assert code == 0, out
        yield Host(sandbox, base, new, nxt)


def deploy(sandbox: Sandbox, artifact: Artifact, *args: str) -> tuple[int, str]:
    return run_cli(AI_DEPLOY, REPO, *deploy_args(sandbox, artifact, *args))


def deploy_args(sandbox: Sandbox, artifact: Artifact, *args: str) -> list[str]:
    return [
        "deploy", "--artifact", str(artifact.path), "-i", str(sandbox.inventory), "--no-gcp",
        "--health-interval", "1", "--health-attempts", "60", *args,
    ]  # fmt: skip


def hold(sandbox: Sandbox, mib: int) -> None:
    sandbox.sudo(f"echo {mib} > {HELD_FILE}")


def live_colour(sandbox: Sandbox) -> str:
    return read_host(sandbox, f"cat {APP_ROOT}/colors/LIVE", "the live colour").strip()


def state(sandbox: Sandbox) -> dict[str, object]:
    """What a plan must leave alone: the release served, each colour's unit (state and main
    process), the live colour, revisions.log and the last start."""
    # A stopped colour's unit may be unloaded by systemd, which zeroes its timestamps: only a
    # running colour's main process and start time say whether it was restarted.
    units = read_host(
        sandbox,
        "for c in blue green; do u=ai-server@$c.service\n"
        "  s=$(systemctl show -p ActiveState --value $u)\n"
        '  if [ "$s" = active ]; then echo "$c active $(systemctl show -p MainPID '
        "-p ActiveEnterTimestampMonotonic --value $u | tr '\\n' ' ')\"\n"
        '  else echo "$c $s"; fi\ndone',
        "the colours' units",
    )
    last = read_host(sandbox, f"cat {APP_ROOT}/last-start.json", "last-start.json")
    return {
        "serving": serving_release(sandbox.address),
        "units": units,
        "live": live_colour(sandbox),
        "revisions": revisions(sandbox),
        "last_start": last,
    }


def plan_line(out: str, name: str) -> str:
    steps = [
        line
        for line in out.splitlines()
        if line.startswith(("  canary", "  batch")) and name in line
    ]
    assert len(steps) == 1, out
    return steps[0]


def last_start(sandbox: Sandbox) -> dict[str, object]:
    doc = json.loads(read_host(sandbox, f"cat {APP_ROOT}/last-start.json", "last-start.json"))
    assert isinstance(doc, dict), doc
    return doc


def test_the_plan_says_two_copies_do_not_fit_and_changes_nothing(host: Host) -> None:
    sandbox = host.sandbox
    hold(sandbox, 70000)
    new = host.new
    before = state(sandbox)
    code, out = deploy(sandbox, new, "--plan")
    assert code == 0, out
    assert f"GPU: live holds 70000 of {TOTAL_MIB} MiB; two copies do not fit: one-copy " in out
    assert "one-copy restart, expected outage ~" in out, out
    assert "; one-copy restart, out of service ~" in plan_line(out, sandbox.name), out
    assert state(sandbox) == before
    assert new.release_id not in read_host(sandbox, f"ls {APP_ROOT}/releases", "the releases"), (
        "the plan unpacked the new release"
    )


def test_the_deploy_falls_back_to_one_copy_and_the_next_plan_shows_the_outage(
    host: Host,
) -> None:
    sandbox = host.sandbox
    hold(sandbox, 70000)
    new = host.new
    live = live_colour(sandbox)
    idle = next(c for c in COLOURS if c != live)
    code, out = deploy(sandbox, new)
    assert code == 0, out
    assert "two copies do not fit" in out, out
    assert f"{live} stops before {idle} starts (gpu_memory_when_short='restart'" in out, out
    assert f"{live} stopped first: GPU memory" in out, out
    assert serving_release(sandbox.address) == new.release_id
    assert live_colour(sandbox) == idle
    assert "gpu-memory-short=stopped-first" in revisions(sandbox)[-1]
    last = last_start(sandbox)
    assert last["release"] == new.release_id
    assert isinstance(last["outage_s"], (int, float)), last  # the fallback was out of service

    # The same release again: nothing changes, nothing restarts.
    before = state(sandbox)
    code, again = deploy(sandbox, new)
    assert code == 0, again
    assert state(sandbox) == before

    # The next release's plan: the expected outage is the last start's, as a number.
    expected = (
        last["start_s"] if isinstance(last.get("start_s"), (int, float)) else last["outage_s"]
    )
    assert isinstance(expected, (int, float))
    nxt = host.next
    code, out = deploy(sandbox, nxt, "--plan")
    assert code == 0, out
    assert f"two copies do not fit: one-copy restart, expected outage ~{expected:.0f} s" in out
    assert plan_line(out, sandbox.name).endswith(
        f"; one-copy restart, out of service ~{expected:.0f} s"
    ), out
    done = subprocess.run(
        [str(AI_DEPLOY), *deploy_args(sandbox, nxt, "--plan", "--json")],
        cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (planned,) = json.loads(done.stdout)["plan"]
    assert planned["method"] == "one-copy restart"
    assert planned["expected_outage_s"] == expected
    assert "two copies do not fit" in planned["gpu"]


def test_when_the_live_colour_holds_little_the_plan_says_bluegreen(host: Host) -> None:
    sandbox = host.sandbox
    hold(sandbox, 1000)
    try:
        before = state(sandbox)
        code, out = deploy(sandbox, host.next, "--plan")
        assert code == 0, out
        assert plan_line(out, sandbox.name).endswith("; blue/green, out of service 0 s"), out
        assert "GPU: live holds" not in out and "two copies do not fit" not in out, out
        assert state(sandbox) == before
    finally:
        hold(sandbox, 70000)
