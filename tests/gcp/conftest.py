"""Fixtures for GCP flows: the loopback Google server and credentials that point at it."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google.oauth2.credentials import Credentials as TokenCredentials

from tests.fakes.gcp import FakeGcp, running_fake, write_json

_ENV_CLEARED = (
    "GCP_PROJECT_ID",
    "GOOGLE_GHA_CREDS_PATH",
    "ACTIONS_ID_TOKEN_REQUEST_URL",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    "GITHUB_RUN_ID",
    "GITHUB_RUN_ATTEMPT",
    "AI_DEPLOY_COMPUTE_ENDPOINT",
    "AI_DEPLOY_OSLOGIN_ENDPOINT",
    "AI_DEPLOY_SSH_MODE",
    "AI_DEPLOY_SSH_USER",
    "AI_DEPLOY_SSH_PRIVATE_KEY",
    "AI_DEPLOY_SSH_KEY_TTL_MINUTES",
    "AI_DEPLOY_OSLOGIN_USER",
)


@pytest.fixture(autouse=True)
def isolated_gcp_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CI, project or endpoint variables from the outside, and an empty gcloud config
    directory, so a developer's own gcloud login is never picked up."""
    for name in _ENV_CLEARED:
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "gcloud-config"
    empty.mkdir()
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(empty))


@pytest.fixture
def gcp_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGcp]:
    """A started fake; the Compute and OS Login clients of ai_deploy.gcp are pointed at it
    through AI_DEPLOY_COMPUTE_ENDPOINT and AI_DEPLOY_OSLOGIN_ENDPOINT."""
    with running_fake() as fake:
        monkeypatch.setenv("AI_DEPLOY_COMPUTE_ENDPOINT", fake.url)
        monkeypatch.setenv("AI_DEPLOY_OSLOGIN_ENDPOINT", fake.oslogin_endpoint)
        yield fake


@pytest.fixture
def token_credentials(gcp_fake: FakeGcp) -> TokenCredentials:
    """Credentials holding a cloud-platform token the fake accepts (no token exchange)."""
    return TokenCredentials(token=gcp_fake.issue_token(who="static@test"))


WorkloadIdentity = Callable[..., Path]


@pytest.fixture
def github_workload_identity(
    gcp_fake: FakeGcp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> WorkloadIdentity:
    """Set the environment up as google-github-actions/auth leaves it, against the fake.

    Call it as `github_workload_identity(service_account=..., request_token=..., audience=...)`:
    writes the `external_account` file (with `service_account_impersonation_url` unless
    service_account is None), exports GOOGLE_APPLICATION_CREDENTIALS, GOOGLE_GHA_CREDS_PATH,
    GOOGLE_CLOUD_PROJECT and the runner's ACTIONS_ID_TOKEN_REQUEST_URL/TOKEN; returns the path.
    REQUEST_TOKEN is the runner token written into the file (default: the one the fake wants).
    """
    default_sa = gcp_fake.state.service_account

    def setup(
        *,
        service_account: str | None = default_sa,
        request_token: str | None = None,
        audience: str | None = None,
    ) -> Path:
        info = gcp_fake.external_account_info(
            service_account=service_account, request_token=request_token, audience=audience
        )
        path = write_json(tmp_path / "gha-creds-0123456789abcdef.json", info)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
        monkeypatch.setenv("GOOGLE_GHA_CREDS_PATH", str(path))
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", gcp_fake.state.project)
        for name, value in gcp_fake.github_env().items():
            monkeypatch.setenv(name, value)
        if request_token is not None:
            monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", request_token)
        return path

    return setup


class ChildProcess:
    """A Python child process running a script, with line-by-line access to its output."""

    def __init__(self, script: str, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=cwd,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for_line(self, prefix: str, timeout: float = 30.0) -> str:
        """The first output line starting with PREFIX; fails the test after TIMEOUT."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.output.append(line)
            if line.startswith(prefix):
                return line.strip()
        pytest.fail(f"child never printed {prefix!r}; output:\n{self.text}")

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for the exit code and the rest of the output."""
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        while not self._lines.empty():
            line = self._lines.get()
            if line is not None:
                self.output.append(line)
        return self.proc.returncode

    @property
    def text(self) -> str:
        return "".join(self.output)


@pytest.fixture
def child_python(tmp_path: Path) -> Iterator[Callable[[str], ChildProcess]]:
    """Start `python -c SCRIPT` children with the test's environment; killed at teardown."""
    children: list[ChildProcess] = []

    def start(script: str) -> ChildProcess:
        child = ChildProcess(script, tmp_path)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait(timeout=10)
