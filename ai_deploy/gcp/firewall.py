"""The temporary SSH window: a firewall rule that exists only while a deploy runs.

`firewall_window()` opens tcp:22 from the runner's address (/32) to the instances carrying the
target tag, and deletes the rule on every way out of the block: normal exit, any exception,
SIGINT and SIGTERM (a cancelled CI job). Rules are named from a fixed prefix, unique per CI run
and attempt, so leftovers of a killed run can be recognised and swept by age.
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

logger = logging.getLogger(__name__)

DEFAULT_RULE_PREFIX = "ai-deploy-ssh-"
DEFAULT_TARGET_TAG = "ai-server"
DEFAULT_NETWORK = "default"
DEFAULT_STALE_AFTER = timedelta(hours=1)
MAX_PREFIX_LENGTH = 40
_NAME_RE = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_PREFIX_RE = re.compile(r"[a-z][-a-z0-9]*")
_CREATE_ROLE_HINT = (
    "grant the deploy's service account roles/compute.securityAdmin on the project, or a "
    "custom role with compute.firewalls.create, compute.firewalls.delete, "
    "compute.firewalls.list, compute.firewalls.get and compute.networks.updatePolicy"
)


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
    first, then lowercase letters, digits, hyphens; at most 63 characters, no trailing hyphen).
    """
    validate_prefix(prefix)
    env = os.environ if environ is None else environ
    run_id = re.sub(r"[^0-9a-z]", "", env.get("GITHUB_RUN_ID", "").lower())
    if run_id:
        attempt = re.sub(r"[^0-9a-z]", "", env.get("GITHUB_RUN_ATTEMPT", "").lower()) or "1"
        suffix = f"{run_id}-{attempt}-{secrets.token_hex(2)}"
    else:
        suffix = f"local-{secrets.token_hex(4)}"
    name = (prefix + suffix)[:63].rstrip("-")
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"cannot build a valid firewall rule name from prefix {prefix!r}")
    return name


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
) -> list[str]:
    """Delete rules named PREFIX* created more than OLDER_THAN ago (leftovers of killed runs);
    returns the names deleted.

    Best effort: a failure to list or delete is logged as a warning and never raised, since
    a leftover rule must not block a deploy. Rules without a creation time, younger ones and
    KEEP are left alone.
    """
    validate_prefix(prefix)
    now = now or datetime.now(timezone.utc)
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
        if rule.name == keep or rule.created_at is None or now - rule.created_at < older_than:
            continue
        age = now - rule.created_at
        logger.info("deleting stale firewall rule %s (created %s ago)", rule.name, age)
        try:
            compute.delete_firewall_rule(credentials, project, rule.name)
        except (api_exceptions.GoogleAPIError, GcpError) as exc:
            logger.warning("could not delete stale firewall rule %s: %s", rule.name, exc)
            continue
        swept.append(rule.name)
    return swept


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
    reasons = {str(e.get("reason")) for e in exc.errors if isinstance(e, dict)}
    if isinstance(exc, api_exceptions.Forbidden) and reasons & {
        "accessNotConfigured",
        "SERVICE_DISABLED",
    }:
        return FirewallError(
            f"the Compute Engine API is not enabled in project {window.project}: enable "
            f"compute.googleapis.com there. Google said: {exc.message}"
        )
    if isinstance(exc, api_exceptions.Forbidden) and reasons <= {
        "forbidden",
        "insufficientPermissions",
        "None",
    }:
        return FirewallError(
            f"permission denied creating firewall rule {window.name} in project "
            f"{window.project}: the credentials lack compute.firewalls.create (and "
            f"compute.networks.updatePolicy on network {window.network}); {_CREATE_ROLE_HINT}. "
            f"Google said: {exc.message}"
        )
    if isinstance(exc, api_exceptions.NotFound):
        return FirewallError(
            f"cannot create firewall rule {window.name}: network {window.network} or project "
            f"{window.project} not found (check GCP_PROJECT_ID and the network setting). "
            f"Google said: {exc.message}"
        )
    why = f" ({', '.join(sorted(reasons))})" if reasons else ""
    return FirewallError(f"cannot create firewall rule {window.name}{why}: {exc.message}")


class _Window:
    """The state of one window between opening and closing."""

    def __init__(
        self, credentials: Credentials, window: SshWindow, description: str, timeout: float
    ) -> None:
        self.credentials = credentials
        self.window = window
        self.description = description
        self.timeout = timeout
        # Whether a rule of ours may exist and must be deleted on the way out.
        self.may_exist = False
        # Whether the create operation was seen DONE (else it may still complete later).
        self.confirmed = False

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
            timeout=self.timeout,
        )

    def open(self) -> None:
        w = self.window
        self.may_exist = True
        try:
            self._create()
        except api_exceptions.Conflict:
            self._adopt_existing()
        except compute.OperationError as exc:
            if exc.http_status == 409 or "RESOURCE_ALREADY_EXISTS" in exc.codes:
                self._adopt_existing()
            else:
                raise FirewallError(f"creating firewall rule {w.name} failed: {exc}") from exc
        except api_exceptions.ClientError as exc:
            # The request was refused outright: nothing of ours was created.
            self.may_exist = False
            raise _create_error(exc, w) from exc
        except api_exceptions.GoogleAPICallError as exc:
            raise _create_error(exc, w) from exc
        self.confirmed = True
        logger.info(
            "firewall rule %s open: tcp:%d from %s to tag %s on %s",
            w.name,
            w.port,
            w.source_range,
            w.target_tag,
            w.network,
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
            self._create()
        except api_exceptions.GoogleAPICallError as exc:
            raise _create_error(exc, w) from exc
        except compute.OperationError as exc:
            raise FirewallError(f"replacing firewall rule {w.name} failed: {exc}") from exc

    def close(self, pending: BaseException | None) -> None:
        """Delete the rule; never raises over PENDING (the error already on its way up)."""
        if not self.may_exist:
            return
        w = self.window
        try:
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
                hint += " (the credentials lack compute.firewalls.delete)"
            if pending is None:
                raise FirewallError(hint) from exc
            logger.error("%s", hint)
            return
        if not deleted and not self.confirmed:
            deleted = self._delete_late_create()
        logger.info("firewall rule %s %s", w.name, "deleted" if deleted else "was already gone")

    def _delete_late_create(self, attempts: int = 15, interval_s: float = 2.0) -> bool:
        """The open was interrupted before its create operation was seen DONE: the rule may
        still appear. Watch for it for a while and delete it when it does."""
        w = self.window
        for _ in range(attempts):
            try:
                if compute.get_firewall_rule(self.credentials, w.project, w.name) is not None:
                    return compute.delete_firewall_rule(
                        self.credentials, w.project, w.name, timeout=self.timeout
                    )
            except (api_exceptions.GoogleAPIError, GcpError) as exc:
                logger.error("checking for a late firewall rule %s failed: %s", w.name, exc)
                return False
            time.sleep(interval_s)
        return False


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
    timeout: float = compute.DEFAULT_OPERATION_TIMEOUT,
    environ: Mapping[str, str] | None = None,
) -> Iterator[SshWindow]:
    """Open tcp:PORT from SOURCE_IP/32 to instances tagged TARGET_TAG on NETWORK while inside.

    + credentials, project: who acts, and where (explicit; see ai_deploy.gcp.auth)
    + source_ip: the runner's public IPv4 address
    + prefix / rule_name: the rule is RULE_NAME, else `firewall_rule_name(prefix)`
    + stale_after: PREFIX* rules older than this are swept first (None: no sweep)

    Guarantees: the rule exists (its create operation DONE) when the block starts; it is
    deleted, and the delete operation waited for, when the block ends normally, raises
    anything, or is interrupted by SIGINT/SIGTERM (raised as `Terminated` in the main thread;
    the previous signal handlers are restored afterwards). A rule of the same name that
    already exists is reused when identical and replaced otherwise. A 403 raises
    FirewallError naming the missing permission. Signals that arrive during the delete are
    held until it finishes.

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
    state = _Window(credentials, window, text, timeout)
    with raise_on_termination():
        if stale_after is not None:
            sweep_stale_rules(
                credentials, project, prefix=prefix, older_than=stale_after, keep=name
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
    "DEFAULT_RULE_PREFIX",
    "DEFAULT_STALE_AFTER",
    "DEFAULT_TARGET_TAG",
    "FirewallError",
    "SshWindow",
    "firewall_rule_name",
    "firewall_window",
    "sweep_stale_rules",
    "validate_prefix",
]
