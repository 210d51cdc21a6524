"""Whether another GitHub Actions run is over, asked of GitHub's REST API
(`GET {GITHUB_API_URL}/repos/{GITHUB_REPOSITORY}/actions/runs/{RUN_ID}`, `status` "completed"),
so a rule a killed run left behind is swept by the next run at its start instead of at its
expiry. Needs GITHUB_TOKEN in the environment (the workflow passes `github.token`, with
`actions: read`); without it, or on any error, the answer is "unknown" and the expiry decides.
The token goes only to GITHUB_API_URL, over https (or to a loopback address)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from urllib.parse import urlsplit

import requests

logger = logging.getLogger(__name__)

TIMEOUT_S = 10.0
OVER = "completed"


def _safe_base(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return url.rstrip("/")
    if parts.scheme == "http" and parts.hostname:
        try:
            if ipaddress.ip_address(parts.hostname).is_loopback:
                return url.rstrip("/")
        except ValueError:
            return None
    return None


class RunStatus:
    """Answers "is run N of this repository over?", each run asked at most once."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._token = environ.get("GITHUB_TOKEN", "").strip()
        self._repo = environ.get("GITHUB_REPOSITORY", "").strip()
        self._base = _safe_base(environ.get("GITHUB_API_URL", "").strip())
        self._seen: dict[str, bool | None] = {}

    @property
    def usable(self) -> bool:
        return bool(self._token and self._repo and self._base)

    def is_over(self, run_id: str) -> bool | None:
        """True when GitHub says run RUN_ID is completed, False while it runs, None when it
        cannot be told."""
        if not self.usable or not run_id.isdigit():
            return None
        if run_id not in self._seen:
            self._seen[run_id] = self._ask(run_id)
        return self._seen[run_id]

    def _ask(self, run_id: str) -> bool | None:
        url = f"{self._base}/repos/{self._repo}/actions/runs/{run_id}"
        try:
            reply = requests.get(
                url,
                headers={
                    "Authorization": f"Bearer {self._token}",
                    "Accept": "application/vnd.github+json",
                    "X-GitHub-Api-Version": "2022-11-28",
                },
                timeout=TIMEOUT_S,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            logger.warning("could not ask GitHub whether run %s is over: %s", run_id, exc)
            return None
        if reply.status_code != 200:
            logger.warning(
                "could not ask GitHub whether run %s is over: HTTP %s (the token needs "
                "actions: read)",
                run_id,
                reply.status_code,
            )
            return None
        try:
            status = reply.json().get("status")
        except ValueError:
            return None
        return status == OVER if isinstance(status, str) else None


__all__ = ["RunStatus"]
