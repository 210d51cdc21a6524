"""Deploy notifications to Slack and Discord incoming webhooks.

A notification is a courtesy, never part of the deploy: a notifier that fails (an error status,
a hang, a refused connection, a bad URL) is logged as a warning and reported in the results,
and notify() never raises for it and never waits longer than a bounded time.

Webhook URLs are secrets (whoever holds one can post to the channel), so they never appear in
logs, results or exception messages: notifiers are named "slack" and "discord" only.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
_MAX_HOSTS_SHOWN = 20


class Outcome(str, enum.Enum):
    """How a deploy ended."""

    SUCCESS = "success"
    FAILURE = "failure"
    ROLLBACK = "rollback"


_VERB = {
    Outcome.SUCCESS: "succeeded",
    Outcome.FAILURE: "failed",
    Outcome.ROLLBACK: "rolled back",
}
_EMOJI = {
    Outcome.SUCCESS: "\u2705",  # white heavy check mark
    Outcome.FAILURE: "\u274c",  # cross mark
    Outcome.ROLLBACK: "\u21a9\ufe0f",  # leftwards arrow with hook
}
_DISCORD_COLOR = {
    Outcome.SUCCESS: 0x2EB67D,
    Outcome.FAILURE: 0xE01E5A,
    Outcome.ROLLBACK: 0xECB22E,
}


@dataclass(frozen=True)
class DeployEvent:
    """What a notification says about one deploy (or rollback).

    + outcome: success, failure or rollback (an Outcome or its string value)
    + release: the release id that was deployed (or put back)
    + hosts: the hosts it went to
    + duration_s: wall-clock seconds the whole run took
    + failed_phase: the phase that failed ("firewall", "deploy", "health", ...), if any
    + message: free text, e.g. the error; may be empty
    + run_url: link to the CI run, if any
    + service: the service's name as people know it
    """

    outcome: Outcome
    release: str
    hosts: Sequence[str]
    duration_s: float
    failed_phase: str | None = None
    message: str = ""
    run_url: str | None = None
    service: str = "ai-server"

    def __post_init__(self) -> None:
        try:
            outcome = Outcome(self.outcome)
        except ValueError:
            allowed = ", ".join(o.value for o in Outcome)
            raise ValueError(f"outcome {self.outcome!r} is not one of: {allowed}") from None
        object.__setattr__(self, "outcome", outcome)
        object.__setattr__(self, "hosts", tuple(self.hosts))

    @property
    def headline(self) -> str:
        """One line: what happened, to which release, where and how long it took."""
        outcome = Outcome(self.outcome)
        line = (
            f"{_EMOJI[outcome]} {self.service} deploy {_VERB[outcome]}: release {self.release} "
            f"on {_count(len(self.hosts), 'host')} in {_duration(self.duration_s)}"
        )
        if self.failed_phase and outcome is not Outcome.SUCCESS:
            line += f" (failed phase: {self.failed_phase})"
        return line


@dataclass(frozen=True)
class NotifyResult:
    """How one notifier fared. ERROR never contains the webhook URL."""

    notifier: str
    ok: bool
    attempts: int
    status: int | None = None
    error: str | None = None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _hosts_text(hosts: Sequence[str]) -> str:
    if not hosts:
        return "none"
    shown = ", ".join(hosts[:_MAX_HOSTS_SHOWN])
    if len(hosts) > _MAX_HOSTS_SHOWN:
        shown += f" and {len(hosts) - _MAX_HOSTS_SHOWN} more"
    return shown


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn treats these three as control characters; everything else is literal.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_link_target(url: str) -> str:
    return url.replace("|", "%7C").replace("<", "%3C").replace(">", "%3E")


def slack_payload(event: DeployEvent) -> dict[str, Any]:
    """The Slack incoming-webhook body for EVENT: a plain `text` (used in notifications and by
    clients without blocks) and `blocks` with the details, within Slack's length limits."""
    outcome = Outcome(event.outcome)
    fields = [
        f"*Release*\n`{_slack_escape(event.release)}`",
        f"*Outcome*\n{outcome.value}",
        f"*Hosts*\n{_slack_escape(_hosts_text(event.hosts))}",
        f"*Duration*\n{_duration(event.duration_s)}",
    ]
    if event.failed_phase:
        fields.append(f"*Failed phase*\n{_slack_escape(event.failed_phase)}")
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": _cut(f"{_EMOJI[outcome]} {event.service} deploy {_VERB[outcome]}", 150),
                "emoji": True,
            },
        },
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": _cut(text, 2000)} for text in fields],
        },
    ]
    if event.message:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _cut(_slack_escape(event.message), 3000)},
            }
        )
    if event.run_url:
        link = f"<{_slack_link_target(event.run_url)}|CI run>"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": link}]})
    return {"text": _cut(_slack_escape(event.headline), 3000), "blocks": blocks}


def discord_payload(event: DeployEvent) -> dict[str, Any]:
    """The Discord webhook body for EVENT: `content` with the headline and one embed with the
    details, within Discord's length limits; mentions in the text never ping anyone."""
    outcome = Outcome(event.outcome)
    fields = [
        {"name": "Release", "value": f"`{event.release}`", "inline": True},
        {"name": "Outcome", "value": outcome.value, "inline": True},
        {"name": "Duration", "value": _duration(event.duration_s), "inline": True},
        {"name": "Hosts", "value": _hosts_text(event.hosts), "inline": False},
    ]
    if event.failed_phase:
        fields.append({"name": "Failed phase", "value": event.failed_phase, "inline": True})
    for item in fields:
        item["value"] = _cut(str(item["value"]), 1024)
    embed: dict[str, Any] = {
        "title": _cut(f"{event.service} deploy {_VERB[outcome]}", 256),
        "color": _DISCORD_COLOR[outcome],
        "fields": fields,
    }
    if event.message:
        embed["description"] = _cut(event.message, 4096)
    if event.run_url:
        embed["url"] = event.run_url
    return {
        "content": _cut(event.headline, 2000),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},
    }


_PAYLOADS = {"slack": slack_payload, "discord": discord_payload}


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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A webhook answers directly; following a redirect would resend the payload elsewhere.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _redact(text: str, url: str) -> str:
    """TEXT with the webhook URL and its path (where the secret token lives) blanked out.
    Works on malformed URLs too: it only splits strings."""
    after_scheme = url.split("://", 1)[-1]
    slash = after_scheme.find("/")
    path = after_scheme[slash:] if slash >= 0 else ""
    for secret in (url, path if len(path) > 1 else ""):
        if secret:
            text = text.replace(secret, "<webhook>")
    return text


@dataclass
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


# Discord's edge refuses urllib's default User-Agent, so name ourselves.
_HEADERS = {"Content-Type": "application/json", "User-Agent": "ai-deploy-notify"}

# Scheme checks run before any request: urllib would also open file: and ftp: URLs.
_SCHEMES = ("http", "https")


def _post_once(url: str, body: bytes, timeout: float) -> _Attempt:
    request = urllib.request.Request(url, data=body, headers=_HEADERS, method="POST")
    # Built per request: the proxy settings are read from the environment when it is built.
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as response:
            return _Attempt(status=response.status)
    except urllib.error.HTTPError as exc:
        try:
            detail = exc.read(_MAX_ERROR_BODY_CHARS * 4).decode("utf-8", errors="replace")
        except OSError:
            detail = ""
        finally:
            exc.close()
        detail = " ".join(detail.split())
        error = f"HTTP {exc.code}" + (f": {_cut(detail, _MAX_ERROR_BODY_CHARS)}" if detail else "")
        return _Attempt(status=exc.code, error=_redact(error, url))
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return _Attempt(error=f"no answer within {timeout:g} s")
        return _Attempt(error=_redact(f"connection failed: {reason}", url))
    except TimeoutError:
        return _Attempt(error=f"no answer within {timeout:g} s")
    except (OSError, ValueError) as exc:
        return _Attempt(error=_redact(f"request failed: {type(exc).__name__}: {exc}", url))


@dataclass
class _Outbox:
    """What the notifier threads report back; read under LOCK."""

    results: dict[str, NotifyResult] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def started(self, name: str) -> int:
        with self.lock:
            self.attempts[name] = self.attempts.get(name, 0) + 1
            return self.attempts[name]


def _deliver(
    name: str,
    url: str,
    body: bytes,
    outbox: _Outbox,
    timeout: float,
    retry: bool,
    retry_delay_s: float,
) -> NotifyResult:
    try:
        scheme = urllib.parse.urlsplit(url).scheme
    except ValueError:
        return NotifyResult(name, ok=False, attempts=0, error="webhook URL is malformed")
    if scheme not in _SCHEMES:
        return NotifyResult(name, ok=False, attempts=0, error="webhook URL is not http(s)")
    attempts = outbox.started(name)
    attempt = _post_once(url, body, timeout)
    if not attempt.ok and retry and attempt.retryable:
        time.sleep(retry_delay_s)
        attempts = outbox.started(name)
        attempt = _post_once(url, body, timeout)
    return NotifyResult(
        name, ok=attempt.ok, attempts=attempts, status=attempt.status, error=attempt.error
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

    Guarantees: never raises for a notifier's failure; sends each notifier's POST at most twice
    (one retry, only for connection errors, timeouts, 429 and 5xx, after RETRY_DELAY_S); runs
    the notifiers side by side and returns within about 2 x TIMEOUT + RETRY_DELAY_S + 1 seconds
    even if a receiver trickles its answer; logs a warning per failed notifier naming it
    ("slack", "discord") but never its URL. Returns one NotifyResult per configured notifier,
    in the order slack, discord; an empty list when none is configured.
    """
    targets = webhook_urls(env, slack_url=slack_url, discord_url=discord_url)
    outbox = _Outbox()

    def work(name: str, url: str) -> None:
        try:
            body = json.dumps(_PAYLOADS[name](event)).encode("utf-8")
            result = _deliver(name, url, body, outbox, timeout, retry, retry_delay_s)
        except Exception as exc:  # a notifier must never break the deploy's outcome
            result = NotifyResult(
                name,
                ok=False,
                attempts=outbox.attempts.get(name, 0),
                error=_redact(f"{type(exc).__name__}: {exc}", url),
            )
        with outbox.lock:
            outbox.results[name] = result

    # Daemon threads: a receiver that never lets go must not keep the process from exiting.
    threads = [
        threading.Thread(target=work, args=(name, url), name=f"notify-{name}", daemon=True)
        for name, url in targets.items()
    ]
    budget = (2 if retry else 1) * timeout + (retry_delay_s if retry else 0.0) + 1.0
    deadline = time.monotonic() + budget
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))

    results: list[NotifyResult] = []
    with outbox.lock:
        for name in targets:
            result = outbox.results.get(name) or NotifyResult(
                name,
                ok=False,
                attempts=outbox.attempts.get(name, 0),
                error=f"gave up after {budget:g} s without an answer",
            )
            results.append(result)
    for result in results:
        if result.ok:
            logger.info("%s notified (HTTP %s)", result.notifier, result.status)
        else:
            logger.warning(
                "%s notification failed after %s: %s",
                result.notifier,
                _count(result.attempts, "attempt"),
                result.error,
            )
    return results
