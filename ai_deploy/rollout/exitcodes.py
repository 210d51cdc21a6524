"""The exit codes of `ai-deploy deploy`, one table: from the phase that stopped the run, or from
what the hosts reported (ai_deploy.host.outcome), to the code CI sees. Every deploy is a
rollout (ai_deploy.rollout.run), which alone turns its hosts' outcomes into a code
(`exit_for_outcomes`, then 15 or 16 from its switch-back: `_Steps._switch_back`)."""

from __future__ import annotations

from collections.abc import Iterable

from ai_deploy.host.outcome import (
    ALREADY_SERVING,
    FAILED,
    SERVED,
    SWITCH_BACK_FAILED,
    SWITCHED_BACK,
    HostOutcome,
)

EXIT_OK = 0
EXIT_CONFIG = 2  # bad artifact or settings: nothing was touched
EXIT_AUTH = 10
EXIT_RUNNER_IP = 11
EXIT_FIREWALL = 12
EXIT_SSH = 13
EXIT_DEPLOY = 14  # the deploy failed on a host (not a health failure that was switched back)
EXIT_SWITCHED_BACK = 15  # the release was not healthy; the previous release serves again
EXIT_SWITCH_BACK_FAILED = 16  # not healthy, and putting the previous release back failed too
EXIT_FLOOR = 17  # hosts went unhealthy during a rollout: its next step would break the floor
EXIT_UNEXPECTED = 1

# A phase that stops the run before any host reports.
PHASE_EXIT = {
    "artifact": EXIT_CONFIG,
    "config": EXIT_CONFIG,
    "auth": EXIT_AUTH,
    "runner-ip": EXIT_RUNNER_IP,
    "instance": EXIT_AUTH,
    "firewall": EXIT_FIREWALL,
    "ssh": EXIT_SSH,
    "deploy": EXIT_DEPLOY,
}

# What hosts report. A run with several outcomes exits with the most urgent: a host left with
# no healthy release (16), then a failure (14), then a switch back (15).
STATUS_EXIT = {
    SERVED: EXIT_OK,
    ALREADY_SERVING: EXIT_OK,
    SWITCHED_BACK: EXIT_SWITCHED_BACK,
    FAILED: EXIT_DEPLOY,
    SWITCH_BACK_FAILED: EXIT_SWITCH_BACK_FAILED,
}
_URGENCY = (EXIT_SWITCH_BACK_FAILED, EXIT_DEPLOY, EXIT_SWITCHED_BACK, EXIT_OK)

TABLE = """\
exit codes:
   0  every host serves the release (or already did)
   2  bad input (artifact, settings, key): nothing was touched
  10  GCP authentication, or the instance could not be read
  11  the runner's address could not be found
  12  the firewall window could not be opened (IAP: no standing rule lets
      35.235.240.0/20 reach port 22; the fix is printed)
  13  SSH to the host did not work, or its host key is not the pinned one
  14  the deploy failed on a host (see its phase and reason), a host is locked by
      another deploy (named) and nothing changed, or the run lost a host's lock
      (named) and changed no host after that
  15  the release was not healthy (on a host's gate or from outside) and every
      host this run switched serves the release it served before again
  16  the release was not healthy and putting a host back failed, was not tried
      (the run had lost a host's lock), or there was nothing to put back (the
      host already served the release, or had none before)
  17  a rollout stopped before a step: hosts went unhealthy meanwhile and the
      step would take more hosts out of service than rollout_max_unavailable
      allows; that step changed nothing, the hosts switched before keep the
      new release (named); run again once the hosts are healthy
 128+N  stopped by signal N (the window and the key were removed)"""


def exit_for_outcomes(outcomes: Iterable[HostOutcome], expected: Iterable[str]) -> int:
    """The exit code for what the hosts reported; a host that reported nothing failed."""
    found = {o.host: o for o in outcomes}
    codes = {STATUS_EXIT[o.status] for o in found.values()}
    if any(name not in found for name in expected):
        codes.add(EXIT_DEPLOY)
    for code in _URGENCY:
        if code in codes:
            return code
    return EXIT_OK
