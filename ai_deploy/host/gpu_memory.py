"""Whether a second copy of the app fits on the host's GPUs next to the running one, from what
`nvidia-smi` and systemd print (blue/green asks before it starts the idle colour).

The reading is one read-only shell script (`memory_script`): every GPU's memory, the compute
processes with the memory each holds on each GPU, and the pids of each unit (its MainPID and
everything in its cgroup, so a worker process of the app counts too). Parsing is pure and
tolerant: "[N/A]" or "[Not Supported]" is an unknown value, "143771 MiB" and "143771" are the
same number. A host without nvidia-smi, or where it fails, gives no verdict (`Fit.fits` None):
the caller goes on as if there were no GPU."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from ai_deploy.host.remote import Remote

# Field order is what the parsers below expect. gpu_uuid ties a process's memory to its GPU
# (a process on two GPUs is listed once per GPU); used_memory is documented as an alias of
# used_gpu_memory ("Amount memory used on the device by the context").
GPU_QUERY = "--query-gpu=index,uuid,memory.total,memory.used,memory.free"
APPS_QUERY = "--query-compute-apps=pid,gpu_uuid,used_memory"
CSV = "--format=csv,noheader,nounits"
CGROUP_ROOT = "/sys/fs/cgroup"

# nvidia-smi is looked up on PATH only (sudo's secure_path has /usr/bin, where the driver
# packages and Google's installer put it); a host where it is elsewhere is read as one
# without GPU information, which keeps blue/green as it was.
_SCRIPT = """
smi=$(command -v nvidia-smi 2>/dev/null) || smi=
if [ -z "$smi" ]; then echo "== no-smi"; exit 0; fi
echo "== gpus"; "$smi" {gpu_query} {csv} 2>&1; echo "== gpus-rc $?"
echo "== apps"; "$smi" {apps_query} {csv} 2>&1; echo "== apps-rc $?"
for entry in {units}; do
  name=${{entry%%=*}} unit=${{entry#*=}}
  echo "== unit $name"
  echo "$(systemctl show -p MainPID --value "$unit" 2>/dev/null)"
  cg=$(systemctl show -p ControlGroup --value "$unit" 2>/dev/null)
  [ -n "$cg" ] || cg=/system.slice/$unit
  cat {root}"$cg/cgroup.procs" 2>/dev/null || cat {root}/systemd"$cg/cgroup.procs" 2>/dev/null
done
true
"""


def memory_script(units: Mapping[str, str], cgroup_root: str = CGROUP_ROOT) -> str:
    """The read-only script that reads GPU memory and the pids of UNITS (name -> unit)."""
    entries = " ".join(shlex.quote(f"{name}={unit}") for name, unit in units.items())
    return _SCRIPT.format(
        gpu_query=GPU_QUERY, apps_query=APPS_QUERY, csv=CSV, units=entries,
        root=shlex.quote(cgroup_root),
    )  # fmt: skip


@dataclass(frozen=True)
class GpuMemory:
    index: int
    uuid: str
    total: int | None  # MiB; None when nvidia-smi does not know
    used: int | None
    free: int | None


@dataclass(frozen=True)
class ComputeApp:
    pid: int
    gpu_uuid: str
    used: int | None  # MiB on that GPU; None when "[N/A]"


@dataclass(frozen=True)
class Reading:
    """What the script found. `error` is set when nvidia-smi is there but did not answer."""

    has_smi: bool
    gpus: tuple[GpuMemory, ...] = ()
    apps: tuple[ComputeApp, ...] = ()
    pids: Mapping[str, frozenset[int]] | None = None
    error: str = ""

    def use(self, name: str, gpu: GpuMemory) -> tuple[int, bool]:
        """MiB that unit NAME's processes hold on GPU, and whether some of it is unknown."""
        pids = (self.pids or {}).get(name, frozenset())
        mine = [a for a in self.apps if a.pid in pids and a.gpu_uuid == gpu.uuid]
        return sum(a.used or 0 for a in mine), any(a.used is None for a in mine)


_NUMBER = re.compile(r"^(\d+)(?:\s*MiB)?$", re.IGNORECASE)
_RC = re.compile(r"^(gpus|apps)-rc (\d+)$")


def parse_mib(text: str) -> int | None:
    """MiB from "143771" or "143771 MiB"; None for "[N/A]", "[Not Supported]" or anything else."""
    m = _NUMBER.match(text.strip())
    return int(m.group(1)) if m else None


def _fields(line: str, count: int) -> list[str] | None:
    parts = [p.strip() for p in line.split(",")]
    return parts if len(parts) == count else None


def parse_gpus(lines: list[str]) -> list[GpuMemory]:
    """`nvidia-smi GPU_QUERY CSV` lines -> GPUs; lines of another shape are skipped."""
    gpus = []
    for line in lines:
        parts = _fields(line, 5)
        if parts and parts[0].isdigit():
            total, used, free = (parse_mib(p) for p in parts[2:])
            gpus.append(GpuMemory(int(parts[0]), parts[1], total, used, free))
    return gpus


def parse_apps(lines: list[str]) -> list[ComputeApp]:
    """`nvidia-smi APPS_QUERY CSV` lines -> processes (an empty list when none runs)."""
    apps = []
    for line in lines:
        parts = _fields(line, 3)
        if parts and parts[0].isdigit():
            apps.append(ComputeApp(int(parts[0]), parts[1], parse_mib(parts[2])))
    return apps


def parse_reading(lines: list[str]) -> Reading:
    """The whole output of `memory_script` -> a Reading."""
    sections: dict[str, list[str]] = {}
    rcs: dict[str, str] = {}
    current = ""
    for line in lines:
        if line.startswith("== "):
            head = line[3:].strip()
            rc = _RC.match(head)
            if rc:
                rcs[rc.group(1)] = rc.group(2)
                current = ""
                continue
            current = head
            sections.setdefault(current, [])
        elif current:
            sections[current].append(line)
    if "no-smi" in sections:
        return Reading(has_smi=False)
    pids = {
        head[len("unit ") :]: frozenset(int(x) for x in body if x.strip().isdigit() and int(x) > 0)
        for head, body in sections.items()
        if head.startswith("unit ")
    }
    gpus = tuple(parse_gpus(sections.get("gpus", [])))
    apps = tuple(parse_apps(sections.get("apps", [])))
    error = ""
    for part in ("gpus", "apps"):
        if rcs.get(part) != "0":
            said = " ".join(x.strip() for x in sections.get(part, []) if x.strip())[:200]
            error = f"nvidia-smi {part} query exited {rcs.get(part, '?')}: {said or 'no output'}"
            break
    if not error and not gpus:
        error = "nvidia-smi listed no GPU"
    return Reading(True, gpus, apps, pids, error)


@dataclass(frozen=True)
class Fit:
    """Whether STARTING fits beside RUNNING. `fits` is None when the GPUs could not be read
    (no verdict); `message` is the line for the host's output ("" when there is nothing to
    say: a host without nvidia-smi)."""

    fits: bool | None
    message: str


def fit(reading: Reading, running: str, starting: str, needed_mib: int | None) -> Fit:
    """Does a second copy fit? On each GPU the release needs NEEDED_MIB (None: what RUNNING's
    processes hold there now) and finds the GPU's free memory plus what STARTING's processes
    hold (STARTING is restarted, which frees it first). No margin is added: set
    gpu_memory_needed_mib above the measured use to keep one."""
    if not reading.has_smi:
        return Fit(None, "")
    if reading.error:
        return Fit(None, f"GPU memory not checked ({reading.error}); blue/green as usual")
    needs: dict[int, int] = {}
    for gpu in reading.gpus:
        held, unknown = reading.use(running, gpu)
        if needed_mib is None and unknown:
            return Fit(
                None,
                f"GPU memory not checked: nvidia-smi does not report what {running}'s processes "
                f"hold on GPU {gpu.index} ([N/A]); set gpu_memory_needed_mib; "
                "blue/green as usual",
            )
        if needed_mib is None and held:
            needs[gpu.index] = held
        elif needed_mib is not None and (held or unknown):
            needs[gpu.index] = needed_mib
    if needed_mib is not None and not needs:
        # Which GPUs the release uses is not known: it needs the amount on every one.
        needs = {gpu.index: needed_mib for gpu in reading.gpus}
    if not needs:
        return Fit(
            True,
            f"GPU memory: {running}'s processes hold none (nvidia-smi lists none of them); "
            "blue/green as usual",
        )
    source = "gpu_memory_needed_mib" if needed_mib is not None else f"what {running} holds now"
    parts, short = [], False
    for gpu in reading.gpus:
        if gpu.index not in needs:
            continue
        if gpu.free is None:
            return Fit(
                None,
                f"GPU memory not checked: nvidia-smi does not report GPU {gpu.index}'s free "
                "memory ([N/A]); blue/green as usual",
            )
        freed, _ = reading.use(starting, gpu)
        available = gpu.free + freed
        short = short or available < needs[gpu.index]
        also = f" + {freed} MiB {starting} holds" if freed else ""
        total = f" of {gpu.total} MiB" if gpu.total is not None else ""
        parts.append(
            f"GPU {gpu.index}: {gpu.free} MiB free{also}{total}, {starting} needs "
            f"{needs[gpu.index]} MiB ({source})"
        )
    verdict = "two copies do not fit" if short else "two copies fit"
    return Fit(not short, f"{'; '.join(parts)}: {verdict}")


def check(
    remote: Remote,
    units: Mapping[str, str],
    running: str,
    starting: str,
    needed_mib: int | None,
    cgroup_root: str = CGROUP_ROOT,
) -> Fit:
    """Read the host's GPUs and the pids of UNITS (name -> unit), and judge `fit`."""
    result = remote.run(memory_script(units, cgroup_root))
    return fit(parse_reading(result.stdout), running, starting, needed_mib)
