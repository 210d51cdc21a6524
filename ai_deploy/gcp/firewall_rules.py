"""The window's firewall rules by name: a name unique per CI run and attempt that keeps its
random suffix whatever the prefix, the run and expiry marks in each rule's description, the
sweep of rules left by runs that are over, and the rules that already open SSH to the world.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from google.api_core import exceptions as api_exceptions
from google.auth.credentials import Credentials

from ai_deploy.gcp import GcpError, compute
from ai_deploy.gcp.github_runs import RunStatus

logger = logging.getLogger(__name__)


class FirewallError(GcpError):
    """The window could not be opened or closed; the message names what to fix."""


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
    runs: RunStatus | None = None,
) -> str | None:
    """Why RULE is a leftover that may be deleted now, or None to leave it."""
    run = _rule_run(rule.description)
    mine = environ.get("GITHUB_RUN_ID", "")
    if run and mine and run[0] == mine:
        attempt = int(environ.get("GITHUB_RUN_ATTEMPT", "1") or "1")
        if run[1] < attempt:
            return f"its run {run[0]} attempt {run[1]} is over (this is attempt {attempt})"
    elif run and runs is not None and runs.is_over(run[0]):
        return f"its run {run[0]} is over (GitHub says completed)"
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
    attempt of this same GitHub run (`ai-deploy-run=`), a rule of another run that GitHub
    says is completed (asked with GITHUB_TOKEN; see github_runs), or a rule without an expiry
    mark created more than OLDER_THAN ago. Best effort: a failure to list or delete is logged as
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
    runs = RunStatus(env)
    for rule in rules:
        why = None if rule.name == keep else _stale_because(rule, now, older_than, env, runs)
        if why is None:
            continue
        logger.warning("deleting leftover firewall rule %s: %s", rule.name, why)
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


@dataclass(frozen=True)
class SshWindow:
    """The open window: the rule's name and what it allows."""

    name: str
    project: str
    source_range: str
    target_tag: str
    network: str
    port: int


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
