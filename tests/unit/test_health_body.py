"""What an unhealthy app answers stays in the run's log: the health gate's reason, hence the
host's outcome (which CI turns into Slack, Discord, the job summary and the error annotation)
and revisions.log, carry what the gate saw, never the app's words."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hostkit import FakeHost

from ai_deploy.host.outcome import SWITCHED_BACK
from ai_deploy.report.notify_payloads import DeployEvent, discord_payload, slack_payload

pytestmark = pytest.mark.unit

# A 5xx body an attacker who reaches the app (or a buggy app) controls: a link Discord renders,
# a mention, a key, a terminal escape.
BODY = (
    "Internal error: see https://evil.example/login?next=ci @everyone "
    "OPENAI_API_KEY=sk-live0123456789abcdef \x1b]52;c;cm0gLXJmIH4=\x07"
)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    with FakeHost(tmp_path) as h:
        yield h


@pytest.mark.parametrize("strategy", ["socket", "bluegreen"])
def test_the_apps_5xx_body_is_in_the_log_only(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    host.deploy("r1", strategy=strategy)
    real = host.answer_for

    def answer(port: int, path: str) -> tuple[int, str] | None:
        found = real(port, path)
        if found is not None and found[1] == "release r2":
            return 503, BODY
        return found

    monkeypatch.setattr(host, "answer_for", answer)
    outcome = host.deploy("r2", strategy=strategy)
    assert outcome.status == SWITCHED_BACK and outcome.serving == "r1"
    assert "answered 503 3 times in a row" in outcome.reason
    event = DeployEvent(
        outcome="rollback", release="r2", hosts=["h1"], duration_s=1, message=outcome.reason
    )
    told = [outcome.to_json(), host.journal()[-1], str(slack_payload(event))]
    told.append(str(discord_payload(event)))
    for text in told:
        assert "evil.example" not in text and "@everyone" not in text and "sk-live" not in text
        assert "\x1b" not in text
    # The operator still sees it in the log, escapes made visible and inert.
    said = [w for w in host.remote.warned if "answered 503:" in w]
    assert said and "evil.example" in said[0] and "\\x1b]52;" in said[0]
    assert "\x1b" not in said[0]


def test_a_healthy_answer_is_logged_not_kept_in_the_reason(host: FakeHost) -> None:
    outcome = host.deploy("r1")
    assert outcome.ok
    assert "release r1" not in host.journal()[-1]
    assert any(s.endswith("answered 200: release r1") for s in host.remote.said)
