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

import ipaddress
import logging
import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from google.api_core import exceptions as api_exceptions
from google.auth.credentials import Credentials

from ai_deploy.gcp import GcpError, Terminated, compute, deferred_termination, raise_on_termination
from ai_deploy.gcp.permissions import window_role_hint

logger = logging.getLogger(__name__)

DEFAULT_RULE_PREFIX = "ai-deploy-ssh-"
DEFAULT_TARGET_TAG = "ai-server"
DEFAULT_NETWORK = "default"
DEFAULT_STALE_AFTER = timedelta(hours=1)
# Explicit, and above the default 1000 of ordinary allow rules; a deny rule that should win
# over the window needs a lower number.
DEFAULT_PRIORITY = 900
# How long closing waits for a create that was accepted but not seen DONE (bounded: the
# firewall insert commonly takes 5-20 s).
SETTLE_TIMEOUT = 120.0
# How often a rule whose create outcome is unknown is looked for again.
LATE_RULE_POLL_S = 2.0
MAX_PREFIX_LENGTH = 40
_RUN_MARK = "ai-deploy-run="
_EXPIRY_MARK = "ai-deploy-expires="
_NAME_RE = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_PREFIX_RE = re.compile(r"[a-z][-a-z0-9]*")


class FirewallError(GcpError):
    """The window could not be opened or closed; the message names what to fix."""


@dataclass(frozen=True)
class SshWindow:
    """The open window: the rule's name and what it allows."""

    name: str
    project: str
    source_range: str
    target_tag: str
    network: str
    port: int


def firewall_rule_name(
    prefix: str = DEFAULT_RULE_PREFIX, environ: Mapping[str, str] | None = None
) -> str:
    """A rule name unique to this CI run and attempt, derived from PREFIX.

    In GitHub Actions: PREFIX + GITHUB_RUN_ID + "-" + GITHUB_RUN_ATTEMPT + "-" + 4 random hex
    digits (a re-run gets a new attempt number; two jobs of one run still differ). Elsewhere:
    PREFIX + "local-" + 8 random hex digits. Guarantees a valid GCP name (lowercase letter
    first, then lowercase letters, digits, hyphens; at most 63 characters, no trailing hyphen)
    that ends with the random part whatever the lengths: a long name loses its middle.
    """
    validate_prefix(prefix)
    env = os.environ if environ is None else environ
    run_id = re.sub(r"[^0-9a-z]", "", env.get("GITHUB_RUN_ID", "").lower())
    if run_id:
        attempt = re.sub(r"[^0-9a-z]", "", env.get("GITHUB_RUN_ATTEMPT", "").lower()) or "1"
        head, tail = f"{prefix}{run_id}-{attempt}", f"-{secrets.token_hex(2)}"
    else:
        head, tail = f"{prefix}local", f"-{secrets.token_hex(4)}"
    name = unique_name(head, tail)
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"cannot build a valid firewall rule name from prefix {prefix!r}")
    return name


def unique_name(head: str, tail: str, limit: int = 63) -> str:
    """HEAD + TAIL in at most LIMIT characters, TAIL (the unique part) kept whole: a HEAD too
    long loses characters from its middle, so both its start and its end survive."""
    room = limit - len(tail)
    if len(head) > room:
        keep_end = room // 3
        head = head[: room - keep_end].rstrip("-") + head[len(head) - keep_end :]
    return head.rstrip("-") + tail


def _description_marks(environ: Mapping[str, str], expires: datetime) -> str:
    run = environ.get("GITHUB_RUN_ID", "")
    marks = f"{_EXPIRY_MARK}{expires.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%SZ}"
    if run:
        marks = f"{_RUN_MARK}{run}-{environ.get('GITHUB_RUN_ATTEMPT', '1') or '1'} " + marks
    return marks


def _rule_expiry(description: str) -> datetime | None:
    match = re.search(re.escape(_EXPIRY_MARK) + r"(\S+)", description)
    return compute.parse_timestamp(match.group(1)) if match else None


def _rule_run(description: str) -> tuple[str, int] | None:
    match = re.search(re.escape(_RUN_MARK) + r"(\w+)-(\d+)", description)
    return (match.group(1), int(match.group(2))) if match else None


def _stale_because(
    rule: compute.FirewallRule,
    now: datetime,
    older_than: timedelta,
    environ: Mapping[str, str],
) -> str | None:
    """Why RULE is a leftover that may be deleted now, or None to leave it."""
    run = _rule_run(rule.description)
    mine = environ.get("GITHUB_RUN_ID", "")
    if run and mine and run[0] == mine:
        attempt = int(environ.get("GITHUB_RUN_ATTEMPT", "1") or "1")
        if run[1] < attempt:
            return f"its run {run[0]} attempt {run[1]} is over (this is attempt {attempt})"
    expiry = _rule_expiry(rule.description)
    if expiry is not None:
        return f"it expired at {expiry:%Y-%m-%dT%H:%M:%SZ}" if now >= expiry else None
    if rule.created_at is not None and now - rule.created_at >= older_than:
        return f"it was created {now - rule.created_at} ago"
    return None


def validate_prefix(prefix: str) -> None:
    """Raise ValueError unless PREFIX can start GCP resource names and leaves room for a suffix."""
    if not _PREFIX_RE.fullmatch(prefix) or len(prefix) > MAX_PREFIX_LENGTH:
        raise ValueError(
            f"firewall rule prefix {prefix!r} must start with a lowercase letter, contain only "
            f"lowercase letters, digits and hyphens, and be at most {MAX_PREFIX_LENGTH} long"
        )


def sweep_stale_rules(
    credentials: Credentials,
    project: str,
    *,
    prefix: str = DEFAULT_RULE_PREFIX,
    older_than: timedelta = DEFAULT_STALE_AFTER,
    now: datetime | None = None,
    keep: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """Delete PREFIX* rules that are leftovers of runs that ended; returns the names deleted.

    A leftover is a rule whose `ai-deploy-expires=` mark has passed, a rule of an earlier
    attempt of this same GitHub run (`ai-deploy-run=`), or a rule without an expiry mark
    created more than OLDER_THAN ago. Best effort: a failure to list or delete is logged as
    a warning and never raised, since a leftover rule must not block a deploy. KEEP is left
    alone.
    """
    validate_prefix(prefix)
    now = now or datetime.now(timezone.utc)
    env = os.environ if environ is None else environ
    try:
        rules = compute.list_firewall_rules(credentials, project, name_prefix=prefix)
    except api_exceptions.Forbidden as exc:
        logger.warning(
            "cannot list firewall rules to sweep old %s* rules (needs compute.firewalls.list): %s",
            prefix,
            exc.message,
        )
        return []
    except (api_exceptions.GoogleAPIError, GcpError) as exc:
        logger.warning("cannot list firewall rules to sweep old %s* rules: %s", prefix, exc)
        return []
    swept: list[str] = []
    for rule in rules:
        why = None if rule.name == keep else _stale_because(rule, now, older_than, env)
        if why is None:
            continue
        logger.info("deleting stale firewall rule %s: %s", rule.name, why)
        try:
            compute.delete_firewall_rule(credentials, project, rule.name)
        except (api_exceptions.GoogleAPIError, GcpError) as exc:
            logger.warning("could not delete stale firewall rule %s: %s", rule.name, exc)
            continue
        swept.append(rule.name)
    return swept


def _covers_port(allowed: tuple[tuple[str, tuple[str, ...]], ...], port: int) -> bool:
    for protocol, ports in allowed:
        if protocol not in ("tcp", "all"):
            continue
        if not ports:
            return True
        for item in ports:
            low, _, high = item.partition("-")
            if low.isdigit() and int(low) <= port <= int(high or low):
                return True
    return False


def world_open_rules(
    rules: list[compute.FirewallRule], *, network: str, target_tag: str, port: int = 22
) -> list[compute.FirewallRule]:
    """The enabled ingress rules on NETWORK that let 0.0.0.0/0 reach tcp:PORT on instances
    with TARGET_TAG (GCP's `default-allow-ssh` on the default network is one): with one of
    them in place a temporary window adds nothing."""
    net = network.rstrip("/").rsplit("/", 1)[-1]
    return [
        r
        for r in rules
        if r.direction == "INGRESS"
        and not r.disabled
        and r.network.rstrip("/").rsplit("/", 1)[-1] == net
        and "0.0.0.0/0" in r.source_ranges
        and (not r.target_tags or target_tag in r.target_tags)
        and _covers_port(r.allowed, port)
    ]


def warn_about_world_open_ssh(
    credentials: Credentials, project: str, *, network: str, target_tag: str, port: int = 22
) -> list[str]:
    """Log a warning naming each rule that already opens PORT to the world (best effort);
    returns their names."""
    try:
        rules = compute.list_all_firewall_rules(credentials, project)
    except (api_exceptions.GoogleAPIError, GcpError) as exc:
        logger.warning("cannot list firewall rules to look for one open to the world: %s", exc)
        return []
    names = [
        r.name for r in world_open_rules(rules, network=network, target_tag=target_tag, port=port)
    ]
    for name in names:
        logger.warning(
            "firewall rule %s already lets 0.0.0.0/0 reach tcp:%d on network %s, so the "
            "temporary window protects nothing: delete it (gcloud compute firewall-rules delete "
            "%s --project=%s) or use SSH through IAP",
            name,
            port,
            network,
            name,
            project,
        )
    return names


def _source_range(source_ip: str) -> str:
    try:
        address = ipaddress.ip_address(source_ip.strip())
    except ValueError as exc:
        raise FirewallError(f"runner address {source_ip!r} is not an IP address") from exc
    if not isinstance(address, ipaddress.IPv4Address):
        raise FirewallError(
            f"runner address {source_ip} is not IPv4: the instance's external address is IPv4, "
            "so the window needs the runner's public IPv4 address"
        )
    return f"{address}/32"


def _matches(rule: compute.FirewallRule | None, window: SshWindow) -> bool:
    return (
        rule is not None
        and rule.source_ranges == (window.source_range,)
        and rule.target_tags == (window.target_tag,)
        and rule.allowed == (("tcp", (str(window.port),)),)
        and rule.network.rstrip("/").endswith("/networks/" + window.network.rsplit("/", 1)[-1])
    )


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
    with raise_on_termination():
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
        try:
            state.open()
            yield window
        except BaseException as exc:
            with deferred_termination(redeliver=not isinstance(exc, Terminated)):
                state.close(pending=exc)
            raise
        else:
            with deferred_termination():
                state.close(pending=None)


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
