"""The day-2 verbs' pure parts: times shown as local time and age, `--since`, log line
selection, revisions.log read back, and what releases, audit and status print."""

from __future__ import annotations

import re
import time
from datetime import datetime

import pytest

from ai_deploy.commands import audit, releases, status
from ai_deploy.commands.logfilter import select, stamp_of
from ai_deploy.commands.when import age, local_time, parse_iso, parse_since, when_text
from ai_deploy.host.revisions import Revision, parse_revision, parse_revisions

pytestmark = pytest.mark.unit
NOW = 1_795_990_800.0  # 2026-11-29T22:20:00Z


def local(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# --- times ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s ago"),
        (59, "59 s ago"),
        (60, "1 min ago"),
        (180, "3 min ago"),
        (3600, "1 h ago"),
        (3600 + 5 * 60, "1 h 5 min ago"),
        (86400, "1 day ago"),
        (4 * 86400 + 7, "4 days ago"),
        (-120, "in 2 min"),
    ],
)
def test_age_reads_as_people_say_it(seconds: float, text: str) -> None:
    assert age(seconds) == text


def test_when_text_is_local_time_and_age() -> None:
    epoch = local("2026-11-29 22:10:30")
    assert when_text(epoch, epoch + 180) == "2026-11-29 22:10 (3 min ago)"
    assert local_time(epoch) == "2026-11-29 22:10"
    assert when_text(None, NOW) == "unknown"


def test_parse_iso_reads_revisions_log_times_as_utc() -> None:
    assert parse_iso("2026-11-29T22:20:00Z") == NOW
    assert parse_iso("2026-11-29T22:20:00+00:00") == NOW
    assert parse_iso("not a time") is None


@pytest.mark.parametrize(
    ("text", "back"),
    [
        ("10m", 600),
        ("2h", 7200),
        ("1d", 86400),
        ("30 s", 30),
        ("2 hours ago", 7200),
        ("1w", 604800),
    ],
)
def test_since_durations_count_back_from_now(text: str, back: float) -> None:
    assert parse_since(text, NOW) == NOW - back


def test_since_times_and_dates_are_local() -> None:
    today = datetime.fromtimestamp(NOW).replace(hour=0, minute=0, second=0, microsecond=0)
    assert parse_since("today", NOW) == today.timestamp()
    assert parse_since("yesterday", NOW) == today.timestamp() - 86400
    assert parse_since("22:10", NOW) == today.replace(hour=22, minute=10).timestamp()
    assert parse_since("2026-11-29 22:10", NOW) == local("2026-11-29 22:10")
    assert parse_since("2026-11-29T22:20:00Z", NOW) == NOW


@pytest.mark.parametrize("bad", ["", "soon", "10 parsecs", "2026-13-45", "-5m", "25:99"])
def test_since_refuses_what_it_cannot_read_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match="--since"):
        parse_since(bad, NOW)


# --- log lines ------------------------------------------------------------------------------


def test_stamps_in_the_usual_formats() -> None:
    assert stamp_of("2026-11-29 22:10:05 INFO ready") == local("2026-11-29 22:10:05")
    assert stamp_of("2026-11-29 22:10:05,250 INFO x") == local("2026-11-29 22:10:05.25")
    assert stamp_of("[2026-11-29T22:20:00Z] x") == NOW
    assert stamp_of("2026-11-29T23:20:00+0100 x") == NOW
    assert stamp_of("INFO:     Started server process [42]") is None
    assert stamp_of('  File "main.py", line 3') is None


LOG = [
    "INFO:     before any stamp",
    "2026-11-29 22:00:00 old line",
    "Traceback (most recent call last):",
    "  old traceback line",
    "2026-11-29 22:15:00 new line",
    "Traceback (most recent call last):",
    "  new traceback line",
    "2026-11-29 22:16:00 newer GET /health",
]


def test_since_keeps_stamped_lines_and_the_unstamped_lines_after_them() -> None:
    chosen = select(LOG, since=local("2026-11-29 22:10"))
    assert chosen.lines == LOG[4:]
    assert not chosen.unstamped


def test_since_over_unstamped_lines_shows_none_and_says_so() -> None:
    chosen = select(["INFO: a", "INFO: b"], since=NOW)
    assert chosen.lines == []
    assert chosen.unstamped


def test_grep_and_last_apply_after_since() -> None:
    pattern = re.compile(r"traceback|GET")
    assert select(LOG, pattern=pattern).lines == [LOG[3], LOG[6], LOG[7]]
    assert select(LOG, pattern=pattern, last=2).lines == [LOG[6], LOG[7]]
    assert select(LOG, since=local("2026-11-29 22:10"), pattern=pattern, last=5).lines == [
        LOG[6],
        LOG[7],
    ]
    assert select(LOG, last=0).lines == []


# --- revisions.log --------------------------------------------------------------------------


def test_revision_lines_read_back_as_written() -> None:
    line = "2026-11-29T22:20:00Z deploy abc123 ok by=alice@laptop previous=xyz reason='a b'"
    assert parse_revision(line) == Revision(
        "2026-11-29T22:20:00Z",
        "deploy",
        "abc123",
        "ok",
        "alice@laptop",
        "previous=xyz reason='a b'",
    )
    assert parse_revision("2026-11-29T22:20:00Z lock-release - ok by=ci@github-run-7") == Revision(
        "2026-11-29T22:20:00Z", "lock-release", "-", "ok", "ci@github-run-7"
    )


@pytest.mark.parametrize("junk", ["", "garbage", "2026-11-29T22:20:00Z deploy abc ok alice"])
def test_lines_that_are_not_revisions_are_skipped(junk: str) -> None:
    assert parse_revision(junk) is None
    assert parse_revisions([junk]) == []


# --- releases -------------------------------------------------------------------------------

LISTED = [
    "AI-DEPLOY-RELEASE current new1",
    "AI-DEPLOY-RELEASE previous old1",
    "AI-DEPLOY-RELEASE release new1 96 1795990000 yes",
    "AI-DEPLOY-RELEASE release old1 2048 1795980000 yes",
    "AI-DEPLOY-RELEASE release bad1 10 1795970000 no",
    "noise from a login banner",
]
REVISIONS = parse_revisions(
    [
        "2026-11-29T21:00:00Z deploy old1 ok by=alice@laptop previous=-",
        "2026-11-29T22:00:00Z deploy new1 ok by=bob@github-run-9 previous=old1",
        "2026-11-29T22:05:00Z lock-release - ok by=carol@x reason='forced'",
        "2026-11-29T22:10:00Z restart new1 ok by=carol@x previous=new1",
    ]
)


def test_release_rows_join_the_last_line_that_put_each_in_service() -> None:
    current, previous, kept = releases.parse_list(LISTED)
    table = {r.release: r for r in releases.rows(current, previous, kept, REVISIONS)}
    assert list(table) == ["new1", "old1", "bad1"]
    assert (table["new1"].current, table["new1"].previous) == (True, False)
    assert (table["old1"].current, table["old1"].previous) == (False, True)
    assert (table["new1"].action, table["new1"].who) == ("restart", "carol@x")
    assert table["new1"].when == "2026-11-29T22:10:00Z"
    assert (table["old1"].action, table["old1"].who) == ("deploy", "alice@laptop")
    assert table["old1"].size_bytes == 2048 * 1024
    # Not in revisions.log: the directory's time, and said so.
    assert table["bad1"].action is None and table["bad1"].epoch == 1795970000
    assert not table["bad1"].healthy


def test_release_table_marks_current_previous_and_ages() -> None:
    current, previous, kept = releases.parse_list(LISTED)
    lines = releases.render("web-1", releases.rows(current, previous, kept, REVISIONS), NOW)
    assert lines[0] == "web-1"
    new1 = next(line for line in lines if "new1" in line)
    assert new1.strip().startswith("current  new1")
    assert "(10 min ago)" in new1 and "restart ok by carol@x" in new1 and "96.0 KiB" in new1
    assert next(line for line in lines if "old1" in line).strip().startswith("previous old1")
    bad = next(line for line in lines if "bad1" in line)
    assert "not in revisions.log" in bad and "never passed the health gate" in bad
    assert releases.render("web-2", [], NOW) == ["web-2", "  (no releases)"]


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (3 * 1024**3, "3.0 GiB")]
)
def test_sizes(n: int, text: str) -> None:
    assert releases.human_size(n) == text


# --- audit ----------------------------------------------------------------------------------


def test_audit_merges_hosts_newest_first_and_cuts_to_n() -> None:
    a = parse_revisions(
        [
            "2026-11-29T21:00:00Z deploy r1 ok by=x@y",
            "2026-11-29T22:00:00Z deploy r2 failed by=x@y reason='boom'",
        ]
    )
    b = parse_revisions(["2026-11-29T21:30:00Z deploy r1 ok by=x@y"])
    entries = audit.merged({"web-1": a, "web-2": b}, 10)
    assert [(e.host, e.revision.release) for e in entries] == [
        ("web-1", "r2"),
        ("web-2", "r1"),
        ("web-1", "r1"),
    ]
    assert [e.host for e in audit.merged({"web-1": a, "web-2": b}, 1)] == ["web-1"]
    lines = audit.render(entries, NOW)
    assert "(20 min ago)" in lines[0] and "web-1" in lines[0] and "failed" in lines[0]
    assert lines[0].endswith("reason='boom'")
    assert audit.render([], NOW) == ["(no entries in revisions.log)"]


# --- status ---------------------------------------------------------------------------------


def _report(code: int = 200, active: str = "active") -> dict[str, object]:
    body = f'{{"status":"ok","loaded_at":{NOW - 180}}}' if code == 200 else "starting"
    report: dict[str, object] = {
        "host": "web-1",
        "address": "10.0.0.5",
        "reachable": True,
        "current": "r2",
        "previous": "r1",
        "releases": ["r2", "r1"],
        "service": {
            "unit": "ai-server.service",
            "active": active,
            "sub": "running",
            "enabled": "enabled",
            "pid": 42,
        },
        "strategy": "restart",
        "health": status.health_fields(code, body),
        "lock": None,
        "lock_line": "free",
        "gpu": None,
        "revisions": [],
    }
    report["healthy"] = status.is_healthy(report)
    return report


def test_status_health_needs_200_and_an_active_service() -> None:
    assert _report()["healthy"]
    assert not _report(code=503)["healthy"]
    assert not _report(code=0)["healthy"]
    assert not _report(active="failed")["healthy"]
    assert not status.unreachable_report("web-2", "10.0.0.6", "refused")["healthy"]


def test_status_prints_loaded_at_as_local_time_and_age() -> None:
    report = _report()
    assert report["health"]["loaded_at"] == NOW - 180  # type: ignore[index]
    lines = status.render(report, NOW)
    assert lines[0] == "web-1 (10.0.0.5): healthy"
    assert f"  loaded:    {local_time(NOW - 180)} (3 min ago)" in lines
    assert status.health_fields(200, "not json") == {"code": 200, "body": "not json"}
    assert "loaded_at" not in status.health_fields(200, '{"loaded_at": "yesterday"}')


def test_status_names_an_unreachable_host_and_why() -> None:
    lines = status.render(status.unreachable_report("web-2", "10.0.0.6", "timed out"))
    assert lines == ["web-2 (10.0.0.6): UNREACHABLE", "  unreachable: timed out"]
    assert status.render(_report(active="inactive"), NOW)[0] == "web-1 (10.0.0.5): NOT HEALTHY"


def test_when_text_defaults_to_now() -> None:
    assert when_text(time.time() - 5).endswith("s ago)")
