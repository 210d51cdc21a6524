"""instances.aggregatedList and instances.list: the project's VMs across zones, filtered and
paged as Compute documents it.

- `filter`: one `FIELD OP VALUE` expression, or several each in parentheses, ANDed unless
  joined by OR (OR binds tighter, as in AIP-160). OP is `=`, `!=` or `:` (`labels.KEY:*`: the
  label is set); VALUE bare or double-quoted, `*` a wildcard. Or one regular-expression term
  `FIELD eq|ne REGEX` (RE2 full match); the two kinds cannot be mixed. Fields: name, status,
  zone and labels.KEY. Any other field (tags.items included) answers 400, so a client that
  leans on a field this fake does not model is caught.
- `maxResults` (0-500; 0 or none means 500) and `pageToken`: a page holds at most maxResults
  instances; a token is good for the same filter only. aggregatedList pages listed in
  `state.blank_aggregated_pages` hold no instance at all and still give a token, as the real
  one may.
- aggregatedList `items` has a "zones/ZONE" entry for every zone of the project: `instances`
  when some are on this page, else a `warning` NO_RESULTS_ON_PAGE. A zone in
  `state.unreachable_zones` has a warning UNREACHABLE and is named in `unreachables` when the
  call has returnPartialSuccess=true; without it the call fails (503).
- instances.list in an unreachable zone answers 503; in a zone the project lacks, 400.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from tests.fakes.gcp.compute import instance_resource
from tests.fakes.gcp.state import FakeCore, FakeInstance
from tests.fakes.gcp.wire import GOOGLE_LINK_BASE, ApiError, RecordedRequest

Resource = dict[str, Any]
Matcher = Callable[[Resource], bool]

_COMPARISON = re.compile(r'\s*([a-zA-Z][\w.-]*)\s*(!=|=|:)\s*("[^"]*"|[^\s()"]+)\s*')
_REGEX_TERM = re.compile(r"\s*([a-zA-Z][\w.-]*)\s+(eq|ne)\s+(?:\"(.*)\"|'(.*)'|(\S+))\s*")
_LABEL_FIELD = re.compile(r"labels\.([a-z][a-z0-9_-]*)")


class InstanceListsApi(FakeCore):
    """Listing the project's instances: the default one and those tests add."""

    # -- test controls -------------------------------------------------------------------------

    def add_instance(
        self,
        name: str,
        zone: str,
        *,
        labels: dict[str, str] | None = None,
        tags: list[str] | None = None,
        status: str = "RUNNING",
        nat_ip: str | None = "",
        internal_ip: str = "",
    ) -> FakeInstance:
        """Create a VM straight in the state; NAT_IP None: no access config (no external IP).
        Addresses default to ones unique to this fake."""
        with self.lock:
            n = len(self.state.other_instances) + 11
            inst = FakeInstance(
                name=name,
                zone=zone,
                labels=dict(labels or {}),
                tags=list(tags or []),
                status=status,
                nat_ip=f"203.0.113.{n}" if nat_ip == "" else nat_ip,
                internal_ip=internal_ip or f"10.128.0.{n}",
            )
            self.state.other_instances.append(inst)
        return inst

    def set_zone_unreachable(self, zone: str, unreachable: bool = True) -> None:
        """Make ZONE unreachable for Compute's lists (or reachable again)."""
        with self.lock:
            if unreachable:
                self.state.unreachable_zones.add(zone)
            else:
                self.state.unreachable_zones.discard(zone)

    # -- handlers ------------------------------------------------------------------------------

    def _project_zones(self) -> list[str]:
        zones = {*self.state.zones, *(i.zone for i in self.state.all_instances())}
        return sorted(zones)

    def _matching(self, request: RecordedRequest, project: str) -> list[Resource]:
        """The project's instances (as resources) matching the request's filter, by zone, then
        name."""
        matches = parse_filter(_param(request, "filter"))
        found = [instance_resource(project, i) for i in self.state.all_instances()]
        return sorted((r for r in found if matches(r)), key=lambda r: (_last(r["zone"]), r["name"]))

    def _instances_aggregated_list(
        self, request: RecordedRequest, project: str
    ) -> tuple[int, dict[str, Any]]:
        self._check_project(project)
        partial = _param(request, "returnPartialSuccess").lower() == "true"
        unreachable = sorted(self.state.unreachable_zones & set(self._project_zones()))
        if unreachable and not partial:
            raise ApiError(
                503,
                "backendError",
                f"Some scopes are unreachable: {', '.join(unreachable)}. Set "
                "returnPartialSuccess to get the results of the others.",
            )
        found = [r for r in self._matching(request, project) if _last(r["zone"]) not in unreachable]
        offset, number = _read_token(request)
        if number in self.state.blank_aggregated_pages:
            on_page, next_offset = [], offset
        else:
            on_page = found[offset : offset + _page_size(request)]
            next_offset = offset + len(on_page)
        items: dict[str, Any] = {}
        for zone in self._project_zones():
            scope = f"zones/{zone}"
            here = [r for r in on_page if _last(r["zone"]) == zone]
            if here:
                items[scope] = {"instances": here}
            elif zone in unreachable:
                items[scope] = {"warning": _warning("UNREACHABLE", scope, "is unreachable")}
            else:
                items[scope] = {"warning": _warning("NO_RESULTS_ON_PAGE", scope, "has no results")}
        reply: dict[str, Any] = {
            "kind": "compute#instanceAggregatedList",
            "id": f"projects/{project}/aggregated/instances",
            "items": items,
            "selfLink": f"{GOOGLE_LINK_BASE}projects/{project}/aggregated/instances",
        }
        if unreachable:
            reply["unreachables"] = [f"zones/{z}" for z in unreachable]
        if next_offset < len(found):
            reply["nextPageToken"] = _token(request, next_offset, number + 1)
        return 200, reply

    def _instances_list(
        self, request: RecordedRequest, project: str, zone: str
    ) -> tuple[int, dict[str, Any]]:
        self._check_project(project)
        if zone not in self._project_zones():
            message = f"Invalid value for field 'zone': '{zone}'. Unknown zone."
            raise ApiError(400, "invalid", message)
        if zone in self.state.unreachable_zones:
            raise ApiError(503, "backendError", f"The zone 'zones/{zone}' is unreachable.")
        found = [r for r in self._matching(request, project) if _last(r["zone"]) == zone]
        offset, number = _read_token(request)
        page = found[offset : offset + _page_size(request)]
        link = f"{GOOGLE_LINK_BASE}projects/{project}/zones/{zone}/instances"
        reply: dict[str, Any] = {
            "kind": "compute#instanceList",
            "id": f"projects/{project}/zones/{zone}/instances",
            "selfLink": link,
        }
        if page:
            reply["items"] = page
        if offset + len(page) < len(found):
            reply["nextPageToken"] = _token(request, offset + len(page), number + 1)
        return 200, reply


def _param(request: RecordedRequest, name: str) -> str:
    return (request.query.get(name) or [""])[0]


def _last(link: str) -> str:
    return link.rsplit("/", 1)[-1]


def _warning(code: str, scope: str, what: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": f"There are no results for scope '{scope}' on this page."
        if code == "NO_RESULTS_ON_PAGE"
        else f"Scope '{scope}' {what}.",
        "data": [{"key": "scope", "value": scope}],
    }


def _page_size(request: RecordedRequest) -> int:
    raw = _param(request, "maxResults") or "500"
    if not raw.isdigit() or int(raw) > 500:
        raise ApiError(
            400, "invalid", f"Invalid value for field 'maxResults': '{raw}'. Must be 0 to 500."
        )
    return int(raw) or 500


def _filter_digest(request: RecordedRequest) -> str:
    return hashlib.sha256(_param(request, "filter").encode()).hexdigest()[:12]


def _token(request: RecordedRequest, offset: int, number: int) -> str:
    data = json.dumps({"o": offset, "n": number, "f": _filter_digest(request)})
    return base64.urlsafe_b64encode(data.encode()).decode()


def _read_token(request: RecordedRequest) -> tuple[int, int]:
    """(offset, page number) from pageToken; (0, 0) without one; 400 for a token this fake did
    not give for this filter."""
    raw = _param(request, "pageToken")
    if not raw:
        return 0, 0
    try:
        data = json.loads(base64.urlsafe_b64decode(raw.encode()))
        if data["f"] != _filter_digest(request):
            raise ValueError("another filter")
        return int(data["o"]), int(data["n"])
    except (ValueError, KeyError, TypeError):
        raise ApiError(400, "invalid", f"Invalid value for field 'pageToken': '{raw}'.") from None


def parse_filter(expression: str) -> Matcher:
    """A predicate on instance resources for Compute's list filter EXPRESSION; ApiError 400
    when this fake cannot read it."""
    text = expression.strip()
    if not text:
        return lambda resource: True
    regex = _REGEX_TERM.fullmatch(text)
    if regex:
        field_name, op, *values = regex.groups()
        pattern = next(v for v in values if v is not None)
        getter = _field(field_name, expression)
        return lambda r: (re.fullmatch(pattern, getter(r) or "") is not None) == (op == "eq")
    if "(" not in text:
        return _comparison(text, expression)
    groups: list[list[Matcher]] = []
    joined_by_or = False
    rest = text
    while rest:
        if rest.startswith("("):
            end = _closing(rest, expression)
            term = parse_filter(rest[1:end])
            if joined_by_or and groups:
                groups[-1].append(term)
            else:
                groups.append([term])
            joined_by_or = False
            rest = rest[end + 1 :].lstrip()
        elif word := re.match(r"(AND|OR)\s+", rest):
            joined_by_or = word[1] == "OR"
            rest = rest[word.end() :]
        else:
            raise _invalid(expression)
    return lambda r: all(any(term(r) for term in group) for group in groups)


def _closing(text: str, expression: str) -> int:
    depth, quoted = 0, False
    for i, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "()":
            depth += 1 if char == "(" else -1
            if depth == 0:
                return i
    raise _invalid(expression)


def _comparison(text: str, expression: str) -> Matcher:
    match = _COMPARISON.fullmatch(text)
    if not match:
        raise _invalid(expression)
    field_name, op, raw = match.groups()
    value = raw[1:-1] if raw.startswith('"') else raw
    getter = _field(field_name, expression)
    if op == ":" and value == "*":
        return lambda r: getter(r) is not None

    def equal(resource: Resource) -> bool:
        actual = getter(resource)
        return actual is not None and fnmatch.fnmatchcase(actual, value)

    return (lambda r: not equal(r)) if op == "!=" else equal


def _field(name: str, expression: str) -> Callable[[Resource], str | None]:
    if name in ("name", "status"):
        return lambda r: r.get(name)
    if name == "zone":
        return lambda r: _last(r["zone"])
    label = _LABEL_FIELD.fullmatch(name)
    if label:
        return lambda r: (r.get("labels") or {}).get(label[1])
    raise ApiError(
        400,
        "invalid",
        f"Invalid value for field 'filter': '{expression}'. The fake Compute server does not "
        f"filter on field '{name}'.",
    )


def _invalid(expression: str) -> ApiError:
    return ApiError(400, "invalid", f"Invalid value for field 'filter': '{expression}'.")
