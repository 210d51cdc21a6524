"""What a deploy notification says: the event (DeployEvent, Outcome) and the message bodies
for Slack and Discord incoming webhooks, within each service's length limits.

Pure data and formatting, no network: ai_deploy.report.notify sends these bodies.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ai_deploy.report.secretlike import redact

__all__ = [
    "DeployEvent",
    "Outcome",
    "cut",
    "discord_payload",
    "plural",
    "slack_payload",
]

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
    + message: a short reason for people (which phase or host failed and why), never host
      log lines; may be empty. Anything key- or token-like in it is blanked (***) on creation,
      so no payload or summary built from the event can carry it
    + run_url: link to the CI run, if any
    + service: the service's name as people know it
    + action: what ran: deploy (the default), rollback or restart
    """

    outcome: Outcome
    release: str
    hosts: Sequence[str]
    duration_s: float
    failed_phase: str | None = None
    message: str = ""
    run_url: str | None = None
    service: str = "ai-server"
    action: str = "deploy"

    def __post_init__(self) -> None:
        try:
            outcome = Outcome(self.outcome)
        except ValueError:
            allowed = ", ".join(o.value for o in Outcome)
            raise ValueError(f"outcome {self.outcome!r} is not one of: {allowed}") from None
        object.__setattr__(self, "outcome", outcome)
        object.__setattr__(self, "hosts", tuple(self.hosts))
        object.__setattr__(self, "message", redact(self.message))

    @property
    def headline(self) -> str:
        """One line: what happened, to which release, where and how long it took."""
        outcome = Outcome(self.outcome)
        line = (
            f"{_EMOJI[outcome]} {self.service} {self.action} {_VERB[outcome]}: "
            f"release {self.release} "
            f"on {plural(len(self.hosts), 'host')} in {_duration(self.duration_s)}"
        )
        if self.failed_phase and outcome is not Outcome.SUCCESS:
            line += f" (failed phase: {self.failed_phase})"
        return line


def plural(n: int, noun: str) -> str:
    """N and NOUN, in the plural unless N is 1: "1 host", "2 hosts"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def cut(text: str, limit: int) -> str:
    """TEXT, or its first LIMIT - 1 characters and an ellipsis when it is longer."""
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
                "text": cut(f"{_EMOJI[outcome]} {event.service} deploy {_VERB[outcome]}", 150),
                "emoji": True,
            },
        },
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": cut(text, 2000)} for text in fields],
        },
    ]
    if event.message:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": cut(_slack_escape(event.message), 3000)},
            }
        )
    if event.run_url:
        link = f"<{_slack_link_target(event.run_url)}|CI run>"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": link}]})
    return {"text": cut(_slack_escape(event.headline), 3000), "blocks": blocks}


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
        item["value"] = cut(str(item["value"]), 1024)
    embed: dict[str, Any] = {
        "title": cut(f"{event.service} deploy {_VERB[outcome]}", 256),
        "color": _DISCORD_COLOR[outcome],
        "fields": fields,
    }
    if event.message:
        embed["description"] = cut(event.message, 4096)
    if event.run_url:
        embed["url"] = event.run_url
    return {
        "content": cut(event.headline, 2000),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},
    }
