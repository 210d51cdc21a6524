"""Deploy notifications: real HTTP POSTs to a loopback webhook receiver that records payloads,
and receivers that fail, hang or trickle without ever breaking the caller."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from ai_deploy.report.notify import (
    DISCORD_WEBHOOK_ENV,
    SLACK_WEBHOOK_ENV,
    DeployEvent,
    NotifyResult,
    Outcome,
    discord_payload,
    notify,
    slack_payload,
    webhook_urls,
)

pytestmark = pytest.mark.unit

# The part of a webhook URL that is the secret; it must never show up in logs or results.
SLACK_SECRET = "/services/T0SECRET/B0SECRET/slacksecrettoken"
DISCORD_SECRET = "/api/webhooks/123456/discordsecrettoken"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Behaviour:
    """How the receiver answers on one path."""

    status: int = 200
    body: bytes = b"ok"
    delay: float = 0.0
    trickle: bool = False
    location: str | None = None


@dataclass
class ReceiverState:
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    state: ClassVar[ReceiverState]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        with self.state.lock:
            self.state.received.append(
                Received(self.path, dict(self.headers.items()), json.loads(raw or b"null"))
            )
        behaviour = self.state.behaviours.get(self.path, Behaviour())
        try:
            if behaviour.trickle:
                # One byte at a time, each well inside the client's socket timeout, forever.
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                while not self.state.stop.wait(0.1):
                    self.wfile.write(b"X")
                    self.wfile.flush()
                return
            if behaviour.delay:
                self.state.stop.wait(behaviour.delay)
            self.send_response(behaviour.status)
            if behaviour.location:
                self.send_header("Location", behaviour.location)
            self.send_header("Content-Length", str(len(behaviour.body)))
            self.end_headers()
            self.wfile.write(behaviour.body)
        except OSError:
            pass  # the client gave up

    def log_message(self, format: str, *args: object) -> None:
        pass


class Receiver:
    """A loopback webhook receiver: records every POST and answers as told per path."""

    def __init__(self) -> None:
        self.state = ReceiverState()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str, behaviour: Behaviour | None = None) -> str:
        if behaviour is not None:
            self.state.behaviours[path] = behaviour
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def posts(self, path: str) -> list[Received]:
        with self.state.lock:
            return [r for r in self.state.received if r.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    rec.thread.start()
    yield rec
    rec.state.stop.set()
    rec.httpd.shutdown()
    rec.httpd.server_close()


def _refused_url(path: str) -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def _event(**overrides: Any) -> DeployEvent:
    values: dict[str, Any] = {
        "outcome": Outcome.SUCCESS,
        "release": "3f2a9c1",
        "hosts": ["10.201.0.2", "10.201.0.3"],
        "duration_s": 42.5,
        "run_url": "https://github.com/acme/ai-server/actions/runs/1/attempts/1",
    }
    values.update(overrides)
    return DeployEvent(**values)


def _assert_no_secret(caplog: pytest.LogCaptureFixture, results: list[NotifyResult]) -> None:
    shown = caplog.text + repr(results)
    for secret in (SLACK_SECRET, DISCORD_SECRET, "secrettoken"):
        assert secret not in shown


def test_success_reaches_both_receivers(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    results = notify(
        _event(),
        slack_url=receiver.url(SLACK_SECRET),
        discord_url=receiver.url(DISCORD_SECRET, Behaviour(status=204, body=b"")),
        retry_delay_s=0,
    )
    assert results == [
        NotifyResult("slack", ok=True, attempts=1, status=200),
        NotifyResult("discord", ok=True, attempts=1, status=204),
    ]
    (slack,) = receiver.posts(SLACK_SECRET)
    (discord,) = receiver.posts(DISCORD_SECRET)
    assert slack.headers["Content-Type"] == "application/json"
    assert "3f2a9c1" in slack.body["text"]
    assert "succeeded" in slack.body["text"]
    assert slack.body["blocks"][0]["type"] == "header"
    assert "3f2a9c1" in discord.body["content"]
    embed = discord.body["embeds"][0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Release"] == "`3f2a9c1`"
    assert fields["Outcome"] == "success"
    assert fields["Hosts"] == "10.201.0.2, 10.201.0.3"
    assert embed["url"].endswith("/actions/runs/1/attempts/1")
    assert discord.body["allowed_mentions"] == {"parse": []}
    _assert_no_secret(caplog, results)
    assert "slack notified" in caplog.text
    assert "discord notified" in caplog.text


def test_urls_come_from_env(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SLACK_WEBHOOK_ENV, receiver.url(SLACK_SECRET))
    monkeypatch.setenv(DISCORD_WEBHOOK_ENV, receiver.url(DISCORD_SECRET))
    event = _event(outcome="rollback", failed_phase="health", message="health check failed")
    results = notify(event, retry_delay_s=0)
    assert [r.ok for r in results] == [True, True]
    (slack,) = receiver.posts(SLACK_SECRET)
    (discord,) = receiver.posts(DISCORD_SECRET)
    assert "rolled back" in slack.body["text"]
    assert "failed phase: health" in slack.body["text"]
    assert discord.body["embeds"][0]["description"] == "health check failed"
    assert {"name": "Failed phase", "value": "health", "inline": True} in discord.body["embeds"][0][
        "fields"
    ]


def test_explicit_empty_url_turns_a_notifier_off(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SLACK_WEBHOOK_ENV, receiver.url(SLACK_SECRET))
    monkeypatch.setenv(DISCORD_WEBHOOK_ENV, receiver.url(DISCORD_SECRET))
    results = notify(_event(), slack_url="", retry_delay_s=0)
    assert [r.notifier for r in results] == ["discord"]
    assert receiver.posts(SLACK_SECRET) == []


def test_nothing_configured_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SLACK_WEBHOOK_ENV, raising=False)
    monkeypatch.delenv(DISCORD_WEBHOOK_ENV, raising=False)
    assert notify(_event()) == []


def test_webhook_urls_prefers_explicit_and_drops_blank() -> None:
    env = {SLACK_WEBHOOK_ENV: "https://env/slack", DISCORD_WEBHOOK_ENV: "  "}
    assert webhook_urls(env) == {"slack": "https://env/slack"}
    assert webhook_urls(env, slack_url="https://explicit/slack") == {
        "slack": "https://explicit/slack"
    }
    assert webhook_urls(env, slack_url="", discord_url="https://d") == {"discord": "https://d"}


def test_server_error_is_retried_once_then_reported(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    slack = receiver.url(SLACK_SECRET, Behaviour(status=500, body=b"internal_error"))
    discord = receiver.url(DISCORD_SECRET)
    results = notify(
        _event(outcome="failure"), slack_url=slack, discord_url=discord, retry_delay_s=0
    )
    assert results[0] == NotifyResult(
        "slack", ok=False, attempts=2, status=500, error="HTTP 500: internal_error"
    )
    assert results[1].ok
    assert len(receiver.posts(SLACK_SECRET)) == 2
    assert "slack notification failed after 2 attempts: HTTP 500: internal_error" in caplog.text
    _assert_no_secret(caplog, results)


def test_error_body_echoing_the_url_is_redacted(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    slack = receiver.url(SLACK_SECRET)
    receiver.url(SLACK_SECRET, Behaviour(status=400, body=f"bad hook {slack}".encode()))
    (result,) = notify(_event(), slack_url=slack, discord_url="", retry_delay_s=0)
    assert result.error == "HTTP 400: bad hook <webhook>"
    _assert_no_secret(caplog, [result])


def test_client_error_is_not_retried(receiver: Receiver) -> None:
    slack = receiver.url(SLACK_SECRET, Behaviour(status=404, body=b"no_service"))
    (result,) = notify(_event(), slack_url=slack, discord_url="", retry_delay_s=0)
    assert result == NotifyResult(
        "slack", ok=False, attempts=1, status=404, error="HTTP 404: no_service"
    )
    assert len(receiver.posts(SLACK_SECRET)) == 1


def test_rate_limit_is_retried(receiver: Receiver) -> None:
    discord = receiver.url(DISCORD_SECRET, Behaviour(status=429, body=b'{"retry_after": 0}'))
    (result,) = notify(_event(), slack_url="", discord_url=discord, retry_delay_s=0)
    assert not result.ok
    assert result.attempts == 2


def test_retry_can_be_turned_off(receiver: Receiver) -> None:
    slack = receiver.url(SLACK_SECRET, Behaviour(status=503))
    (result,) = notify(_event(), slack_url=slack, discord_url="", retry=False)
    assert result.attempts == 1
    assert len(receiver.posts(SLACK_SECRET)) == 1


def test_hanging_receiver_is_bounded_and_reported(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    # The receiver holds its answer until the test ends: only the client's timeout can end
    # each attempt. The bound on the wait is generous (the budget is 1.7 s) so that a loaded
    # machine passes, and still far below the 30 s the receiver would hold the caller.
    slack = receiver.url(SLACK_SECRET, Behaviour(delay=30))
    discord = receiver.url(DISCORD_SECRET)
    started = time.monotonic()
    results = notify(_event(), slack_url=slack, discord_url=discord, timeout=0.3, retry_delay_s=0.1)
    assert time.monotonic() - started < 15
    assert results[0] == NotifyResult(
        "slack", ok=False, attempts=2, status=None, error="no answer within 0.3 s"
    )
    assert results[1].ok
    _assert_no_secret(caplog, results)


def test_trickling_receiver_cannot_hold_the_caller(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    # Each byte arrives (every 0.1 s) well inside the 1 s socket timeout, so only the overall
    # deadline (2 x 1 s + 1 s) can stop it; the receiver trickles until the test ends. The
    # bound on the wait is generous so that a loaded machine passes.
    slack = receiver.url(SLACK_SECRET, Behaviour(trickle=True))
    started = time.monotonic()
    (result,) = notify(_event(), slack_url=slack, discord_url="", timeout=1, retry_delay_s=0)
    assert time.monotonic() - started < 15
    assert not result.ok
    assert result.attempts == 1
    assert result.error is not None and "gave up after 3 s" in result.error
    _assert_no_secret(caplog, [result])


def test_connection_refused_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    results = notify(
        _event(),
        slack_url=_refused_url(SLACK_SECRET),
        discord_url=_refused_url(DISCORD_SECRET),
        timeout=5,  # a refusal is immediate; the timeout only has to be out of its way
        retry_delay_s=0,
    )
    for result in results:
        assert not result.ok
        assert result.attempts == 2
        assert result.error is not None and "Connection refused" in result.error
    assert "slack notification failed" in caplog.text
    assert "discord notification failed" in caplog.text
    _assert_no_secret(caplog, results)


def test_redirect_is_not_followed(receiver: Receiver) -> None:
    elsewhere = receiver.url("/elsewhere")
    slack = receiver.url(SLACK_SECRET, Behaviour(status=302, body=b"", location=elsewhere))
    (result,) = notify(_event(), slack_url=slack, discord_url="", retry_delay_s=0)
    assert not result.ok
    assert result.status == 302
    assert receiver.posts("/elsewhere") == []


def test_non_http_url_is_refused_without_raising(caplog: pytest.LogCaptureFixture) -> None:
    (result,) = notify(_event(), slack_url="file:///etc/passwd", discord_url="", retry_delay_s=0)
    assert result == NotifyResult("slack", ok=False, attempts=0, error="webhook URL is not http(s)")
    assert "/etc/passwd" not in caplog.text


def test_malformed_url_is_reported_without_the_url(caplog: pytest.LogCaptureFixture) -> None:
    (result,) = notify(
        _event(), slack_url="http://[::1" + SLACK_SECRET, discord_url="", retry_delay_s=0
    )
    assert result == NotifyResult("slack", ok=False, attempts=0, error="webhook URL is malformed")
    _assert_no_secret(caplog, [result])


def test_event_rejects_unknown_outcome() -> None:
    with pytest.raises(ValueError, match="'partial' is not one of: success, failure, rollback"):
        _event(outcome="partial")


def test_slack_payload_escapes_and_stays_within_limits() -> None:
    event = _event(
        outcome="failure",
        failed_phase="deploy",
        message="<!channel> pyinfra failed & " + "x" * 5000,
        hosts=[f"10.201.0.{i}" for i in range(30)],
        run_url="https://ci/run?a=1|2",
    )
    payload = slack_payload(event)
    assert "<!channel>" not in json.dumps(payload)
    section = payload["blocks"][2]["text"]["text"]
    assert section.startswith("&lt;!channel&gt; pyinfra failed &amp; ")
    assert len(section) <= 3000
    fields = [f["text"] for f in payload["blocks"][1]["fields"]]
    assert "*Failed phase*\ndeploy" in fields
    assert any(f.endswith("and 10 more") for f in fields)
    assert payload["blocks"][-1]["elements"][0]["text"] == "<https://ci/run?a=1%7C2|CI run>"
    assert len(payload["blocks"][0]["text"]["text"]) <= 150


def test_discord_payload_stays_within_limits() -> None:
    event = _event(outcome="failure", message="y" * 10000, release="r" * 2000, run_url=None)
    payload = discord_payload(event)
    embed = payload["embeds"][0]
    assert len(payload["content"]) <= 2000
    assert len(embed["description"]) <= 4096
    assert all(0 < len(f["value"]) <= 1024 for f in embed["fields"])
    assert "url" not in embed
    assert embed["color"] == 0xE01E5A


def test_headline_formats_long_durations() -> None:
    assert "in 3 min 5 s" in _event(duration_s=185.2).headline
    assert "on 1 host in" in _event(hosts=["h"]).headline


APP_SECRET = "sk-abc123def456ghi789jkl"


def test_payloads_never_carry_a_token_from_the_message() -> None:
    event = _event(
        outcome=Outcome.FAILURE,
        failed_phase="health",
        message=(
            f"10.201.0.2: failed in health (OPENAI_API_KEY={APP_SECRET}); "
            "token ghp_" + "a1B2" * 9 + " -----BEGIN RSA PRIVATE KEY-----\nMIIEow\n"
            "-----END RSA PRIVATE KEY-----"
        ),
    )
    for payload in (slack_payload(event), discord_payload(event)):
        text = json.dumps(payload)
        assert APP_SECRET not in text and "ghp_" not in text and "MIIEow" not in text
        assert "OPENAI_API_KEY=***" in text
        assert "3f2a9c1" in text and "10.201.0.2" in text
        assert "https://github.com/acme/ai-server/actions/runs/1/attempts/1" in text


def test_the_event_message_is_blanked_where_it_is_made() -> None:
    event = _event(message=f"xoxp-0123456789-zzzz and api_key: {APP_SECRET}")
    assert event.message == "*** and api_key: ***"
