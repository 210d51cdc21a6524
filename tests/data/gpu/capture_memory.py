"""Captures, on a real GPU machine, what blue/green's GPU memory check reads, in four states,
and runs the check itself (ai_deploy.host.gpu_memory: the shell script, the parsers, the
verdict) against the real nvidia-smi in each.

    python3 tests/data/gpu/capture_memory.py OUTDIR

Memory is held by plain CUDA allocations (torch.empty on the GPU) in child processes of this
script: "small" holds 40 GiB, "vllm" holds what vLLM holds at its default
gpu_memory_utilization of 0.9 (90% of the GPU's total, less what its own context takes), and
"engine-child" is the same amount held by a child process while the parent (the unit's MainPID)
only has a context, as vLLM's engine core does. Machines without systemd get a stand-in cgroup
tree (cgroup.procs files) so the script finds the holders' pids the way it does on a host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from ai_deploy.host import gpu_memory

HOLD = r"""
import sys, time, torch, subprocess
mib = int(sys.argv[1])
child = len(sys.argv) > 2 and sys.argv[2] == "child"
torch.cuda.init()
torch.empty(1, device="cuda")
if child:
    p = subprocess.Popen([sys.executable, "-c", sys.argv[3], str(mib)], stdout=subprocess.PIPE,
                         text=True)
    line = p.stdout.readline()
    print(f"ready {p.pid}", flush=True)
else:
    free, total = torch.cuda.mem_get_info()
    if mib < 0:
        mib = int(total * 0.9 / 2**20) - int((total - free) / 2**20)
    blocks = [torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda") for _ in range(mib // 256)]
    print("ready", flush=True)
sys.stdin.read()
"""

SMI = "nvidia-smi"


def smi(*args: str) -> str:
    done = subprocess.run([SMI, *args], capture_output=True, text=True)
    return done.stdout + done.stderr + f"rc {done.returncode}\n"


def capture(out: Path, state: str) -> None:
    for units in ("nounits", "units"):
        fmt = "csv,noheader,nounits" if units == "nounits" else "csv,noheader"
        (out / f"query-gpu-{state}-{units}.txt").write_text(
            smi(gpu_memory.GPU_QUERY, f"--format={fmt}")
        )
        (out / f"compute-apps-{state}-{units}.txt").write_text(
            smi(gpu_memory.APPS_QUERY, f"--format={fmt}")
        )


def judge(out: Path, state: str, blue_pids: list[int], needed: int | None) -> dict[str, object]:
    root = out / f"cgroup-{state}"
    for name, pids in (("blue", blue_pids), ("green", [])):
        unit = root / "system.slice" / f"ai-server-{name}.service"
        unit.mkdir(parents=True, exist_ok=True)
        (unit / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
    units = {"blue": "ai-server-blue.service", "green": "ai-server-green.service"}
    script = gpu_memory.memory_script(units, str(root))
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    (out / f"memory-script-{state}.txt").write_text(done.stdout + done.stderr)
    reading = gpu_memory.parse_reading(done.stdout.splitlines())
    verdict = gpu_memory.fit(reading, "blue", "green", needed)
    return {"state": state, "needed_mib": needed, "fits": verdict.fits, "message": verdict.message}


def hold(mib: int, child: bool = False) -> tuple[subprocess.Popen[str], list[int]]:
    args = [sys.executable, "-c", HOLD, str(mib)]
    if child:
        args += ["child", HOLD]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    pids = [proc.pid] + [int(x) for x in line[1:]]
    return proc, pids


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=120)


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    results = []
    capture(out, "idle")
    (out / "memory-reserved.txt").write_text(smi("--query-gpu=memory.reserved", "--format=csv"))
    results.append(judge(out, "idle", [], None))
    for state, mib, child in (("small", 40 * 1024, False), ("vllm", -1, False),
                              ("engine-child", -1, True)):  # fmt: skip
        proc, pids = hold(mib, child)
        capture(out, state)
        results.append({"pids": pids, **judge(out, state, pids, None)})
        results.append(judge(out, state + "-needed-20000", pids, 20000))
        release(proc)
    (out / "verdicts.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    print("uid", os.getuid())


if __name__ == "__main__":
    main()
