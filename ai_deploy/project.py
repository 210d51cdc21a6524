"""Where the pyinfra project lives (deploy.py, tasks/, templates/, group_data/, inventories/):
this checkout when run from one, else the copy the wheel carries inside the package, so an
installed `ai-deploy` deploys with no checkout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent
CHECKOUT = PACKAGE.parent
PACKAGED = PACKAGE / "bundled"  # the wheel puts the pyinfra project here (pyproject.toml)
DEFAULT_INVENTORY = "inventories/prod.py"


class ProjectError(Exception):
    """The pyinfra project or one of its files cannot be found; the message says which."""


def _is_project(path: Path) -> bool:
    return (path / "deploy.py").is_file() and (path / "tasks").is_dir()


def project_dir() -> Path:
    """The directory holding deploy.py, tasks/, templates/ and group_data/."""
    for candidate in (CHECKOUT, PACKAGED):
        if _is_project(candidate):
            return candidate
    raise ProjectError(
        f"deploy.py not found in {CHECKOUT} or {PACKAGED}: reinstall ai-deploy from its wheel"
    )


def template(name: str) -> str:
    """The path of templates/NAME."""
    return str(project_dir() / "templates" / name)


def group_data_defaults() -> dict[str, Any]:
    """The settings of group_data/all.py with their defaults (names not starting with _), the
    ones it leaves to app_name derived from its app_name."""
    from ai_deploy.settings.derive import derived_values

    path = project_dir() / "group_data" / "all.py"
    scope: dict[str, Any] = {"__file__": str(path)}
    exec(compile(path.read_text(), str(path), "exec"), scope)
    values = {k: v for k, v in scope.items() if not k.startswith("_")}
    return {**values, **derived_values(values)}
