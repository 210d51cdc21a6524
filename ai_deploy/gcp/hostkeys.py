"""The instance's SSH host keys as its guest agent publishes them (guest attributes, namespace
`hostkeys/`, read with instances.getGuestAttributes exactly as `gcloud compute ssh` does), and
the known_hosts lines that pin them for one run.

Guest attributes are off unless the instance (or project) metadata has
`enable-guest-attributes=TRUE`; then the API answers 404 or an empty list, which is reported as
"not published" (None), never as an error, so the caller can apply its fallback setting.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the Compute client loads for seconds: only a read imports it
    from google.auth.credentials import Credentials

HOSTKEYS_QUERY_PATH = "hostkeys/"
# The IAM permission instances.getGuestAttributes needs (without it the keys are not pinned).
PERMISSION = "compute.instances.getGuestAttributes"
# Instances whose host keys are read at once.
MAX_READERS = 16
ENABLE_HINT = (
    "to have the guest agent publish them, enable guest attributes with gcloud compute "
    "instances add-metadata {instance} --zone {zone} --project {project} "
    "--metadata enable-guest-attributes=TRUE"
)


@dataclass(frozen=True)
class HostKey:
    """One public host key: its algorithm (`ssh-ed25519`, `ecdsa-sha2-nistp256`, ...) and
    its base64 blob."""

    key_type: str
    blob: str

    @property
    def fingerprint(self) -> str:
        """`SHA256:...` as ssh-keygen -l prints it."""
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def known_hosts_line(self, host: str) -> str:
        return f"{host} {self.key_type} {self.blob}"


def parse_host_key(key_type: str, value: str) -> HostKey | None:
    """A guest attribute (key = algorithm, value = blob, or `ALGO BLOB [comment]` as some agent
    versions write it) as a HostKey; None for anything that is not a well-formed key of that
    algorithm (the blob's own type string must agree with the attribute's name)."""
    fields = value.split()
    if len(fields) >= 2 and fields[0] == key_type:
        fields = fields[1:]
    if not fields or not key_type:
        return None
    blob = fields[0]
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) < 4:
        return None
    length = int.from_bytes(raw[:4], "big")
    if raw[4 : 4 + length].decode(errors="replace") != key_type:
        return None
    return HostKey(key_type, blob)


def published_host_keys(
    credentials: Credentials, project: str, zone: str, instance: str
) -> tuple[HostKey, ...] | None:
    """The host keys under the instance's `hostkeys/` guest attributes; None when guest
    attributes are off or nothing is published yet (404, or no well-formed entry)."""
    from google.api_core import exceptions as api_exceptions
    from google.cloud import compute_v1

    from ai_deploy.gcp.operations import CALL_TIMEOUT, compute_client, retry_transient

    client = compute_client(compute_v1.InstancesClient, credentials)
    request = compute_v1.GetGuestAttributesInstanceRequest(
        project=project, zone=zone, instance=instance, query_path=HOSTKEYS_QUERY_PATH
    )
    try:
        reply = retry_transient(
            f"read host keys of {instance}",
            lambda: client.get_guest_attributes(request=request, timeout=CALL_TIMEOUT),
        )
    except api_exceptions.NotFound:
        return None
    keys = []
    for item in reply.query_value.items:
        if item.namespace and item.namespace != HOSTKEYS_QUERY_PATH.rstrip("/"):
            continue
        key = parse_host_key(item.key, item.value)
        if key is not None:
            keys.append(key)
    return tuple(keys) or None


def published_host_keys_of_all(
    credentials: Credentials,
    project: str,
    places: Sequence[tuple[str, str]],
    workers: int = MAX_READERS,
) -> tuple[dict[str, tuple[HostKey, ...] | None], dict[str, str]]:
    """published_host_keys for every (instance, zone) of PLACES, at most WORKERS at once:
    (instance -> its keys or None when it publishes none, instance -> the error that made
    its read fail once the retries of 429/5xx were spent)."""
    found: dict[str, tuple[HostKey, ...] | None] = {}
    failed: dict[str, str] = {}
    if not places:
        return found, failed
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(places)))) as pool:
        futures = {
            name: pool.submit(published_host_keys, credentials, project, zone, name)
            for name, zone in places
        }
        for name, future in futures.items():
            try:
                found[name] = future.result()
            except Exception as exc:  # an API refusal or a transport error, said as it is
                failed[name] = str(exc) or type(exc).__name__
    return found, failed


def enable_hint(project: str, zone: str, instance: str) -> str:
    return ENABLE_HINT.format(project=project, zone=zone, instance=instance)


__all__ = [
    "HOSTKEYS_QUERY_PATH",
    "PERMISSION",
    "HostKey",
    "enable_hint",
    "parse_host_key",
    "published_host_keys",
    "published_host_keys_of_all",
]
