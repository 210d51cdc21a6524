"""The release's model files read into the host's page cache while the old release still
serves, so the new process loads them from memory, not from disk (page_cache_warm).

It runs after the model files are verified and linked and before any strategy stops or switches
the serving process. The host-side tool (page_cache_tool.py, sent to the host's python3) counts
what is resident already with mincore(2), so a file in memory costs no read, and reads the rest
only when it fits in the kernel's MemAvailable less MARGIN_BYTES; otherwise nothing is read and
the deploy says so. The figures (files, bytes, already resident, MB/s) are said in the run's
output. Nothing here fails a deploy: a host that cannot tell is warned about, and the release
loads from disk as it would have."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

from ai_deploy.host.remote import Remote, tail
from ai_deploy.host.settings import Spec

MARGIN_BYTES = 1024**3  # of MemAvailable left over: the new process allocates memory too
READ_MAX_S = 1200  # a read stops after this long (a slow disk): the rest loads from disk
_TOOL = Path(__file__).resolve().with_name("page_cache_tool.py")
MB = 1_000_000


@dataclass(frozen=True)
class Warmed:
    """What page_cache_tool.py reported (bytes): the files, what was resident before, and what
    was read (None: skipped, SKIPPED bytes did not fit in AVAILABLE less the margin)."""

    files: int
    total: int
    resident: int
    available: int = 0
    skipped: int | None = None
    read_files: int = 0
    read: int = 0
    seconds: float = 0.0
    stopped: bool = False
    resident_after: int | None = None

    def message(self, release: str) -> str:
        what = f"release {release}'s model files ({self.files} files, {self.total / MB:.1f} MB)"
        if self.skipped is not None:
            return (
                f"page cache: skipped: {what} need {self.skipped / MB:.1f} MB read, more than "
                f"the {self.available / MB:.1f} MB available less a {MARGIN_BYTES / MB:.0f} MB "
                "margin; the new process reads them from disk"
            )
        if not self.read_files:
            return f"page cache: {what} are all resident already: nothing read"
        rate = self.read / MB / self.seconds if self.seconds > 0 else 0.0
        stopped = f" (stopped at {READ_MAX_S} s: the rest loads from disk)" * self.stopped
        after = self.resident_after
        now = "" if after is None else f"; {after / MB:.1f} MB resident now"
        return (
            f"page cache: read {self.read / MB:.1f} MB of {what}, {self.resident / MB:.1f} MB "
            f"already resident, in {self.seconds:.1f} s ({rate:.0f} MB/s){stopped}{now}"
        )


def parse_tool(lines: list[str]) -> Warmed | None:
    """page_cache_tool.py's output as a Warmed; None when it is not the tool's."""
    try:
        return _parse(lines)
    except (ValueError, IndexError):
        return None


def _parse(lines: list[str]) -> Warmed | None:
    values: dict[str, list[str]] = {}
    for line in lines:
        word, _, rest = line.partition(" ")
        values[word] = rest.split()
    if len(values.get("FILES", [])) != 3:
        return None
    files, total, resident = (int(x) for x in values["FILES"])
    warmed = Warmed(files, total, resident, int((values.get("AVAILABLE") or ["0"])[0]))
    if "SKIP" in values:
        return replace(warmed, skipped=int(values["SKIP"][0]))
    if len(values.get("READ", [])) == 4:
        count, read, seconds, stopped = values["READ"]
        after = values.get("RESIDENT")
        return replace(
            warmed,
            read_files=int(count),
            read=int(read),
            seconds=float(seconds),
            stopped=stopped == "1",
            resident_after=int(after[0]) if after else None,
        )
    return warmed


def tool_script(root: str, mode: str) -> str:
    """Shell running page_cache_tool.py on the host over the files under ROOT (quoted); no
    output when ROOT is not a directory."""
    args = json.dumps({"mode": mode, "margin": MARGIN_BYTES, "max_s": READ_MAX_S})
    return (
        f"[ -d {root} ] || exit 0\n"
        f"python3 - {shlex.quote(args)} {root} <<'EOF'\n{_TOOL.read_text()}\nEOF\n"
    )


def warm_model_files(remote: Remote, spec: Spec) -> Warmed | None:
    """SPEC's release's model files read into the page cache when page_cache_warm is on and
    they fit (see the module docstring); says what it did. None: nothing was looked at (no
    model files, the setting off, or the host could not tell)."""
    models = f"{spec.layout.release(spec.release_id)}/models"
    if not spec.page_cache_warm:
        if remote.run(f"test -d {models}").ok:
            remote.say(
                f"page cache: skipped (page_cache_warm=false): release {spec.release_id}'s "
                "model files load from disk"
            )
        return None
    done = remote.run(tool_script(models, "warm"), timeout=READ_MAX_S + 120)
    warmed = parse_tool(done.stdout) if done.ok else None
    if warmed is None:
        if not done.ok:
            remote.warn(f"page cache: could not read the model files ahead:\n{tail(done.stderr)}")
        return None
    if warmed.files:
        remote.say(warmed.message(spec.release_id))
    return warmed
