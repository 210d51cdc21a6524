"""Our deploy, as a person runs it: `pyinfra -y INVENTORY deploy.py --data artifact=PATH
--data deploy_strategy=STRATEGY` (or `--data rollback=previous`), from the repository root."""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Callable
from pathlib import Path

from bench.proc import CmdResult, run_streamed
from testkit.remote import sudo, write_file

REPO = Path(__file__).resolve().parents[1]
APP_ROOT = "/app/ai-server"
STRATEGIES = ("restart", "socket", "bluegreen")


def pyinfra() -> Path:
    """The pyinfra of the interpreter running the benchmark (the project's venv)."""
    return Path(sys.executable).with_name("pyinfra")


def deploy_argv(inventory: Path, strategy: str, *data: str) -> list[str]:
    argv = [str(pyinfra()), "-y", str(inventory), "deploy.py"]
    for item in (*data, f"deploy_strategy={strategy}"):
        argv += ["--data", item]
    return argv


def group_data_value(name: str, group_data: Path = REPO / "group_data" / "all.py") -> object:
    """The literal default NAME has in group_data/all.py; None when it is not set there."""
    try:
        tree = ast.parse(group_data.read_text())
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name) and target.id == name:
                return value.value if isinstance(value, ast.Constant) else "?"
    return None


def strategy_setting() -> str | None:
    """The default of `deploy_strategy`, or None when this checkout's deploy has no such
    setting (then only its one built-in behaviour, restart, exists)."""
    value = group_data_value("deploy_strategy")
    return None if value is None else str(value)


def unavailable_reason(strategy: str) -> str | None:
    """Why STRATEGY cannot be measured with this checkout (a short phrase), or None when it can
    be tried. Without a deploy_strategy setting, pyinfra would silently ignore
    `--data deploy_strategy` and measure restart under another name."""
    if strategy not in STRATEGIES:
        return f"unknown strategy (known: {', '.join(STRATEGIES)})"
    if strategy != "restart" and strategy_setting() is None:
        return "not built in this checkout (group_data/all.py has no deploy_strategy)"
    return None


def setup_host(address: str, model_load_s: float) -> None:
    """The .env the deploy keeps (written before the first deploy), setting the model load."""
    sudo(address, f"mkdir -p {APP_ROOT}")
    write_file(
        address,
        f"{APP_ROOT}/.env",
        f"MODEL_LOAD_SECONDS={model_load_s:g}\n",
        mode="600",
        owner="ubuntu",
    )


def units(address: str) -> str:
    """What systemd on the host knows of the service's units (recorded with the results)."""
    return sudo(
        address,
        "systemctl list-units --all --no-legend --plain 'ai-server*' 2>&1; "
        "systemctl list-sockets --no-legend 2>/dev/null | grep -i ai-server || true; "
        "echo nginx: $(systemctl is-active nginx 2>/dev/null)",
        check=False,
    )


_ROUTINE = re.compile(r"^\[[^\]]+\] (No changes|Success|Connected|Ready: .*)$")


def interesting(line: str) -> bool:
    """pyinfra lines worth showing while the benchmark runs: what the deploy says per host
    (not its routine per-operation lines) and errors."""
    text = line.strip()
    if text.startswith("[") and not _ROUTINE.match(text):
        return True
    return text.startswith(("--> pyinfra error", "Error:", "Traceback"))


def _echo_filter(echo: Callable[[str], None] | None) -> Callable[[str], None] | None:
    if echo is None:
        return None

    def show(line: str) -> None:
        if interesting(line):
            echo(line.strip())

    return show


def run(
    inventory: Path,
    strategy: str,
    *data: str,
    timeout: float = 900.0,
    echo: Callable[[str], None] | None = None,
) -> CmdResult:
    return run_streamed(
        deploy_argv(inventory, strategy, *data), timeout=timeout, cwd=REPO, echo=_echo_filter(echo)
    )
