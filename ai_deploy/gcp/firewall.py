"""The temporary SSH window: a firewall rule that exists only while a deploy runs.

`firewall_window()` opens tcp:22 from the runner's address (/32) to the instances carrying the
target tag, and deletes the rule on every way out of the block: normal exit, any exception,
SIGINT and SIGTERM (a cancelled CI job). Rules are named from a fixed prefix, unique per CI run
and attempt, so leftovers of a killed run can be recognised and swept.

Each rule's description carries its run (`ai-deploy-run=RUN-ATTEMPT`) and an expiry
(`ai-deploy-expires=<RFC 3339 UTC>`, creation + the lease, `stale_after`). The sweep before
each window deletes rules whose expiry passed and, at once, rules of an earlier attempt of the
same run (a re-run starts only after the previous attempt ended); rules without the marks
(older versions) go by age as before.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

from google.api_core import exceptions as api_exceptions
from google.auth.credentials import Credentials

from ai_deploy.gcp import GcpError, cleanup_on_exit, compute

# Naming, marking and sweeping rules live in ai_deploy.gcp.firewall_rules (re-exported).
from ai_deploy.gcp.firewall_rules import (
    _NAME_RE,
    DEFAULT_NETWORK,
    DEFAULT_PRIORITY,
    DEFAULT_RULE_PREFIX,
    DEFAULT_STALE_AFTER,
    DEFAULT_TARGET_TAG,
    LATE_RULE_POLL_S,
    SETTLE_TIMEOUT,
    FirewallError,
    SshWindow,
    _description_marks,
    _matches,
    _source_range,
    firewall_rule_name,
    sweep_stale_rules,
    unique_name,
    validate_prefix,
    warn_about_world_open_ssh,
    world_open_rules,
)
from ai_deploy.gcp.permissions import window_role_hint

logger = logging.getLogger(__name__)


def _create_error(exc: api_exceptions.GoogleAPICallError, window: SshWindow) -> FirewallError:
    reasons = compute.reasons(exc)
    if isinstance(exc, api_exceptions.Forbidden) and reasons & {
        "accessNotConfigured",
        "SERVICE_DISABLED",
    }:
        return FirewallError(
            f"the Compute Engine API is not enabled in project {window.project}: enable "
            f"compute.googleapis.com there. Google said: {exc.message}"
        )
    if isinstance(exc, api_exceptions.Forbidden):
        return FirewallError(
            f"permission denied creating firewall rule {window.name} in project "
            f"{window.project}: the credentials lack compute.firewalls.create (and "
            f"compute.networks.updatePolicy on network {window.network}). Google said: "
            f"{exc.message}\n{window_role_hint(window.project)}"
        )
    if isinstance(exc, api_exceptions.NotFound):
        return FirewallError(
            f"cannot create firewall rule {window.name}: network {window.network} or project "
            f"{window.project} not found (check GCP_PROJECT_ID and the network setting). "
            f"Google said: {exc.message}"
        )
    why = f" ({', '.join(sorted(reasons))})" if reasons else ""
    return FirewallError(f"cannot create firewall rule {window.name}{why}: {exc.message}")


def _unreadable_error(exc: compute.OperationError, window: SshWindow) -> FirewallError:
    cause = getattr(exc, "cause", None)
    text = (
        f"creating firewall rule {window.name}: the insert was accepted (operation "
        f"{exc.operation}) but its outcome is unknown: {exc}"
    )
    if isinstance(cause, api_exceptions.Forbidden):
        text += (
            "; the credentials lack compute.globalOperations.get (needed to wait for the "
            f"operation)\n{window_role_hint(window.project)}"
        )
    return FirewallError(text)


class _Window:
    """The state of one window between opening and closing."""

    def __init__(
        self,
        credentials: Credentials,
        window: SshWindow,
        description: str,
        timeout: float,
        priority: int,
    ) -> None:
        self.credentials = credentials
        self.window = window
        self.description = description
        self.timeout = timeout
        self.priority = priority
        # Whether a rule of ours may exist and must be deleted on the way out.
        self.may_exist = False
        # Whether the create operation was seen DONE (else it may still complete later).
        self.confirmed = False
        # The accepted insert's operation, kept so closing can wait for it.
        self.insert_operation: str | None = None
        # One requestId for the create and every retry of it (a replace gets a new one).
        self.request_id = compute.new_request_id()

    def _started(self, operation: str) -> None:
        self.insert_operation = operation
        self.may_exist = True

    def _create(self) -> None:
        w = self.window
        compute.create_firewall_rule(
            self.credentials,
            w.project,
            name=w.name,
            source_ranges=[w.source_range],
            target_tags=[w.target_tag],
            network=w.network,
            ports=[str(w.port)],
            description=self.description,
            priority=self.priority,
            timeout=self.timeout,
            request_id=self.request_id,
            on_started=self._started,
        )

    def open(self) -> None:
        w = self.window
        # Until Compute answers, an insert may have been accepted (a timeout, a signal).
        self.may_exist = True
        try:
            self._create()
        except api_exceptions.Conflict:
            self._adopt_existing()
        except compute.OperationError as exc:
            if exc.finished and (exc.http_status == 409 or "RESOURCE_ALREADY_EXISTS" in exc.codes):
                self._adopt_existing()
            elif exc.finished:
                # DONE with an error: the change was not made, nothing to wait for.
                self.may_exist = False
                raise FirewallError(f"creating firewall rule {w.name} failed: {exc}") from exc
            else:
                raise _unreadable_error(exc, w) from exc
        except api_exceptions.ClientError as exc:
            if self.insert_operation is None:
                # The insert itself was refused: nothing of ours was created.
                self.may_exist = False
            raise _create_error(exc, w) from exc
        except api_exceptions.GoogleAPICallError as exc:
            raise _create_error(exc, w) from exc
        self.confirmed = True
        logger.info(
            "firewall rule %s open: tcp:%d from %s to tag %s on %s (priority %d)",
            w.name,
            w.port,
            w.source_range,
            w.target_tag,
            w.network,
            self.priority,
        )

    def _adopt_existing(self) -> None:
        """A rule of our (run-unique) name exists: an earlier try of this same create that
        did succeed. Use it when it allows exactly what we asked for, else replace it."""
        w = self.window
        try:
            existing = compute.get_firewall_rule(self.credentials, w.project, w.name)
            if _matches(existing, w):
                logger.info("firewall rule %s already exists as wanted; using it", w.name)
                return
            logger.warning("firewall rule %s exists with other settings; replacing it", w.name)
            compute.delete_firewall_rule(self.credentials, w.project, w.name, timeout=self.timeout)
            self.request_id = compute.new_request_id()
            self.insert_operation = None
            self._create()
        except api_exceptions.GoogleAPICallError as exc:
            raise _create_error(exc, w) from exc
        except compute.OperationError as exc:
            raise FirewallError(f"replacing firewall rule {w.name} failed: {exc}") from exc

    def _settle_insert(self) -> str:
        """Wait (bounded) for an accepted insert not yet seen DONE: "created", "failed"
        (DONE with an error: no rule), or "unknown" (could not be read or not DONE)."""
        if self.insert_operation is None:
            return "unknown"
        w = self.window
        try:
            compute.wait_global_operation_named(
                self.credentials,
                w.project,
                self.insert_operation,
                what=f"create firewall rule {w.name}",
                timeout=min(self.timeout, SETTLE_TIMEOUT),
            )
        except compute.OperationError as exc:
            if exc.finished:
                return "failed"
            logger.warning("waiting for the create of %s before deleting it: %s", w.name, exc)
            return "unknown"
        except Exception as exc:
            logger.warning("waiting for the create of %s before deleting it: %s", w.name, exc)
            return "unknown"
        return "created"

    def close(self, pending: BaseException | None) -> None:
        """Delete the rule; never raises over PENDING (the error already on its way up)."""
        if not self.may_exist:
            return
        w = self.window
        outcome = "created" if self.confirmed else self._settle_insert()
        if outcome == "failed":
            logger.info("firewall rule %s was never created (its create failed)", w.name)
            return
        try:
            if outcome == "unknown":
                deleted = self._delete_unsettled()
            else:
                deleted = compute.delete_firewall_rule(
                    self.credentials, w.project, w.name, timeout=self.timeout
                )
        except (api_exceptions.GoogleAPIError, GcpError) as exc:
            hint = (
                f"could not delete firewall rule {w.name} in project {w.project} ({exc}); "
                f"delete it by hand: gcloud compute firewall-rules delete {w.name} "
                f"--project={w.project} --quiet"
            )
            if isinstance(exc, api_exceptions.Forbidden):
                hint += " (the credentials lack compute.firewalls.delete)\n" + window_role_hint(
                    w.project
                )
            if pending is None:
                raise FirewallError(hint) from exc
            logger.error("%s", hint)
            return
        logger.info("firewall rule %s %s", w.name, "deleted" if deleted else "was already gone")

    def _delete_unsettled(self) -> bool:
        """The create's outcome is unknown (its operation could not be read, or the insert's
        answer never came): until SETTLE_TIMEOUT passes, delete the rule, retrying while
        Compute says it is not ready (its create still running), and watch for a rule that
        appears late. Errors other than those propagate."""
        w = self.window
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            try:
                if compute.delete_firewall_rule(
                    self.credentials, w.project, w.name, timeout=self.timeout
                ):
                    return True
            except api_exceptions.BadRequest as exc:
                if "resourceNotReady" not in compute.reasons(exc):
                    raise
            if time.monotonic() + LATE_RULE_POLL_S > deadline:
                return False
            time.sleep(LATE_RULE_POLL_S)


@contextmanager
def firewall_window(
    credentials: Credentials,
    project: str,
    *,
    source_ip: str,
    target_tag: str = DEFAULT_TARGET_TAG,
    network: str = DEFAULT_NETWORK,
    port: int = 22,
    prefix: str = DEFAULT_RULE_PREFIX,
    rule_name: str | None = None,
    stale_after: timedelta | None = DEFAULT_STALE_AFTER,
    description: str | None = None,
    priority: int = DEFAULT_PRIORITY,
    timeout: float = compute.DEFAULT_OPERATION_TIMEOUT,
    environ: Mapping[str, str] | None = None,
) -> Iterator[SshWindow]:
    """Open tcp:PORT from SOURCE_IP/32 to instances tagged TARGET_TAG on NETWORK while inside.

    + credentials, project: who acts, and where (explicit; see ai_deploy.gcp.auth)
    + source_ip: the runner's public IPv4 address
    + prefix / rule_name: the rule is RULE_NAME, else `firewall_rule_name(prefix)`
    + stale_after: the rule's lease: its description says it expires this long after its
      creation, and leftovers are swept first (see sweep_stale_rules; None: no sweep)
    + priority: the rule's explicit priority

    Guarantees: the rule exists (its create operation DONE) when the block starts; it is
    deleted, and the delete operation waited for, when the block ends normally, raises
    anything, or is interrupted by SIGINT/SIGTERM (raised as `Terminated` in the main thread;
    the previous signal handlers are restored afterwards). An insert that Compute accepted
    but whose operation could not be read or had not ended is waited for (bounded) and its
    rule deleted; one refused outright or ended DONE with an error leaves nothing to delete.
    A rule of the same name that already exists is reused when identical and replaced
    otherwise. A 403 raises FirewallError naming the missing permission and the custom role
    that has it. A rule already opening the port to 0.0.0.0/0 is warned about. Signals that
    arrive during the cleanup are held until it finishes.

        with firewall_window(session.credentials, session.project, source_ip=ip) as window:
            run_pyinfra(...)
    """
    name = rule_name or firewall_rule_name(prefix, environ)
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"firewall rule name {name!r} is not a valid GCP resource name")
    window = SshWindow(
        name=name,
        project=project,
        source_range=_source_range(source_ip),
        target_tag=target_tag,
        network=network,
        port=port,
    )
    env = os.environ if environ is None else environ
    run = env.get("GITHUB_RUN_ID")
    text = description or (
        "Temporary SSH access for an ai-deploy run"
        + (f" (GitHub run {run} attempt {env.get('GITHUB_RUN_ATTEMPT', '1')})" if run else "")
        + "; deleted when the run ends"
    )
    lease = stale_after if stale_after is not None else DEFAULT_STALE_AFTER
    text += "; " + _description_marks(env, datetime.now(timezone.utc) + lease)
    state = _Window(credentials, window, text, timeout, priority)
    # Nothing of ours exists until open() starts, so closing after a signal in the sweep is a
    # no-op (state.may_exist is still False).
    with cleanup_on_exit(state.close):
        if stale_after is not None:
            sweep_stale_rules(
                credentials,
                project,
                prefix=prefix,
                older_than=stale_after,
                keep=name,
                environ=env,
            )
        warn_about_world_open_ssh(
            credentials, project, network=network, target_tag=target_tag, port=port
        )
        state.open()
        yield window


__all__ = [
    "DEFAULT_NETWORK",
    "DEFAULT_PRIORITY",
    "DEFAULT_RULE_PREFIX",
    "DEFAULT_STALE_AFTER",
    "DEFAULT_TARGET_TAG",
    "FirewallError",
    "SshWindow",
    "firewall_rule_name",
    "firewall_window",
    "sweep_stale_rules",
    "unique_name",
    "validate_prefix",
    "warn_about_world_open_ssh",
    "world_open_rules",
]
