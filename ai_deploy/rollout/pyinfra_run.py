"""deploy.py run by pyinfra from the CI entry, each host's outcome read back as data from the
run's result file. What it prints by default is each host's events (ai_deploy.report.progress: what
changed, the gate's progress, errors); with `-v` (AI_DEPLOY_VERBOSE) pyinfra's whole stream
instead. Every line printed is redacted of key- and token-like values and registered secrets
first (ai_deploy.report.secretlike)."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ai_deploy.gcp import deferred_termination
from ai_deploy.host.events import EVENTS_FD_ENV, HostEvent
from ai_deploy.host.outcome import RESULT_FILE_ENV, HostOutcome, read_outcomes
from ai_deploy.inventory import pyinfra_command
from ai_deploy.project import project_dir
from ai_deploy.report import output as ci_output
from ai_deploy.report.progress import HostProgress
from ai_deploy.report.secretlike import LineRedactor

# A cancelled GitHub job gets SIGINT, SIGTERM 7.5 s later and SIGKILL 2.5 s after that: pyinfra
# is stopped and its lock released well inside the first 7.5 s.
STOP_GRACE_S = (2.0, 1.5)  # after SIGINT, after SIGTERM; then SIGKILL
LOCK_CLEANUP_S = 4.0


@dataclass(frozen=True)
class PyinfraRun:
    returncode: int
    tail: list[str]  # the last lines of its output, redacted
    outcomes: dict[str, HostOutcome]  # by host name, as the hosts reported them
    explained: bool = True  # its output was printed whole, or an error of a host was

    def unexplained_tail(self, lines: int = 12) -> list[str]:
        """The last LINES of pyinfra's output when the run failed and nothing printed says
        why (a failure before any host reported, with pyinfra's stream not shown); else none."""
        if self.returncode == 0 or self.explained:
            return []
        return [line for line in self.tail if line.strip()][-lines:]


def run_pyinfra_streamed(
    inventory: str,
    data: Sequence[str],
    env: Mapping[str, str],
    *,
    dry: bool = False,
    limit: Sequence[str] = (),
) -> PyinfraRun:
    """Run deploy.py on INVENTORY (only the hosts named in LIMIT, when given), printing as it
    goes each host's events, or pyinfra's whole stream when verbose (ENV's AI_DEPLOY_VERBOSE;
    always for DRY, whose stream is the plan).

    An exception here (SIGINT, SIGTERM or SIGHUP raised as one) stops pyinfra first (SIGINT,
    then SIGTERM, then SIGKILL to its whole process group, with further signals held back
    meanwhile), then releases the host lock that run held if it is still there, so the cleanup
    that follows does not race a deploy still running and the next deploy can start at once."""
    verbose = dry or ci_output.verbose(env)
    events_in, events_out = os.pipe()
    with tempfile.TemporaryDirectory(prefix="ai-deploy-result-") as tmp:
        result_file = Path(tmp) / "outcomes.jsonl"
        try:
            proc = subprocess.Popen(
                pyinfra_command(inventory, data, dry=dry, limit=limit),
                cwd=project_dir(),
                env={**env, RESULT_FILE_ENV: str(result_file), EVENTS_FD_ENV: str(events_out)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                pass_fds=(events_out,),
                start_new_session=True,  # stopped by us, in order, never by the terminal's Ctrl-C
            )
        finally:
            os.close(events_out)  # pyinfra holds the only writer: its exit ends the stream
        try:
            # Inside stop-commands GitHub would ignore an ::add-mask::, so a host's output
            # (an app's traceback with its API key) is redacted here, before it is printed.
            with ci_output.commands_stopped():
                tail, errors = _relay(proc, events_in, verbose)
            rc = proc.wait()
        except BaseException:
            with deferred_termination(redeliver=False):
                if _stop(proc):
                    _release_lock_of(proc.pid, inventory, data, env)
            raise
        finally:
            os.close(events_in)
        return PyinfraRun(rc, tail, read_outcomes(result_file), verbose or errors > 0)


def _relay(proc: subprocess.Popen[bytes], events_fd: int, verbose: bool) -> tuple[list[str], int]:
    """Read pyinfra's output and its events until both end: the output printed when VERBOSE,
    else the events. Returns the output's last lines (redacted) and the errors printed."""
    assert proc.stdout is not None
    tail: deque[str] = deque(maxlen=60)
    redacted = LineRedactor()
    progress = HostProgress()
    pending = {proc.stdout.fileno(): b"", events_fd: b""}
    with selectors.DefaultSelector() as sel:
        for fd in pending:
            sel.register(fd, selectors.EVENT_READ)
        while pending:
            for key, _ in sel.select():
                fd = int(key.fd)
                chunk = os.read(fd, 65536)
                if chunk:
                    *lines, pending[fd] = (pending[fd] + chunk).split(b"\n")
                else:  # the end: what is left is its last line, when there is one
                    sel.unregister(fd)
                    lines = [rest] if (rest := pending.pop(fd)) else []
                for raw in lines:
                    text = raw.decode("utf-8", errors="replace").rstrip("\r")
                    if fd == events_fd:
                        if not verbose:
                            _feed(progress, text)
                        continue
                    line = redacted(text)
                    tail.append(line)
                    if verbose:
                        sys.stdout.write(line + "\n")
                        sys.stdout.flush()
    progress.flush()
    return list(tail), progress.errors


def _feed(progress: HostProgress, text: str) -> None:
    try:
        event = HostEvent.from_json(text)
    except (ValueError, TypeError, json.JSONDecodeError):
        return  # not ours: the stream carries events only, so this is never seen
    progress.feed(event)


def _stop(proc: subprocess.Popen[bytes]) -> bool:
    """Stop pyinfra and anything it started; True when it was still running (so it may have
    left its lock behind)."""
    if proc.poll() is not None:
        _killpg(proc.pid, signal.SIGKILL)
        return False
    for sig, grace in zip((signal.SIGINT, signal.SIGTERM), STOP_GRACE_S, strict=True):
        _killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    _killpg(proc.pid, signal.SIGKILL)  # whatever is left in its group
    proc.wait()
    return True


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _release_lock_of(pid: int, inventory: str, data: Sequence[str], env: Mapping[str, str]) -> None:
    """Release the lock the stopped pyinfra run PID held on its hosts (its info names this
    machine and that pid), in a child bounded to LOCK_CLEANUP_S; a lock left behind anyway is
    taken over by the next deploy from this machine at once, from any other after lock_lease_s."""
    started = time.monotonic()
    cmd = [
        sys.executable,
        "-m",
        "ai_deploy.commands.lock",
        inventory,
        socket.gethostname(),
        str(pid),
    ]
    child = subprocess.Popen(
        [*cmd, *data],
        cwd=project_dir(),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        child.wait(timeout=LOCK_CLEANUP_S)
    except subprocess.TimeoutExpired:
        _killpg(child.pid, signal.SIGKILL)
        child.wait()
        print(
            f"ai-deploy: releasing the host lock took over {LOCK_CLEANUP_S:.0f} s; stopped "
            "(the next deploy takes the lock over once its lease runs out)",
            file=sys.stderr,
            flush=True,
        )
        return
    print(
        f"ai-deploy: pyinfra stopped, lock cleanup took {time.monotonic() - started:.1f} s",
        flush=True,
    )
