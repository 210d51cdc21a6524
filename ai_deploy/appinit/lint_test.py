"""What the workflow's lint-test job runs, decided by `ai-deploy init` from what the app has
(the packages in its uv.lock, files pytest would collect), so the job is green on the first push
of an app that has no tests yet; the rendered steps say what was skipped and why."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

from ai_deploy.appinit.detect import has_tests, locked_packages

RUFF_PINNED = "uvx ruff@0.17.6 check ."  # ruff from the registry, at a fixed version
RUFF_LOCKED = "uv run --frozen ruff check ."
PYTEST = "uv run --frozen pytest"
_INDENT = "      "  # a step's key in the lint-test job


@dataclass(frozen=True)
class LintTest:
    """The Lint command, the Test command (None: skipped) and why, in sentences."""

    lint: str
    test: str | None
    why: tuple[str, ...]

    @classmethod
    def of(cls, app_dir: Path) -> LintTest:
        packages = locked_packages(app_dir)
        tests, pytest = has_tests(app_dir), "pytest" in packages
        if "ruff" in packages:
            lint, why = RUFF_LOCKED, ["Lint: ruff is in uv.lock, so its locked version runs."]
        else:
            lint, why = RUFF_PINNED, ["Lint: ruff is not in uv.lock, so a pinned one runs."]
        if tests and pytest:
            return cls(lint, PYTEST, (*why, "Test: pytest is in uv.lock and the app has tests."))
        missing = {
            (False, False): "the app has no tests (test_*.py, *_test.py) and pytest is not in "
            "uv.lock",
            (True, False): "the app has tests but pytest is not in uv.lock",
            (False, True): "pytest is in uv.lock but the app has no tests (test_*.py, "
            "*_test.py), and pytest fails when it collects none",
        }[(tests, pytest)]
        return cls(lint, None, (*why, f"Test is skipped: {missing}."))

    @property
    def skipped(self) -> str | None:
        """Why Test is skipped (for init to say); None when it runs."""
        return None if self.test else self.why[-1].removeprefix("Test is skipped: ").rstrip(".")

    def steps(self) -> str:
        """The Lint and Test steps of the lint-test job, with the reasons as a comment."""
        said = " ".join(self.why)
        if self.test is None:
            said += (
                " Add tests and `uv add --dev pytest` (the Install step syncs the dev group),"
                f" then set the Test step's run to `{PYTEST}`."
            )
        comment = textwrap.fill(
            f"Chosen by `ai-deploy init` from what the app had. {said}",
            width=100,
            initial_indent=f"{_INDENT}# ",
            subsequent_indent=f"{_INDENT}# ",
            break_on_hyphens=False,
        )
        lint = f"{_INDENT}- name: Lint\n{_INDENT}  run: {self.lint}\n"
        if self.test is not None:
            test = f"{_INDENT}- name: Test\n{_INDENT}  run: {self.test}\n"
        else:
            # Fixed text in single quotes (no quote in it): the shell expands nothing.
            notice = f"::notice title=Tests skipped::{self.skipped} (see the workflow file)"
            test = f"{_INDENT}- name: Test (skipped)\n{_INDENT}  run: echo '{notice}'\n"
        return f"{comment}\n{lint}\n{test}"


__all__ = ["LintTest"]
