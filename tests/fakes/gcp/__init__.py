"""A stateful loopback server that speaks the Google APIs' wire formats the deploy uses.

One `http.server.ThreadingHTTPServer` on 127.0.0.1 serves, under distinct path prefixes:

- ``/compute/v1/...``: Compute Engine REST (firewalls insert/get/delete/list, instances get,
  list, aggregatedList and setMetadata, global and zone operations get/wait), with the real
  error body shape ``{"error": {"code", "message", "errors": [{"reason", ...}], "status"}}``;
- ``/github/oidc``: the GitHub Actions OIDC token URL (checks the bearer request token);
- ``/sts/v1/token``: the Security Token Service token exchange;
- ``/iam/v1/projects/-/serviceAccounts/SA:generateAccessToken``: IAM Credentials;
- ``/oauth2/token``: the OAuth token endpoint (service-account JWT and refresh-token grants);
- ``/oslogin/v1/users/...``: OS Login import/delete of SSH public keys.

Compute and OS Login calls need ``Authorization: Bearer <token>`` with a token this server
issued for the cloud-platform scope (an STS token asked for with the IAM scope only is
refused, as Google refuses it). Every request is recorded; faults (status + error body, a hook
that runs first, a delay) and slow or failing operations can be injected per method and path
pattern. Mutations return operations whose effect is applied when the operation is DONE, so
a client that does not wait for its operation sees the old state.

Modules: server (HTTP server, routes, request log, faults; `FakeGcp`, `running_fake`), state
(`FakeState` and the base the API parts share), wire (constants, request record, error body),
operations, compute, instance_lists (instances.list and aggregatedList), sts (GitHub OIDC +
STS), iam, oauth (token endpoint, bearer check), oslogin.
"""

from tests.fakes.gcp.oauth import self_signed_jwt_claims
from tests.fakes.gcp.operations import OperationPlan
from tests.fakes.gcp.server import FakeGcp, Fault, running_fake, write_json
from tests.fakes.gcp.state import FakeInstance, FakeOperation, FakeState
from tests.fakes.gcp.wire import (
    ACCESS_TOKEN_TYPE,
    CLOUD_PLATFORM_SCOPE,
    GOOGLE_LINK_BASE,
    IAM_SCOPE,
    JWT_BEARER_GRANT,
    JWT_TOKEN_TYPE,
    TOKEN_EXCHANGE_GRANT,
    ApiError,
    RecordedRequest,
    google_error_body,
    rfc3339,
)

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "CLOUD_PLATFORM_SCOPE",
    "GOOGLE_LINK_BASE",
    "IAM_SCOPE",
    "JWT_BEARER_GRANT",
    "JWT_TOKEN_TYPE",
    "TOKEN_EXCHANGE_GRANT",
    "ApiError",
    "FakeGcp",
    "FakeInstance",
    "FakeOperation",
    "FakeState",
    "Fault",
    "OperationPlan",
    "RecordedRequest",
    "google_error_body",
    "rfc3339",
    "running_fake",
    "self_signed_jwt_claims",
    "write_json",
]
