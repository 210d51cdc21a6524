"""Compute Engine instances found by label, name or network tag, in every zone or in some.

Every zone: `instances.aggregatedList` with `returnPartialSuccess=true`; a zone Compute could
not reach is a GcpError naming it. Given zones: `instances.list` in each. Every page is read
(one may hold no instance), each read retried on 429, 5xx and rate limits. AuthorizedSession
calls the Compute endpoint: the typed aggregatedList request lacks returnPartialSuccess."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.auth.credentials import Credentials
from google.auth.transport.requests import AuthorizedSession

from ai_deploy.gcp import GcpError
from ai_deploy.gcp.operations import CALL_TIMEOUT, compute_client_options, retry_transient

FILTER_ENV_VAR = "GCP_INSTANCE_FILTER"
LABEL_ENV_VAR = "AI_DEPLOY_INSTANCES_LABEL"
ADDRESS_MODES = ("external", "internal")

_LABEL_RE = re.compile(r"([a-z][a-z0-9_-]{0,62})=([a-z0-9_-]{1,63})")
# Instance names and network tags follow the same rule (RFC 1035 labels).
_NAME_RE = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_ZONE_RE = re.compile(r"[a-z][-a-z0-9]{0,62}")
_TAG_TERM_RE = re.compile(r'\(\s*tags\.items\s*[=:]\s*"?([a-z][-a-z0-9]*)"?\s*\)')


@dataclass(frozen=True)
class Instance:
    """One VM as listed: where it is, whether it runs, and how to reach it."""

    name: str
    zone: str  # short name, e.g. us-central1-a
    status: str  # RUNNING, TERMINATED, STAGING, ...
    external_ip: str | None  # networkInterfaces[0].accessConfigs[].natIP
    internal_ip: str | None  # networkInterfaces[0].networkIP
    labels: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()


def instance_filter(
    label: str | None = None, name: str | None = None, tag: str | None = None
) -> str:
    """A Compute list filter for instances with each of LABEL (`KEY=VALUE`), NAME and network
    TAG given, e.g. `(labels.role = "ai-server") (tags.items = "ai-server")`. Compute's filter
    cannot be relied on for the repeated `tags.items`: list_instances sends the filter without
    the tag term and keeps the listed instances that carry TAG. GcpError for a bad value."""
    terms: list[str] = []
    if label is not None:
        match = _LABEL_RE.fullmatch(label.strip())
        if not match:
            raise GcpError(
                f"instance label {label!r} is not KEY=VALUE in GCP label characters (a-z, 0-9, "
                "_ and -, 1-63 each, the key starting with a letter), e.g. role=ai-server; "
                "to match any value, set GCP_INSTANCE_FILTER='labels.KEY:*' instead"
            )
        terms.append(f'labels.{match[1]} = "{match[2]}"')
    for what, value, term in (("instance name", name, "name"), ("network tag", tag, "tags.items")):
        if value is None:
            continue
        if not _NAME_RE.fullmatch(value):
            raise GcpError(
                f"{what} {value!r} is not valid: a lowercase letter, then up to 62 lowercase "
                "letters, digits or '-', not ending with '-'"
            )
        terms.append(f'{term} = "{value}"')
    if not terms:
        raise GcpError("instance_filter: give a label, a name or a network tag to match")
    return " ".join(f"({term})" for term in terms)


def environment_filter(environ: Mapping[str, str]) -> str | None:
    """GCP_INSTANCE_FILTER (a Compute filter), else a filter for AI_DEPLOY_INSTANCES_LABEL
    (KEY=VALUE); None when neither is set, GcpError when both are (which one is meant?)."""
    given, label = environ.get(FILTER_ENV_VAR, "").strip(), environ.get(LABEL_ENV_VAR, "").strip()
    if given and label:
        raise GcpError(f"set {FILTER_ENV_VAR} or {LABEL_ENV_VAR}, not both")
    return instance_filter(label=label) if label else (given or None)


def split_tag_terms(filter: str) -> tuple[str, tuple[str, ...]]:
    """FILTER without its `(tags.items = "TAG")` terms, and those TAGs; a tag term elsewhere
    than ANDed in parentheses is a GcpError (dropping it would widen the match)."""
    text = filter.strip()
    tags = tuple(_TAG_TERM_RE.findall(text))
    rest = " ".join(_TAG_TERM_RE.sub(" ", text).split())
    rest = re.sub(r"^AND\b\s*|\s*\bAND$", "", re.sub(r"\bAND\s+AND\b", "AND", rest))
    if "tags." in rest or (tags and re.search(r"\bOR\b", rest)):
        raise GcpError(
            f"instance filter {filter!r}: a network tag can only be matched as its own "
            '`(tags.items = "TAG")` term ANDed with the others, e.g. '
            '(labels.role = "ai-server") (tags.items = "ai-server")'
        )
    return rest, tags


def list_instances(
    credentials: Credentials,
    project: str,
    filter: str,
    *,
    zones: Sequence[str] | None = None,
    page_size: int | None = None,
) -> list[Instance]:
    """PROJECT's instances matching FILTER (a Compute list filter; "" matches all), in every
    zone or only in ZONES, sorted by name, then zone; PAGE_SIZE is maxResults (1-500). GcpError
    names unreachable zones or a malformed zone; API errors propagate unchanged."""
    server_filter, tags = split_tag_terms(filter)
    params = {"filter": server_filter} if server_filter else {}
    if page_size is not None:  # Compute takes 0-500 and answers 400 for anything else
        params["maxResults"] = str(page_size)
    if bad := [z for z in zones or () if not _ZONE_RE.fullmatch(z)]:
        raise GcpError(f"zone {bad[0]!r} is not a zone name such as us-central1-a")
    found: list[Instance] = []
    unreachable: set[str] = set()
    with AuthorizedSession(credentials) as session:
        if zones is None:
            path = f"projects/{project}/aggregated/instances"
            for page in _pages(session, path, {**params, "returnPartialSuccess": "true"}):
                unreachable.update(_short(scope) for scope in page.get("unreachables") or ())
                for scope, scoped in (page.get("items") or {}).items():
                    # A zone without a match carries a NO_RESULTS_ON_PAGE warning: skipped.
                    if (scoped.get("warning") or {}).get("code") == "UNREACHABLE":
                        unreachable.add(_short(scope))
                    found.extend(_instance(r, scope) for r in scoped.get("instances") or ())
        for zone in dict.fromkeys(zones or ()):
            for page in _pages(session, f"projects/{project}/zones/{zone}/instances", params):
                found.extend(_instance(r, zone) for r in page.get("items") or ())
    if unreachable:
        raise GcpError(
            f"Compute could not reach zone(s) {', '.join(sorted(unreachable))} of project "
            f"{project}: their instances are unknown, so the list would be incomplete; try "
            "again later, or list only other zones"
        )
    unique = {(i.name, i.zone): i for i in found if all(tag in i.tags for tag in tags)}
    return [unique[key] for key in sorted(unique)]


def running_only(instances: Sequence[Instance]) -> tuple[list[Instance], list[Instance]]:
    """INSTANCES split into those RUNNING (deployable) and the others (listed only)."""
    running = [i for i in instances if i.status == "RUNNING"]
    return running, [i for i in instances if i.status != "RUNNING"]


def not_running_reason(instance: Instance) -> str:
    """Why INSTANCE, whose status is not RUNNING, is listed but not deployed to."""
    return (
        f"instance {instance.name} in {instance.zone} is {instance.status}, not RUNNING: "
        f"listed, not deployable; start it (gcloud compute instances start {instance.name} "
        f"--zone {instance.zone}) or leave it out of the filter"
    )


def pick_address(instance: Instance, mode: str) -> str:
    """INSTANCE's address for MODE: "external" (its NAT IP) or "internal" (its VPC IP);
    GcpError naming the instance when it is not RUNNING or has no such address."""
    if mode not in ADDRESS_MODES:
        raise GcpError(
            f"address mode {mode!r}: set AI_DEPLOY_ADDRESS to external (NAT IPs, the "
            "default) or internal (VPC IPs, from inside the VPC)"
        )
    if instance.status != "RUNNING":
        raise GcpError(not_running_reason(instance))
    address = instance.external_ip if mode == "external" else instance.internal_ip
    if address:
        return address
    where = f"instance {instance.name} in {instance.zone}"
    if mode == "external":
        raise GcpError(
            f"{where} has no external IP: give it an access config (an external IP), or set "
            "AI_DEPLOY_ADDRESS=internal when deploying from inside the VPC"
        )
    raise GcpError(f"{where} has no internal IP: check its network interfaces")


def deploy_targets(
    credentials: Credentials, project: str, filter: str, *, mode: str = "external"
) -> tuple[dict[str, str], list[str]]:
    """The RUNNING instances matching FILTER (instance name -> MODE address), and why each
    other one listed is refused. GcpError when FILTER is empty (it would match every VM), none
    runs, one has no MODE address, or two share a name (host names must be unique)."""
    if not filter.strip():
        raise GcpError(f"an empty instance filter matches every VM: set {FILTER_ENV_VAR}")
    running, stopped = running_only(list_instances(credentials, project, filter))
    if not running:
        listed = f" (listed, not RUNNING: {', '.join(i.name for i in stopped)})" if stopped else ""
        raise GcpError(
            f"no RUNNING instance of project {project} matches {filter!r}{listed}: check the "
            "filter or label, and that the VM is started"
        )
    addresses: dict[str, str] = {}
    for inst in running:
        if inst.name in addresses:
            raise GcpError(
                f"more than one running instance is named {inst.name}: host names must be "
                "unique; narrow the filter (with a label or a zone)"
            )
        addresses[inst.name] = pick_address(inst, mode)
    return addresses, [not_running_reason(i) for i in stopped]


def _pages(
    session: AuthorizedSession, path: str, params: Mapping[str, str]
) -> Iterator[dict[str, Any]]:
    """Each page of the list at PATH, following nextPageToken."""
    token, seen = "", set[str]()
    while True:
        query = {**params, "pageToken": token} if token else dict(params)
        page = retry_transient(f"list {path}", partial(_get, session, path, query))
        yield page
        token = str(page.get("nextPageToken") or "")
        if not token:
            return
        if token in seen:  # the same page handed out again would never end
            raise GcpError(f"listing {path}: Compute returned page token {token!r} twice")
        seen.add(token)


def _get(session: AuthorizedSession, path: str, params: Mapping[str, str]) -> dict[str, Any]:
    endpoint = compute_client_options().api_endpoint or "https://compute.googleapis.com"
    if "://" not in endpoint:  # as the Compute clients read it: https unless a scheme is given
        endpoint = f"https://{endpoint}"
    response = session.get(f"{endpoint}/compute/v1/{path}", params=params, timeout=CALL_TIMEOUT)
    if response.status_code >= 400:  # Google's error body: the exception by status, its reasons
        raise api_exceptions.from_http_response(response)
    return response.json()  # type: ignore[no-any-return]


def _short(link: str) -> str:  # `zones/us-central1-a` or a zone's URL -> `us-central1-a`
    return link.rstrip("/").rsplit("/", 1)[-1]


def _instance(resource: Mapping[str, Any], zone: str) -> Instance:
    nic = (resource.get("networkInterfaces") or [{}])[0]
    configs = nic.get("accessConfigs") or ()
    return Instance(
        name=str(resource.get("name", "")),
        zone=_short(str(resource.get("zone") or zone)),
        status=str(resource.get("status", "")),
        external_ip=next((str(c["natIP"]) for c in configs if c.get("natIP")), None),
        internal_ip=nic.get("networkIP") or None,
        labels={str(k): str(v) for k, v in (resource.get("labels") or {}).items()},
        tags=tuple(str(t) for t in (resource.get("tags") or {}).get("items") or ()),
    )
