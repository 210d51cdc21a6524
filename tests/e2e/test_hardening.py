"""End-to-end: the hardened units of every strategy on real sandbox hosts.

For each strategy the example app, with a /probe endpoint added, is deployed to a fresh host;
then `systemd-analyze security` scores each of the strategy's units at 3.5 or lower, the app
still answers /health, and the probe, run inside the service itself, finds that it cannot
become root or write its code, its venv, the units or /etc, that it can write its data dir
and its cache (HOME), and that it opens the GPU stand-in but no other device.

The GPU stand-in (the sandbox has no NVIDIA driver): /dev/nvidia0 is a node with the numbers
of /dev/net/tun (10:200), a device the container may open and that DevicePolicy=closed does
not allow by itself; it is allowed by path (`unit_gpu_devices` plus "/dev/nvidia0"), since the
default "char-nvidia*" matches the driver's name in /proc/devices, which only a host with the
driver has. /dev/nvidia1 has a real NVIDIA number (195:1) and is in no allow list.
Where systemd enforces device policies, the service opens the stand-in and is refused
/dev/nvidia1 (EPERM). In the nspawn guests here it does not (no device programs can be
attached: a transient unit with DevicePolicy=closed opens any node), so the test then checks
what is real: the units' policy as systemd loaded it, and that no other directive (no
PrivateDevices=, ProtectSystem=, the syscall filter, no capabilities) keeps the service from
opening a GPU node; /dev/nvidia1 then reaches the kernel (ENXIO: no driver).
"""

from __future__ import annotations

import json
import re

import pytest

from tests.e2e.conftest import Sandbox
from tests.e2e.deploykit import (
    Artifact,
    assert_ok,
    build_variant,
    grand_total,
    health,
    read_host,
    run_deploy,
)

pytestmark = pytest.mark.e2e

MAX_EXPOSURE = 3.5
# The units each strategy runs; the socket strategy's ai-server.socket starts no process (it
# only holds the port) and systemd-analyze scores services only: its service is scored.
UNITS = {
    "restart": ["ai-server.service"],
    "socket": ["ai-server.service"],
    "bluegreen": ["ai-server@blue.service", "ai-server@green.service", "nginx.service"],
}
# The stand-in GPU node and a node with a real NVIDIA number that no unit allows.
STAND_IN = "/dev/nvidia0"
NOT_ALLOWED = "/dev/nvidia1"
GPU_DEVICES = f'["char-nvidia*","{STAND_IN}"]'

PROBE = '''

import errno as _errno  # noqa: E402
import subprocess as _subprocess  # noqa: E402
import sys as _sys  # noqa: E402


def _attempt(action) -> dict[str, object]:
    try:
        action()
    except OSError as exc:
        return {"ok": False, "error": _errno.errorcode.get(exc.errno or 0, str(exc))}
    return {"ok": True, "error": ""}


def _write(path: Path) -> dict[str, object]:
    def write() -> None:
        with open(path, "x") as f:
            f.write("probe")
        path.unlink()

    return _attempt(write)


def _open_device(path: str) -> dict[str, object]:
    return _attempt(lambda: os.close(os.open(path, os.O_RDWR)))


@app.get("/probe")
def probe() -> dict[str, object]:
    """What this process may do, tried from inside the running service."""
    status = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
    )
    sudo = _subprocess.run(["sudo", "-n", "true"], capture_output=True, text=True)
    here = Path(__file__).resolve().parent
    targets = {
        "release": here / "probe-file",
        "venv": Path(_sys.prefix).resolve() / "probe-file",
        "units": Path("/etc/systemd/system/probe-file"),
        "etc": Path("/etc/probe-file"),
        "data": here.parent.parent / "chroma_db" / "probe-file",
        "tmp": Path("/tmp/probe-file"),
        "cache": Path.home() / "probe-file",
    }
    return {
        "uid": os.getuid(),
        "home": str(Path.home()),
        "release_dir": str(here),
        "venv": str(Path(_sys.prefix).resolve()),
        "no_new_privs": status["NoNewPrivs"].strip(),
        "cap_eff": status["CapEff"].strip(),
        "cap_bnd": status["CapBnd"].strip(),
        "sudo": {"rc": sudo.returncode, "stderr": sudo.stderr.strip()[-300:]},
        "write": {name: _write(path) for name, path in targets.items()},
        "devices": {p: _open_device(p) for p in ("/dev/nvidia0", "/dev/nvidia1")},
    }
'''

_EXPOSURE = re.compile(r"Overall exposure level for (\S+): ([0-9.]+)")


def add_probe(text: str) -> str:
    return text + PROBE


@pytest.fixture(scope="module")
def probe_artifact(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    return build_variant(tmp_path_factory.mktemp("hardening"), "probe", patch_main=add_probe)


def exposure(sandbox: Sandbox, unit: str) -> float:
    """The "Overall exposure level" systemd-analyze gives UNIT on the host."""
    out = read_host(
        sandbox, f"systemd-analyze security --no-pager {unit} 2>&1", f"the exposure of {unit}"
    )
    match = _EXPOSURE.search(out)
    assert match and match.group(1) == unit, f"no exposure line for {unit}:\n{out}"
    return float(match.group(2))


def make_gpu_nodes(sandbox: Sandbox) -> None:
    read_host(
        sandbox,
        f"rm -f {STAND_IN} {NOT_ALLOWED}\n"
        f"mknod -m 666 {STAND_IN} c 10 200\n"
        f"mknod -m 666 {NOT_ALLOWED} c 195 1",
        "the GPU stand-in nodes",
    )
    # Outside the units the container reaches both: the stand-in opens, the real number finds
    # no driver. So an EPERM inside the service comes from the service's own device policy.
    errors = read_host(
        sandbox,
        f"head -c0 {STAND_IN} && echo stand-in-opens\nhead -c0 {NOT_ALLOWED} 2>&1 || true",
        "opening the stand-in nodes as root",
    )
    assert "stand-in-opens" in errors, errors
    assert "No such device or address" in errors, errors


def enforces_device_policy(sandbox: Sandbox) -> bool:
    """Whether systemd on the host enforces DevicePolicy=: a transient unit with the closed
    policy opens the node nobody allowed (ENXIO) or is refused (EPERM)."""
    out = read_host(
        sandbox,
        f"systemd-run --quiet --wait --pipe -p DevicePolicy=closed head -c0 {NOT_ALLOWED} "
        "2>&1 || true",
        "whether the device policy is enforced",
    )
    assert "Operation not permitted" in out or "No such device or address" in out, out
    return "Operation not permitted" in out


def device_policy(sandbox: Sandbox, unit: str) -> tuple[str, list[str]]:
    """DevicePolicy= and DeviceAllow= as systemd loaded them for UNIT."""
    out = read_host(
        sandbox,
        f"systemctl show -p DevicePolicy --value {unit}\n"
        f"systemctl show -p DeviceAllow --value {unit}",
        f"the device policy of {unit}",
    )
    policy, _, allow = out.partition("\n")
    return policy, [" ".join(e.split()) for e in allow.strip().split("\n") if e]


def get_probe(sandbox: Sandbox) -> dict[str, object]:
    import requests

    reply = requests.get(f"http://{sandbox.address}:8000/probe", timeout=30)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def main_pids(sandbox: Sandbox, units: list[str]) -> dict[str, str]:
    script = "".join(f"systemctl show -p MainPID --value {u}\n" for u in units)
    return dict(zip(units, read_host(sandbox, script, "MainPIDs").split(), strict=True))


@pytest.mark.parametrize("strategy", sorted(UNITS))
def test_hardened_units_score_low_and_the_app_cannot_escape(
    fresh_sandbox: Sandbox, probe_artifact: Artifact, strategy: str
) -> None:
    """Acceptance: each unit of the strategy at 3.5 or lower; /health answers; from inside the
    running app `sudo -n true` fails, the release, venv, units and /etc are read-only, the data
    dir and the cache (its HOME) are writable and the GPU stand-in opens while a device nobody
    allowed does not."""
    sandbox = fresh_sandbox
    make_gpu_nodes(sandbox)
    data = (
        probe_artifact.data,
        f"deploy_strategy={strategy}",
        f"unit_gpu_devices={GPU_DEVICES}",
        'app_data_dirs=["chroma_db"]',  # none by default: this one is the probe's data dir
    )
    assert_ok(run_deploy(sandbox.inventory, *data))

    scores = {unit: exposure(sandbox, unit) for unit in UNITS[strategy]}
    print(f"{strategy}: systemd-analyze security exposure {json.dumps(scores)}")
    assert all(score <= MAX_EXPOSURE for score in scores.values()), scores

    reply = health(sandbox.address)
    assert reply.status_code == 200, reply.text
    assert reply.json()["release"] == probe_artifact.release_id

    if strategy == "bluegreen":
        # The hardened nginx still writes its logs into the app's log dir.
        log = "/var/log/ai-server/ai-server-nginx-access.log"
        assert "GET /health" in read_host(sandbox, f"cat {log}", "nginx's access log")

    seen = get_probe(sandbox)
    print(f"{strategy}: probe {json.dumps(seen)}")
    assert seen["uid"] != 0
    assert seen["no_new_privs"] == "1"
    assert int(str(seen["cap_eff"]), 16) == 0 and int(str(seen["cap_bnd"]), 16) == 0
    sudo = seen["sudo"]
    assert isinstance(sudo, dict) and sudo["rc"] != 0, sudo
    write = seen["write"]
    assert isinstance(write, dict)
    for target in ("release", "venv", "units", "etc"):
        assert write[target] == {"ok": False, "error": "EROFS"}, (target, write)
    assert write["data"] == {"ok": True, "error": ""}, write
    assert write["tmp"] == {"ok": True, "error": ""}, write
    # HOME is the persistent cache directory, writable in every unit.
    assert seen["home"] == "/app/ai-server/cache", seen
    assert write["cache"] == {"ok": True, "error": ""}, write
    devices = seen["devices"]
    assert isinstance(devices, dict)
    assert devices[STAND_IN] == {"ok": True, "error": ""}, devices
    for unit in UNITS[strategy]:
        if unit.startswith("ai-server"):
            # Explicit, though the syscall filter implies it: the unit says so as loaded.
            no_new = read_host(sandbox, f"systemctl show -p NoNewPrivileges --value {unit}", unit)
            assert no_new.strip() == "yes", unit
            # ProtectClock= adds the read-only rtc itself.
            policy, allowed = device_policy(sandbox, unit)
            assert policy == "closed", unit
            assert set(allowed) == {"char-rtc r", "char-nvidia* rw", f"{STAND_IN} rw"}, unit
    if enforces_device_policy(sandbox):
        assert devices[NOT_ALLOWED] == {"ok": False, "error": "EPERM"}, devices
    else:
        # The host's systemd cannot attach device programs (an nspawn guest): what is real
        # here is that the policy is loaded as written and nothing else hides the GPU.
        assert devices[NOT_ALLOWED] == {"ok": False, "error": "ENXIO"}, devices

    # A second run changes nothing and restarts nothing (nginx's drop-in included).
    units = [u for u in UNITS[strategy] if u != "ai-server@green.service"]
    before = main_pids(sandbox, units)
    again = run_deploy(sandbox.inventory, *data)
    assert_ok(again)
    assert grand_total(again.stdout).success == 0, again.stdout
    assert main_pids(sandbox, units) == before
