"""NVIDIA GPU detection and driver verification, from what a host prints.

Detection needs no driver: PCI vendor 0x10de with a display-controller class, read from sysfs
(or `lspci -nn`). Verification is `nvidia-smi -L` listing a GPU UUID. The shell that collects
it all (`PROBE_SCRIPT`) is read-only and runs on any Linux host; the parsing here is pure, so it
is tested with outputs captured on a real GPU machine (tests/data/gpu/).

`python3 -m ai_deploy.host.gpu` runs the probe on this machine and prints the report as JSON
(standard library only, so it runs where nothing else is installed).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, field

NVIDIA_VENDOR = "0x10de"
# PCI class 0x03xxxx: display controllers (0x0300 VGA, 0x0302 3D controller: datacenter GPUs).
DISPLAY_CLASS_PREFIX = "0x03"
SMI_CANDIDATES = ("/usr/bin/nvidia-smi", "/usr/local/nvidia/bin/nvidia-smi", "/bin/nvidia-smi")

SYSFS_PCI = "/sys/bus/pci/devices"

PROBE_SCRIPT = r"""
echo "== pci"
for d in SYSFS_PCI/*; do
  [ -r "$d/vendor" ] && echo "${d##*/} $(cat "$d/vendor") $(cat "$d/device") $(cat "$d/class")"
done
echo "== lspci"
command -v lspci >/dev/null 2>&1 && lspci -nn 2>/dev/null | grep -i '\[10de:' || true
echo "== smi"
smi=$(command -v nvidia-smi 2>/dev/null)
for c in SMI_CANDIDATES; do [ -z "$smi" ] && [ -x "$c" ] && smi=$c; done
if [ -n "$smi" ]; then
  echo "path $smi"
  echo "-- list"
  "$smi" -L 2>&1; echo "rc $?"
  echo "-- query"
  "$smi" --query-gpu=index,name,uuid,driver_version,memory.total --format=csv,noheader 2>&1
fi
echo "== module"
cat /proc/driver/nvidia/version 2>/dev/null | head -1 || true
echo "== secureboot"
if command -v mokutil >/dev/null 2>&1; then mokutil --sb-state 2>&1 | head -1; fi
echo "== kernel"
echo "release $(uname -r)"
[ -d "/lib/modules/$(uname -r)/build" ] && echo "headers present" || echo "headers missing"
""".replace("SMI_CANDIDATES", " ".join(SMI_CANDIDATES))


def probe_script(sysfs_pci: str = SYSFS_PCI) -> str:
    """The read-only probe, reading PCI devices from SYSFS_PCI (the real sysfs by default)."""
    return PROBE_SCRIPT.replace("SYSFS_PCI", shlex.quote(sysfs_pci))


@dataclass
class PciGpu:
    slot: str
    vendor: str
    device: str
    pci_class: str


@dataclass
class Gpu:
    index: int
    name: str
    uuid: str
    driver_version: str = ""
    memory_total: str = ""


@dataclass
class GpuReport:
    """What the probe found on one host."""

    pci: list[PciGpu] = field(default_factory=list)
    smi_path: str | None = None
    smi_rc: int | None = None
    smi_error: str = ""
    gpus: list[Gpu] = field(default_factory=list)
    module_version: str = ""
    secure_boot: bool | None = None  # None: could not tell
    kernel: str = ""
    headers_present: bool | None = None

    @property
    def has_gpu(self) -> bool:
        return bool(self.pci)

    @property
    def driver_ok(self) -> bool:
        """True when nvidia-smi listed at least one GPU with a UUID."""
        return self.smi_rc == 0 and any(g.uuid.startswith("GPU-") for g in self.gpus)

    @property
    def driver_version(self) -> str:
        return next((g.driver_version for g in self.gpus if g.driver_version), "")

    def summary(self) -> str:
        if not self.has_gpu:
            return "no NVIDIA GPU"
        if not self.driver_ok:
            why = self.smi_error or (
                "nvidia-smi not found" if not self.smi_path else "no GPU listed"
            )
            return f"{len(self.pci)} NVIDIA GPU(s) on PCI, driver not working: {why}"
        gpus = "; ".join(f"{g.name} ({g.memory_total})" for g in self.gpus)
        return f"{gpus}; driver {self.driver_version}"


_SMI_LINE = re.compile(r"^GPU (\d+): (.+?) \(UUID: (GPU-[0-9a-fA-F-]+)\)")
_LSPCI_LINE = re.compile(r"^(\S+) .*\[(03[0-9a-f]{2})\]: .*\[10de:([0-9a-f]{4})\]", re.I)


def parse_pci(lines: list[str]) -> list[PciGpu]:
    """sysfs lines `SLOT VENDOR DEVICE CLASS` -> the NVIDIA display controllers among them."""
    found = []
    for line in lines:
        parts = line.split()
        if len(parts) != 4:
            continue
        slot, vendor, device, pci_class = parts
        if vendor.lower() == NVIDIA_VENDOR and pci_class.lower().startswith(DISPLAY_CLASS_PREFIX):
            found.append(PciGpu(slot, vendor.lower(), device.lower(), pci_class.lower()))
    return found


def parse_lspci(lines: list[str]) -> list[PciGpu]:
    """`lspci -nn` lines -> NVIDIA display controllers (for hosts without a readable sysfs)."""
    found = []
    for line in lines:
        m = _LSPCI_LINE.match(line.strip())
        if m:
            slot, cls, device = m.groups()
            found.append(PciGpu(slot, NVIDIA_VENDOR, f"0x{device.lower()}", f"0x{cls.lower()}00"))
    return found


def parse_smi_list(lines: list[str]) -> list[Gpu]:
    """`nvidia-smi -L` -> GPUs with index, name and UUID."""
    gpus = []
    for line in lines:
        m = _SMI_LINE.match(line.strip())
        if m:
            gpus.append(Gpu(int(m.group(1)), m.group(2), m.group(3)))
    return gpus


def merge_query(gpus: list[Gpu], lines: list[str]) -> None:
    """Add driver version and memory from the `--query-gpu=...` CSV (see PROBE_SCRIPT)."""
    by_uuid = {g.uuid: g for g in gpus}
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 5 and parts[2] in by_uuid:
            by_uuid[parts[2]].driver_version = parts[3]
            by_uuid[parts[2]].memory_total = parts[4]


def _sections(lines: list[str]) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = ""
    for raw in lines:
        line = raw.rstrip("\n")
        if line.startswith("== "):
            current = line[3:].strip()
            sections.setdefault(current, [])
        elif current:
            sections[current].append(line)
    return sections


def parse_probe(lines: list[str]) -> GpuReport:
    """The probe's whole output -> a GpuReport."""
    s = _sections(lines)
    report = GpuReport()
    report.pci = parse_pci(s.get("pci", [])) or parse_lspci(s.get("lspci", []))
    smi = s.get("smi", [])
    listing: list[str] = []
    query: list[str] = []
    part = ""
    for line in smi:
        if line.startswith("path "):
            report.smi_path = line[5:].strip()
        elif line in ("-- list", "-- query"):
            part = line[3:]
        elif part == "list" and line.startswith("rc "):
            report.smi_rc = int(line.split()[1])
        elif part == "list":
            listing.append(line)
        elif part == "query":
            query.append(line)
    report.gpus = parse_smi_list(listing)
    merge_query(report.gpus, query)
    if report.smi_path and not report.gpus:
        report.smi_error = " ".join(x.strip() for x in listing if x.strip())[:300]
    module = [x for x in s.get("module", []) if x.strip()]
    report.module_version = module[0].strip() if module else ""
    sb = " ".join(s.get("secureboot", [])).lower()
    if "enabled" in sb:
        report.secure_boot = True
    elif "disabled" in sb or "not supported" in sb:
        report.secure_boot = False
    for line in s.get("kernel", []):
        if line.startswith("release "):
            report.kernel = line[8:].strip()
        elif line.startswith("headers "):
            report.headers_present = line.endswith("present")
    return report


def probe_local() -> GpuReport:
    """Run the probe on this machine."""
    out = subprocess.run(["sh", "-c", probe_script()], capture_output=True, text=True, check=False)
    return parse_probe(out.stdout.splitlines())


def main() -> int:
    report = probe_local()
    data = asdict(report)
    data.update(
        has_gpu=report.has_gpu,
        driver_ok=report.driver_ok,
        driver_version=report.driver_version,
        summary=report.summary(),
    )
    json.dump(data, sys.stdout, indent=2)
    print()
    return 0 if (not report.has_gpu or report.driver_ok) else 1


if __name__ == "__main__":
    sys.exit(main())
