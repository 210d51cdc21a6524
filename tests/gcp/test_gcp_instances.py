"""Instances found by label, name and network tag across zones (ai_deploy.gcp.instances), with
the real google-auth session against the loopback Compute fake; and inventories/prod.py
building its hosts from them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from google.api_core import exceptions as api_exceptions
from google.oauth2.credentials import Credentials as TokenCredentials

from ai_deploy.gcp import GcpError
from ai_deploy.gcp.instances import (
    Instance,
    deploy_targets,
    environment_filter,
    instance_filter,
    list_instances,
    pick_address,
    running_only,
    split_tag_terms,
)
from tests.fakes.gcp import FakeGcp
from tests.gcp.conftest import WorkloadIdentity

pytestmark = pytest.mark.gcp

REPO = Path(__file__).resolve().parents[2]
AI_SERVERS = instance_filter(label="role=ai-server")
AGGREGATED = r"/projects/[^/]+/aggregated/instances$"


@pytest.fixture
def fleet(gcp_fake: FakeGcp) -> FakeGcp:
    """Besides the fake's own ai-server-prod (asia-northeast3-a, tag ai-server, no labels):
    three ai-servers in three zones, the third stopped, a batch VM, and an empty zone."""
    gcp_fake.add_instance(
        "ai-server-1",
        "us-central1-a",
        labels={"role": "ai-server"},
        tags=["ai-server", "gpu"],
        nat_ip="203.0.113.11",
        internal_ip="10.128.0.11",
    )
    gcp_fake.add_instance(
        "ai-server-2",
        "asia-northeast3-b",
        labels={"role": "ai-server", "env": "prod"},
        tags=["ai-server"],
        nat_ip="203.0.113.12",
        internal_ip="10.128.0.12",
    )
    gcp_fake.add_instance(
        "ai-server-3",
        "europe-west4-a",
        labels={"role": "ai-server"},
        tags=["ai-server"],
        status="TERMINATED",
        nat_ip=None,
        internal_ip="10.164.0.3",
    )
    gcp_fake.add_instance("batch-1", "us-central1-a", labels={"role": "batch"}, tags=["gpu"])
    with gcp_fake.lock:
        gcp_fake.state.zones.append("us-east1-b")
    return gcp_fake


def _names(found: list[Instance]) -> list[tuple[str, str]]:
    return [(i.name, i.zone) for i in found]


def test_a_label_finds_its_instances_in_every_zone_sorted_by_name(
    fleet: FakeGcp, token_credentials: TokenCredentials
) -> None:
    found = list_instances(token_credentials, fleet.state.project, AI_SERVERS)

    assert _names(found) == [
        ("ai-server-1", "us-central1-a"),
        ("ai-server-2", "asia-northeast3-b"),
        ("ai-server-3", "europe-west4-a"),
    ]
    assert found[1] == Instance(
        name="ai-server-2",
        zone="asia-northeast3-b",
        status="RUNNING",
        external_ip="203.0.113.12",
        internal_ip="10.128.0.12",
        labels={"role": "ai-server", "env": "prod"},
        tags=("ai-server",),
    )
    (request,) = fleet.requests_to("GET", AGGREGATED)
    assert request.query["filter"] == ['(labels.role = "ai-server")']
    assert request.query["returnPartialSuccess"] == ["true"]
    assert request.authorization == f"Bearer {token_credentials.token}"


def test_every_page_is_followed_a_page_of_nothing_included(
    fleet: FakeGcp, token_credentials: TokenCredentials
) -> None:
    with fleet.lock:
        fleet.state.blank_aggregated_pages.add(1)

    found = list_instances(token_credentials, fleet.state.project, AI_SERVERS, page_size=1)

    assert [i.name for i in found] == ["ai-server-1", "ai-server-2", "ai-server-3"]
    pages = fleet.requests_to("GET", AGGREGATED)
    # One instance a page, and page 1 (a token, no instance) in between.
    assert len(pages) == 4
    assert all(p.query["maxResults"] == ["1"] for p in pages)
    assert "pageToken" not in pages[0].query
    assert len({p.query["pageToken"][0] for p in pages[1:]}) == 3


def test_given_zones_are_listed_one_by_one_across_pages(
    fleet: FakeGcp, token_credentials: TokenCredentials
) -> None:
    found = list_instances(
        token_credentials,
        fleet.state.project,
        "",
        zones=["us-central1-a", "us-east1-b", "us-central1-a"],
        page_size=1,
    )

    assert _names(found) == [("ai-server-1", "us-central1-a"), ("batch-1", "us-central1-a")]
    assert len(fleet.requests_to("GET", r"/zones/us-central1-a/instances$")) == 2
    assert len(fleet.requests_to("GET", r"/zones/us-east1-b/instances$")) == 1
    assert fleet.requests_to("GET", AGGREGATED) == []


def test_a_name_finds_that_instance_only(
    fleet: FakeGcp, token_credentials: TokenCredentials
) -> None:
    found = list_instances(
        token_credentials, fleet.state.project, instance_filter(name="ai-server-2")
    )

    assert _names(found) == [("ai-server-2", "asia-northeast3-b")]
    (request,) = fleet.requests_to("GET", AGGREGATED)
    assert request.query["filter"] == ['(name = "ai-server-2")']


def test_a_network_tag_is_matched_after_listing_not_sent_to_compute(
    fleet: FakeGcp, token_credentials: TokenCredentials
) -> None:
    project = fleet.state.project
    by_tag = list_instances(token_credentials, project, instance_filter(tag="gpu"))
    both = list_instances(token_credentials, project, instance_filter("role=ai-server", tag="gpu"))
    raw = list_instances(
        token_credentials, project, '(tags.items = "ai-server") AND (name = "ai-*")'
    )

    assert [i.name for i in by_tag] == ["ai-server-1", "batch-1"]
    assert [i.name for i in both] == ["ai-server-1"]
    assert [i.name for i in raw] == ["ai-server-1", "ai-server-2", "ai-server-3", "ai-server-prod"]
    sent = [r.query.get("filter") for r in fleet.requests_to("GET", AGGREGATED)]
    assert sent == [None, ['(labels.role = "ai-server")'], ['(name = "ai-*")']]


def test_a_tag_term_that_cannot_be_taken_out_safely_is_refused() -> None:
    with pytest.raises(GcpError, match=r"own `\(tags\.items"):
        split_tag_terms('(name = "a") OR (tags.items = "gpu")')
    with pytest.raises(GcpError, match=r"tags\.items"):
        split_tag_terms("tags.items = gpu")
    assert split_tag_terms('(tags.items = "gpu") AND (name = "a")') == ('(name = "a")', ("gpu",))


def test_an_unreachable_zone_is_an_error_that_names_it(
    fleet: FakeGcp, token_credentials: TokenCredentials
) -> None:
    fleet.set_zone_unreachable("europe-west4-a")

    with pytest.raises(GcpError, match=r"could not reach zone\(s\) europe-west4-a of project"):
        list_instances(token_credentials, fleet.state.project, AI_SERVERS, page_size=1)
    # Listing the other zones by name still works.
    found = list_instances(
        token_credentials, fleet.state.project, AI_SERVERS, zones=["us-central1-a"]
    )
    assert [i.name for i in found] == ["ai-server-1"]


@pytest.mark.parametrize(
    "page",
    [
        {
            "items": {"zones/us-east1-b": {"warning": {"code": "NO_RESULTS_ON_PAGE"}}},
            "unreachables": ["zones/us-east1-b"],
        },
        {"items": {"zones/us-east1-b": {"warning": {"code": "UNREACHABLE"}}}},
    ],
    ids=["in-unreachables", "as-a-zone-warning"],
)
def test_either_way_compute_reports_an_unreachable_zone_is_an_error(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials, page: dict[str, object]
) -> None:
    gcp_fake.inject("GET", AGGREGATED, status=200, body=page)
    with pytest.raises(GcpError, match=r"could not reach zone\(s\) us-east1-b of project"):
        list_instances(token_credentials, gcp_fake.state.project, AI_SERVERS)


def test_a_page_token_handed_out_twice_ends_the_listing(
    gcp_fake: FakeGcp, token_credentials: TokenCredentials
) -> None:
    looping = {"items": {}, "nextPageToken": "again"}
    gcp_fake.inject("GET", AGGREGATED, status=200, body=looping, times=5)
    with pytest.raises(GcpError, match="page token 'again' twice"):
        list_instances(token_credentials, gcp_fake.state.project, AI_SERVERS)
    assert len(gcp_fake.requests_to("GET", AGGREGATED)) == 2


def test_a_stopped_instance_is_listed_but_refused(
    fleet: FakeGcp, token_credentials: TokenCredentials
) -> None:
    found = list_instances(token_credentials, fleet.state.project, AI_SERVERS)
    running, stopped = running_only(found)

    assert [i.name for i in running] == ["ai-server-1", "ai-server-2"]
    assert [(i.name, i.status) for i in stopped] == [("ai-server-3", "TERMINATED")]
    with pytest.raises(GcpError, match="ai-server-3 in europe-west4-a is TERMINATED, not RUNNING"):
        pick_address(stopped[0], "internal")


def test_the_address_is_the_external_or_the_internal_one(
    fleet: FakeGcp, token_credentials: TokenCredentials
) -> None:
    fleet.add_instance("ai-server-4", "us-east1-b", labels={"role": "ai-server"}, nat_ip=None)
    found = {i.name: i for i in list_instances(token_credentials, fleet.state.project, AI_SERVERS)}

    assert pick_address(found["ai-server-1"], "external") == "203.0.113.11"
    assert pick_address(found["ai-server-1"], "internal") == "10.128.0.11"
    with pytest.raises(GcpError, match=r"ai-server-4 in us-east1-b has no external IP.*internal"):
        pick_address(found["ai-server-4"], "external")
    assert pick_address(found["ai-server-4"], "internal").startswith("10.128.0.")
    no_nic = Instance("bare", "us-east1-b", "RUNNING", None, None)
    with pytest.raises(GcpError, match="bare in us-east1-b has no internal IP"):
        pick_address(no_nic, "internal")
    with pytest.raises(GcpError, match=r"address mode 'public'.*AI_DEPLOY_ADDRESS"):
        pick_address(found["ai-server-1"], "public")


def test_rate_limits_and_server_errors_are_retried_other_errors_are_not(
    fleet: FakeGcp, token_credentials: TokenCredentials
) -> None:
    fleet.inject("GET", AGGREGATED, status=429, reason="rateLimitExceeded")
    fleet.inject("GET", AGGREGATED, status=503, reason="backendError")
    fleet.inject("GET", AGGREGATED, status=403, reason="rateLimitExceeded", message="Rate Limit")

    found = list_instances(token_credentials, fleet.state.project, AI_SERVERS)

    assert [i.name for i in found] == ["ai-server-1", "ai-server-2", "ai-server-3"]
    assert len(fleet.requests_to("GET", AGGREGATED)) == 4
    fleet.inject("GET", AGGREGATED, status=403, reason="forbidden", message="Required permission")
    with pytest.raises(api_exceptions.Forbidden, match="Required permission"):
        list_instances(token_credentials, fleet.state.project, AI_SERVERS)
    assert len(fleet.requests_to("GET", AGGREGATED)) == 5


def test_a_filter_compute_cannot_read_is_its_bad_request(
    fleet: FakeGcp, token_credentials: TokenCredentials
) -> None:
    with pytest.raises(api_exceptions.BadRequest, match="filter"):
        list_instances(token_credentials, fleet.state.project, "(labels.role = ")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"label": "Role=AI"}, "instance label 'Role=AI' is not KEY=VALUE"),
        ({"label": "role"}, "instance label 'role' is not KEY=VALUE"),
        ({"label": "role="}, "labels.KEY:\\*"),
        ({"label": 'role=a") OR (name = "x'}, "is not KEY=VALUE"),
        ({"name": "AI_server"}, "instance name 'AI_server' is not valid"),
        ({"tag": "gpu-"}, "network tag 'gpu-' is not valid"),
        ({}, "give a label, a name or a network tag"),
    ],
)
def test_bad_filter_values_are_refused_by_name(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(GcpError, match=message):
        instance_filter(**kwargs)


def test_the_environment_names_one_filter() -> None:
    assert environment_filter({}) is None
    assert environment_filter({"GCP_INSTANCE_FILTER": "name = x"}) == "name = x"
    assert environment_filter({"AI_DEPLOY_INSTANCES_LABEL": "role=ai-server"}) == AI_SERVERS
    with pytest.raises(GcpError, match="not both"):
        environment_filter({"GCP_INSTANCE_FILTER": "name = x", "AI_DEPLOY_INSTANCES_LABEL": "a=b"})


def test_deploy_targets_refuse_what_would_deploy_to_the_wrong_hosts(
    fleet: FakeGcp, token_credentials: TokenCredentials
) -> None:
    project = fleet.state.project
    with pytest.raises(GcpError, match="empty instance filter"):
        deploy_targets(token_credentials, project, "  ")
    with pytest.raises(
        GcpError, match=r"no RUNNING instance .* \(listed, not RUNNING: ai-server-3"
    ):
        deploy_targets(token_credentials, project, instance_filter(name="ai-server-3"))
    fleet.add_instance("ai-server-1", "asia-northeast3-b", labels={"role": "ai-server"})
    with pytest.raises(GcpError, match="more than one running instance is named ai-server-1"):
        deploy_targets(token_credentials, project, AI_SERVERS)


_LOAD_INVENTORY = textwrap.dedent(
    """
    import json, sys
    from ai_deploy.inventory import RemoteError, host_settings
    try:
        hosts = host_settings(sys.argv[1])
    except RemoteError as exc:
        print(json.dumps({"error": str(exc)}))
    else:
        print(json.dumps({name: data.get("ssh_hostname") for name, data in hosts.items()}))
    """
)


def _inventory_hosts(tmp_path: Path, **env: str) -> tuple[dict[str, str], str]:
    """Load inventories/prod.py as `ai-deploy` does, in a child (pyinfra's CLI patches the
    standard library with gevent); its hosts' ssh_hostname by name, and its stderr."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AI_DEPLOY_HOSTS")}
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_INVENTORY, str(REPO / "inventories" / "prod.py")],
        cwd=tmp_path,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_the_inventory_hosts_are_the_running_instances_by_name(
    fleet: FakeGcp, github_workload_identity: WorkloadIdentity, tmp_path: Path
) -> None:
    github_workload_identity()
    project = fleet.state.project

    hosts, stderr = _inventory_hosts(
        tmp_path, GCP_PROJECT_ID=project, AI_DEPLOY_INSTANCES_LABEL="role=ai-server"
    )
    assert hosts == {"ai-server-1": "203.0.113.11", "ai-server-2": "203.0.113.12"}
    assert "ai-server-3 in europe-west4-a is TERMINATED, not RUNNING" in stderr

    hosts, _ = _inventory_hosts(
        tmp_path,
        GCP_PROJECT_ID=project,
        GCP_INSTANCE_FILTER='(labels.env = "prod") (tags.items = "ai-server")',
        AI_DEPLOY_ADDRESS="internal",
    )
    assert hosts == {"ai-server-2": "10.128.0.12"}

    failed, _ = _inventory_hosts(
        tmp_path, GCP_PROJECT_ID=project, AI_DEPLOY_INSTANCES_LABEL="role=nothing"
    )
    assert "no RUNNING instance of project dojangkok-ai matches" in failed["error"]
