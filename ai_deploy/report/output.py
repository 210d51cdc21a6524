"""Output for people reading a CI log: GitHub Actions workflow commands when running there,
plain text anywhere else.

Inside GitHub Actions (GITHUB_ACTIONS=true) phases become collapsible log groups, errors become
`::error::` annotations, secrets are masked with `::add-mask::`, and a Markdown job summary is
appended to GITHUB_STEP_SUMMARY. Elsewhere the same calls print plain headings and messages, so
a run from a laptop reads the same and shows no `::` noise.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from ai_deploy.report.notify import DeployEvent, Outcome
from ai_deploy.report.secretlike import redact

__all__ = [
    "GITHUB_ACTIONS_ENV",
    "STEP_SUMMARY_ENV",
    "VERBOSE_ENV",
    "Phases",
    "add_mask",
    "closing_lines",
    "commands_stopped",
    "error",
    "escape_data",
    "escape_property",
    "group",
    "in_github_actions",
    "render_step_summary",
    "run_url",
    "verbose",
    "warning",
    "write_step_summary",
]

logger = logging.getLogger(__name__)

GITHUB_ACTIONS_ENV = "GITHUB_ACTIONS"
STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"
VERBOSE_ENV = "AI_DEPLOY_VERBOSE"  # set by -v; a CI job may set it for every step

_MAX_SUMMARY_MESSAGE_CHARS = 4000
_OUTCOME_MARK = {
    Outcome.SUCCESS: "\u2705",
    Outcome.FAILURE: "\u274c",
    Outcome.ROLLBACK: "\u21a9\ufe0f",
}
_OUTCOME_VERB = {
    Outcome.SUCCESS: "succeeded",
    Outcome.FAILURE: "failed",
    Outcome.ROLLBACK: "rolled back",
}

# GitHub Actions has no nested groups: an inner ::group:: silently ends the outer one. Inner
# groups are therefore printed as plain headings; this counts how deep we are.
_group_depth = 0


def in_github_actions(env: Mapping[str, str] | None = None) -> bool:
    """True when running as a GitHub Actions step (GITHUB_ACTIONS is exactly "true")."""
    environ = os.environ if env is None else env
    return environ.get(GITHUB_ACTIONS_ENV) == "true"


def verbose(env: Mapping[str, str] | None = None) -> bool:
    """True when pyinfra's whole stream is wanted (`-v`, or AI_DEPLOY_VERBOSE set to 1, true,
    yes or on) instead of each host's events."""
    environ = os.environ if env is None else env
    return environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def escape_data(text: str) -> str:
    """TEXT made safe as the data part of a workflow command (after the last `::`): %, CR and
    LF are percent-encoded, so a message cannot end the command or start a new one."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """TEXT made safe as a workflow command property value (`title=...`): as escape_data(),
    plus `:` and `,`, which would otherwise end the value."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _out(stream: TextIO | None) -> TextIO:
    # Looked up at call time so redirected or captured stdout is honoured.
    return sys.stdout if stream is None else stream


def _emit(line: str, stream: TextIO | None) -> None:
    out = _out(stream)
    # Flushed so the command lands in order with output of subprocesses sharing the log.
    out.write(line + "\n")
    out.flush()


@contextmanager
def group(
    title: str, *, env: Mapping[str, str] | None = None, stream: TextIO | None = None
) -> Iterator[None]:
    """Everything printed inside is one collapsible group titled TITLE in a GitHub Actions log
    (`::group::` ... `::endgroup::`, the end printed on every exit path, exceptions included);
    elsewhere, and for a group inside a group, a plain `==> TITLE` heading instead."""
    global _group_depth
    as_group = in_github_actions(env) and _group_depth == 0
    if as_group:
        _emit(f"::group::{escape_data(title)}", stream)
    else:
        _emit(f"==> {title}", stream)
    _group_depth += 1
    try:
        yield
    finally:
        _group_depth -= 1
        if as_group:
            _emit("::endgroup::", stream)


def _annotation(
    kind: str,
    message: str,
    title: str | None,
    file: str | None,
    line: int | None,
    env: Mapping[str, str] | None,
    stream: TextIO | None,
) -> None:
    # An annotation is shown on the run's page, outside the masked log: nothing token-like.
    message = redact(message)
    if in_github_actions(env):
        props = []
        if file:
            props.append(f"file={escape_property(file)}")
            if line is not None:
                props.append(f"line={int(line)}")
        if title:
            props.append(f"title={escape_property(title)}")
        head = f"::{kind} {','.join(props)}" if props else f"::{kind}"
        _emit(f"{head}::{escape_data(message)}", stream)
        return
    where = f"{file}:{line}: " if file and line is not None else f"{file}: " if file else ""
    prefix = f"{kind}: {where}" + (f"{title}: " if title else "")
    _emit(prefix + message, sys.stderr if stream is None else stream)


def error(
    message: str,
    title: str | None = None,
    *,
    file: str | None = None,
    line: int | None = None,
    env: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> None:
    """Report MESSAGE as an error: an `::error title=...::` annotation in GitHub Actions (shown on
    the run's page; all values escaped, so the text cannot inject other commands), else an
    `error: TITLE: MESSAGE` line on stderr. Key- or token-like values in MESSAGE are shown as
    *** (see ai_deploy.report.secretlike)."""
    _annotation("error", message, title, file, line, env, stream)


def warning(
    message: str,
    title: str | None = None,
    *,
    file: str | None = None,
    line: int | None = None,
    env: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> None:
    """As error(), for a warning (`::warning ...::`, or `warning: ...` on stderr)."""
    _annotation("warning", message, title, file, line, env, stream)


def add_mask(
    value: str, *, env: Mapping[str, str] | None = None, stream: TextIO | None = None
) -> None:
    """Have GitHub Actions replace VALUE with *** in the rest of the log. A value of several
    lines is masked whole and line by line, since the log is matched per line. Prints nothing
    outside GitHub Actions, or for an empty value (masking "" would be meaningless)."""
    if not value or not in_github_actions(env):
        return
    parts = [value]
    if "\n" in value or "\r" in value:
        parts += [piece.strip() for piece in value.splitlines() if piece.strip()]
    for part in parts:
        _emit(f"::add-mask::{escape_data(part)}", stream)


@contextmanager
def commands_stopped(
    *, env: Mapping[str, str] | None = None, stream: TextIO | None = None
) -> Iterator[None]:
    """Inside, GitHub Actions ignores workflow commands, so output that is not ours (a host's
    command output streamed through pyinfra) cannot set masks, annotations or groups. Uses a
    fresh random token each time. A no-op outside GitHub Actions."""
    if not in_github_actions(env):
        yield
        return
    token = secrets.token_hex(16)
    _emit(f"::stop-commands::{token}", stream)
    try:
        yield
    finally:
        _emit(f"::{token}::", stream)


def run_url(env: Mapping[str, str] | None = None) -> str | None:
    """The link to this workflow run (this attempt when known), from the variables GitHub
    Actions sets; None outside GitHub Actions or when any is missing."""
    environ = os.environ if env is None else env
    server = environ.get("GITHUB_SERVER_URL", "").rstrip("/")
    repository = environ.get("GITHUB_REPOSITORY", "")
    run_id = environ.get("GITHUB_RUN_ID", "")
    if not (in_github_actions(environ) and server and repository and run_id):
        return None
    url = f"{server}/{repository}/actions/runs/{run_id}"
    attempt = environ.get("GITHUB_RUN_ATTEMPT", "")
    return f"{url}/attempts/{attempt}" if attempt else url


class Phases:
    """Runs the named phases of a deploy, each in its own log group, and records how long each
    took and which one failed first.

    + durations: seconds per phase name, in the order the phases ran (a phase run twice adds up)
    + failed: the first phase that ended with an exception, or None

    Example:
        phases = Phases()
        with phases.phase("firewall", "Open the firewall window"):
            ...
        write_step_summary(event, phases.durations)
    """

    def __init__(
        self, *, env: Mapping[str, str] | None = None, stream: TextIO | None = None
    ) -> None:
        self.durations: dict[str, float] = {}
        self.failed: str | None = None
        self._env = env
        self._stream = stream

    @contextmanager
    def phase(self, name: str, title: str | None = None) -> Iterator[None]:
        """Run the body as phase NAME inside group(TITLE or NAME); its time is recorded on every
        exit path, and an exception (KeyboardInterrupt included) marks it failed, then goes on."""
        started = time.monotonic()
        try:
            with group(title or name, env=self._env, stream=self._stream):
                yield
        except BaseException:
            if self.failed is None:
                self.failed = name
            raise
        finally:
            self.durations[name] = self.durations.get(name, 0.0) + time.monotonic() - started

    def fail(self, name: str) -> None:
        """Mark NAME failed (when it ended with a failing result rather than an exception)."""
        if self.failed is None:
            self.failed = name


def closing_lines(
    event: DeployEvent, phases: Mapping[str, float] | Sequence[tuple[str, float]] = ()
) -> list[str]:
    """How deploy, rollback and restart end: each phase that ran with its time (the failed one
    marked), then EVENT's headline (outcome, release, hosts, total time)."""
    rows = list(phases.items()) if isinstance(phases, Mapping) else list(phases)
    times = [
        f"{name} {_seconds(seconds)}" + (" (failed)" if name == event.failed_phase else "")
        for name, seconds in rows
    ]
    return ([f"phases: {', '.join(times)}"] if times else []) + [event.headline]


def _cell(text: str) -> str:
    # Markdown table cells: a pipe ends the cell and a newline ends the row; angle brackets
    # would be read as HTML.
    flat = " ".join(text.split())
    return flat.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f} s"
    minutes, rest = divmod(round(value), 60)
    return f"{minutes} min {rest} s"


def _fenced(text: str) -> list[str]:
    # A fence longer than any run of backticks inside, so the text cannot close it.
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, text, fence]


def render_step_summary(
    event: DeployEvent, phases: Mapping[str, float] | Sequence[tuple[str, float]] = ()
) -> str:
    """The Markdown job summary for EVENT: a heading with the outcome, a table with release,
    outcome, hosts, total duration, failed phase and run link, a table of PHASES (name and
    seconds, in the order given, the failed one marked) and the message in a code block.
    Values from the event are escaped, so none can break the tables or inject HTML; the message
    is the event's short reason, with anything key- or token-like already blanked."""
    outcome = Outcome(event.outcome)
    lines = [
        f"## {_OUTCOME_MARK[outcome]} {_cell(event.service)} deploy {_OUTCOME_VERB[outcome]}",
        "",
        "| | |",
        "| --- | --- |",
        f"| Release | `{_cell(event.release).replace('`', '')}` |",
        f"| Outcome | {outcome.value} |",
        f"| Hosts | {_cell(', '.join(event.hosts)) if event.hosts else 'none'} |",
        f"| Duration | {_seconds(event.duration_s)} |",
    ]
    if event.failed_phase:
        lines.append(f"| Failed phase | {_cell(event.failed_phase)} |")
    if event.run_url:
        target = event.run_url.replace("(", "%28").replace(")", "%29").replace(" ", "%20")
        lines.append(f"| CI run | [{_cell(event.run_url)}]({target}) |")
    rows = list(phases.items()) if isinstance(phases, Mapping) else list(phases)
    if rows:
        lines += ["", "### Phases", "", "| Phase | Duration | |", "| --- | ---: | --- |"]
        for name, seconds in rows:
            mark = "\u274c failed" if name == event.failed_phase else "\u2705"
            lines.append(f"| {_cell(name)} | {_seconds(seconds)} | {mark} |")
    if event.message:
        message = event.message
        if len(message) > _MAX_SUMMARY_MESSAGE_CHARS:
            message = message[:_MAX_SUMMARY_MESSAGE_CHARS] + "\n[... cut]"
        lines += ["", *_fenced(message)]
    return "\n".join(lines) + "\n"


def write_step_summary(
    event: DeployEvent,
    phases: Mapping[str, float] | Sequence[tuple[str, float]] = (),
    *,
    env: Mapping[str, str] | None = None,
) -> Path | None:
    """Append render_step_summary(EVENT, PHASES) to the file named by GITHUB_STEP_SUMMARY and
    return its path; None, writing nothing, when that variable is unset or empty. Appends (never
    truncates), so summaries of several steps or runs stay. A summary that cannot be written is
    logged as a warning, never raised: it must not change a deploy's outcome."""
    environ = os.environ if env is None else env
    target = environ.get(STEP_SUMMARY_ENV, "")
    if not target:
        return None
    path = Path(target)
    try:
        with path.open("a", encoding="utf-8") as summary:
            summary.write(render_step_summary(event, phases))
    except OSError as exc:
        logger.warning("could not write the job summary to %s: %s", path, exc)
        return None
    return path
