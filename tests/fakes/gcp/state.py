"""The fake's state (tests read and change it directly, under `FakeGcp.lock`) and `FakeCore`,
the base every API part of `FakeGcp` builds on: what they all reach through `self`."""

from __future__ import annotations

import base64
import itertools
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.gcp.wire import ApiError, RecordedRequest


@dataclass
class FakeOperation:
    body: dict[str, Any]
    remaining_polls: int
    effect: Callable[[], None] | None
    error: dict[str, Any] | None
    zone: str | None
    # time.monotonic() values: when it turns RUNNING, and when DONE (once no polls remain)
    running_at: float = 0.0
    done_at: float = 0.0
    # time.monotonic() values: when it was started, and when it was in fact seen DONE
    started_at: float = 0.0
    finished_at: float | None = None


@dataclass
class FakeInstance:
    """A VM of the fake (its primary one, or one added); fields mirror what instances.get
    returns."""

    name: str = "ai-server-prod"
    zone: str = "asia-northeast3-a"
    nat_ip: str | None = "10.201.0.10"
    internal_ip: str = "10.178.0.2"
    network: str = "default"
    tags: list[str] = field(default_factory=lambda: ["ai-server"])
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    fingerprint: str = field(
        default_factory=lambda: base64.b64encode(secrets.token_bytes(8)).decode()
    )
    status: str = "RUNNING"
    # Its own published host keys (algorithm -> blob); None: the fake-wide ones (guest.py).
    guest_host_keys: dict[str, str] | None = None

    def new_fingerprint(self) -> None:
        self.fingerprint = base64.b64encode(secrets.token_bytes(8)).decode()


@dataclass
class FakeState:
    """Everything the fake holds; tests read and change it directly (under `FakeGcp.lock`)."""

    project: str = "dojangkok-ai"
    project_number: str = "123456789012"
    pool: str = "github-pool"
    provider: str = "github-provider"
    service_account: str = "github-actions@dojangkok-ai.iam.gserviceaccount.com"
    github_request_token: str = "gh-request-token"
    # GitHub's REST API for workflow runs: run id -> status ("completed", "in_progress", ...)
    github_repository: str = "dojangkok/ai-server"
    github_token: str = "ghs-run-token"
    github_runs: dict[str, str] = field(default_factory=dict)
    firewalls: dict[str, dict[str, Any]] = field(default_factory=dict)
    instance: FakeInstance = field(default_factory=FakeInstance)
    # More VMs (instance_lists.py): listed, and found by instances.get too.
    other_instances: list[FakeInstance] = field(default_factory=list)
    # The project's zones besides those of its instances; aggregatedList names each.
    zones: list[str] = field(default_factory=lambda: ["asia-northeast3-b", "us-central1-a"])
    unreachable_zones: set[str] = field(default_factory=set)
    # aggregatedList pages (0-based) answered with no instance and a token for the rest.
    blank_aggregated_pages: set[int] = field(default_factory=set)
    operations: dict[str, FakeOperation] = field(default_factory=dict)
    # access token -> scopes and who it belongs to
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    # OS Login: user email -> fingerprint -> key record
    oslogin_keys: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    oidc_tokens: set[str] = field(default_factory=set)
    refresh_tokens: set[str] = field(default_factory=set)
    firewall_page_size: int = 500

    def all_instances(self) -> list[FakeInstance]:
        return [self.instance, *self.other_instances]

    def instance_named(self, name: str | None) -> FakeInstance:
        """The instance called NAME (in any zone); the primary one for None. KeyError when
        the fake has none of that name."""
        if name is None:
            return self.instance
        for inst in self.all_instances():
            if inst.name == name:
                return inst
        raise KeyError(f"the fake has no instance {name!r}")

    @property
    def audience(self) -> str:
        return (
            f"//iam.googleapis.com/projects/{self.project_number}/locations/global/"
            f"workloadIdentityPools/{self.pool}/providers/{self.provider}"
        )

    @property
    def workload_identity_provider(self) -> str:
        return self.audience.removeprefix("//iam.googleapis.com/")


class FakeCore:
    """What the API parts share; `FakeGcp` (tests/fakes/gcp/server.py) sets these up."""

    state: FakeState
    lock: threading.RLock
    requests: list[RecordedRequest]
    listeners: list[Callable[[str], None]]
    _ids: itertools.count[int]

    @property
    def url(self) -> str:
        raise NotImplementedError

    def _notify(self, what: str) -> None:
        for listener in list(self.listeners):
            listener(what)

    def _check_project(self, project: str) -> None:
        if project not in (self.state.project, self.state.project_number):
            raise ApiError(404, "notFound", f"The resource 'projects/{project}' was not found")
