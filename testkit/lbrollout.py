"""A rollout measured through the sandbox's load balancer, as the fleet's e2e test and
`bench.lbfleet` both run it: traffic through HAProxy (testkit.lbtraffic) from a few seconds
before the deploy to a few seconds after, streams opened at given moments of the deploy, the
deploy's output kept in a file, its process group ended by its id if the caller is stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from testkit.lb import LoadBalancer
from testkit.lbtraffic import LbTraffic, TrafficResult

DEPLOY_LIMIT_S = 900.0


@dataclass(frozen=True)
class Streams:
    """COUNT streams of TOKENS events INTERVAL seconds apart, opened AT seconds after the
    deploy started (through the load balancer, so on whichever hosts it picks)."""

    at: float
    count: int
    tokens: int
    interval: float


@dataclass(frozen=True)
class RolloutRun:
    """The deploy's exit code and output, when it ran (traffic clock), what the traffic saw."""

    rc: int
    output: str
    started: float
    ended: float
    traffic: TrafficResult

    @property
    def wall_s(self) -> float:
        return self.ended - self.started

    @property
    def fewest_up_during(self) -> int:
        return self.traffic.fewest_up(self.started, self.ended)


def stop_group(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """SIGTERM to a deploy started in a session of its own (ai-deploy then stops its pyinfra
    run and drops its locks), then its process group, by id, only if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def rollout_under_traffic(
    lb: LoadBalancer,
    argv: Sequence[str],
    log_path: Path,
    *,
    rate: float,
    timeout: float,
    streams: Sequence[Streams] = (),
    before_s: float = 3.0,
    after_s: float = 3.0,
    cwd: Path | None = None,
) -> RolloutRun:
    """ARGV (a deploy) run while RATE POSTs/s go through LB, from BEFORE_S seconds before it
    to AFTER_S seconds after it; STREAMS opened during it; its output in LOG_PATH."""
    env = dict(os.environ, NO_COLOR="1", TERM="dumb")
    traffic = LbTraffic(
        lb, rate=rate, timeout=timeout, max_duration=before_s + DEPLOY_LIMIT_S + after_s + 30
    ).start()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pending = sorted(streams, key=lambda s: s.at)
    proc: subprocess.Popen[bytes] | None = None
    try:
        time.sleep(before_s)
        started = traffic.now()
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        while proc.poll() is None and traffic.now() - started < DEPLOY_LIMIT_S:
            while pending and traffic.now() - started >= pending[0].at:
                s = pending.pop(0)
                traffic.open_streams(s.count, s.tokens, s.interval)
            time.sleep(0.1)
        stop_group(proc)  # past the limit: stopped, and its exit code says so
        ended = traffic.now()
        time.sleep(after_s)
    finally:
        if proc is not None:
            stop_group(proc)
        result = traffic.stop()
    output = log_path.read_text(errors="replace")
    return RolloutRun(proc.returncode, output, started, ended, result)
