"""Deploy notifications to Slack and Discord incoming webhooks.

A notification is a courtesy, never part of the deploy: a notifier that fails (an error status,
a hang, a refused connection, a bad URL) is logged as a warning and reported in the results,
and notify() never raises for it and never waits longer than a bounded time.

Webhook URLs are secrets (whoever holds one can post to the channel), so they never appear in
logs, results or exception messages: notifiers are named "slack" and "discord" only.

What the messages say is built in ai_deploy.report.notify_payloads; this module sends them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

import requests
from requests.utils import requote_uri

from ai_deploy.report.notify_payloads import (
    DeployEvent,
    Outcome,
    cut,
    discord_payload,
    plural,
    slack_payload,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DISCORD_WEBHOOK_ENV",
    "SLACK_WEBHOOK_ENV",
    "DeployEvent",
    "NotifyResult",
    "Outcome",
    "discord_payload",
    "notify",
    "slack_payload",
    "webhook_urls",
]

logger = logging.getLogger(__name__)

SLACK_WEBHOOK_ENV = "AI_DEPLOY_SLACK_WEBHOOK_URL"
DISCORD_WEBHOOK_ENV = "AI_DEPLOY_DISCORD_WEBHOOK_URL"
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_RETRY_DELAY_S = 1.0

_MAX_ERROR_BODY_CHARS = 120
_PAYLOADS = {"slack": slack_payload, "discord": discord_payload}

# Discord's edge refuses generic client User-Agents, so name ourselves.
_HEADERS = {"Content-Type": "application/json", "User-Agent": "ai-deploy-notify"}
# Checked before any request, so no other scheme ever reaches the HTTP client.
_SCHEMES = ("http", "https")
# The part of a requests error worth showing: the OS or TLS error. The rest of its text
# repeats the URL (in forms _redact might not recognise), so it is never shown.
_LOW_LEVEL_ERROR = re.compile(r"\[(?:Errno -?[0-9]+|SSL: [A-Z_]+)\][^'\")]*")


@dataclass(frozen=True)
class NotifyResult:
    """How one notifier fared. ERROR never contains the webhook URL."""

    notifier: str
    ok: bool
    attempts: int
    status: int | None = None
    error: str | None = None


def webhook_urls(
    env: Mapping[str, str] | None = None,
    *,
    slack_url: str | None = None,
    discord_url: str | None = None,
) -> dict[str, str]:
    """The configured webhooks by notifier name ("slack", "discord"): an explicit URL wins (an
    empty string turns that notifier off), else AI_DEPLOY_SLACK_WEBHOOK_URL and
    AI_DEPLOY_DISCORD_WEBHOOK_URL. Notifiers without a URL are left out."""
    environ = os.environ if env is None else env
    chosen = {
        "slack": slack_url if slack_url is not None else environ.get(SLACK_WEBHOOK_ENV, ""),
        "discord": discord_url if discord_url is not None else environ.get(DISCORD_WEBHOOK_ENV, ""),
    }
    return {name: url.strip() for name, url in chosen.items() if url and url.strip()}


def _redact(text: str, url: str) -> str:
    """TEXT with the webhook URL and its path (where the secret token lives) blanked out, as
    written and as requests re-quotes them. Works on malformed URLs too: it only splits strings."""
    after_scheme = url.split("://", 1)[-1]
    slash = after_scheme.find("/")
    path = after_scheme[slash:] if slash >= 0 else ""
    secrets = {url, requote_uri(url)}
    if len(path) > 1:
        secrets |= {path, requote_uri(path)}
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "<webhook>")
    return text


def _low_level_error(exc: requests.RequestException) -> str:
    found = _LOW_LEVEL_ERROR.search(str(exc))
    return found.group(0).strip() if found else type(exc).__name__


# urllib3 logs request lines, URL path included, at DEBUG. In a delivery thread, where this
# holds the webhook URL, a filter on its loggers blanks the URL out of every record.
_posting = threading.local()


class _RedactWebhook(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        url = getattr(_posting, "url", None)
        if url:
            record.msg, record.args = _redact(record.getMessage(), url), ()
        return True


_REDACT_WEBHOOK = _RedactWebhook()
for _name in ("connection", "connectionpool", "poolmanager", "response", "util.retry"):
    logging.getLogger(f"urllib3.{_name}").addFilter(_REDACT_WEBHOOK)


@dataclass(frozen=True)
class _Attempt:
    status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def retryable(self) -> bool:
        # Connection problems, timeouts, rate limits and server errors may pass on a second
        # try; any other 4xx means the payload or the URL is wrong and will stay wrong.
        return self.status is None or self.status == 429 or self.status >= 500


def _error_detail(response: requests.Response) -> str:
    """The start of an error answer's body, on one line; empty when it cannot be read."""
    limit = _MAX_ERROR_BODY_CHARS * 4
    body = b""
    try:
        for chunk in response.iter_content(chunk_size=limit):
            body += chunk
            if len(body) >= limit:
                break
    except (requests.RequestException, OSError):
        pass
    return " ".join(body[:limit].decode("utf-8", errors="replace").split())


def _post_once(session: requests.Session, url: str, body: bytes, timeout: float) -> _Attempt:
    try:
        # A webhook answers directly: following a redirect would resend the payload elsewhere.
        with session.post(
            url, data=body, headers=_HEADERS, timeout=timeout, allow_redirects=False, stream=True
        ) as response:
            status = response.status_code
            if 200 <= status < 300:
                return _Attempt(status=status)
            detail = _error_detail(response)
    except requests.Timeout:
        return _Attempt(error=f"no answer within {timeout:g} s")
    except requests.ConnectionError as exc:
        return _Attempt(error=f"connection failed: {_low_level_error(exc)}")
    except requests.RequestException as exc:
        return _Attempt(error=f"request failed: {_low_level_error(exc)}")
    error = f"HTTP {status}" + (f": {cut(detail, _MAX_ERROR_BODY_CHARS)}" if detail else "")
    return _Attempt(status=status, error=_redact(error, url))


@dataclass
class _Delivery:
    """One notifier's POSTs, run in a thread of their own. Only that thread writes ATTEMPTS and
    RESULT; notify() reads them once the thread ends or its deadline passes, whichever is first
    (RESULT is None when the deadline came first)."""

    name: str
    url: str
    attempts: int = 0
    result: NotifyResult | None = None

    def run(self, event: DeployEvent, timeout: float, retry: bool, retry_delay_s: float) -> None:
        _posting.url = self.url
        try:
            self.result = self._send(event, timeout, retry, retry_delay_s)
        except Exception as exc:  # a notifier must never break the deploy's outcome
            error = _redact(f"{type(exc).__name__}: {exc}", self.url)
            self.result = NotifyResult(self.name, ok=False, attempts=self.attempts, error=error)
        finally:
            _posting.url = None

    def _send(
        self, event: DeployEvent, timeout: float, retry: bool, retry_delay_s: float
    ) -> NotifyResult:
        try:
            scheme = urllib.parse.urlsplit(self.url).scheme
        except ValueError:
            return NotifyResult(self.name, ok=False, attempts=0, error="webhook URL is malformed")
        if scheme not in _SCHEMES:
            return NotifyResult(self.name, ok=False, attempts=0, error="webhook URL is not http(s)")
        body = json.dumps(_PAYLOADS[self.name](event)).encode("utf-8")
        with requests.Session() as session:
            self.attempts += 1
            attempt = _post_once(session, self.url, body, timeout)
            if not attempt.ok and retry and attempt.retryable:
                time.sleep(retry_delay_s)
                self.attempts += 1
                attempt = _post_once(session, self.url, body, timeout)
        return NotifyResult(
            self.name,
            ok=attempt.ok,
            attempts=self.attempts,
            status=attempt.status,
            error=attempt.error,
        )


def notify(
    event: DeployEvent,
    *,
    slack_url: str | None = None,
    discord_url: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    retry: bool = True,
    retry_delay_s: float = DEFAULT_RETRY_DELAY_S,
    env: Mapping[str, str] | None = None,
) -> list[NotifyResult]:
    """Send EVENT to every configured webhook (see webhook_urls()) and report how each fared.

    Guarantees: never raises for a notifier's failure; never follows a redirect; sends each
    notifier's POST at most twice (one retry, only for connection errors, timeouts, 429 and
    5xx, after RETRY_DELAY_S); waits at most TIMEOUT seconds for each connect and each read;
    runs the notifiers side by side and returns within about 2 x TIMEOUT + RETRY_DELAY_S + 1
    seconds even if a receiver trickles its answer; logs a warning per failed notifier naming
    it ("slack", "discord") but never its URL. Returns one NotifyResult per configured
    notifier, in the order slack, discord; an empty list when none is configured.
    """
    targets = webhook_urls(env, slack_url=slack_url, discord_url=discord_url)
    deliveries = [_Delivery(name, url) for name, url in targets.items()]
    # Daemon threads: a receiver that never lets go must not keep the process from exiting.
    threads = [
        threading.Thread(
            target=delivery.run,
            args=(event, timeout, retry, retry_delay_s),
            name=f"notify-{delivery.name}",
            daemon=True,
        )
        for delivery in deliveries
    ]
    budget = (2 if retry else 1) * timeout + (retry_delay_s if retry else 0.0) + 1.0
    deadline = time.monotonic() + budget
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))

    results = [
        delivery.result
        or NotifyResult(
            delivery.name,
            ok=False,
            attempts=delivery.attempts,
            error=f"gave up after {budget:g} s without an answer",
        )
        for delivery in deliveries
    ]
    for result in results:
        if result.ok:
            logger.info("%s notified (HTTP %s)", result.notifier, result.status)
        else:
            logger.warning(
                "%s notification failed after %s: %s",
                result.notifier,
                plural(result.attempts, "attempt"),
                result.error,
            )
    return results
