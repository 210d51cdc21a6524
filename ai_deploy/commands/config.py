"""`ai-deploy config [-e ENV] [--data K=V ...] [--json]`: every setting, its merged value and
where that value came from (a value derived from app_name says so; the environment's hosts,
ssh_user and ssh_key, and the SSH variables, are listed too), after the same checks a deploy
makes. Secret-looking values are masked; the .env text (env_default) is never printed, nor is
env_file read, nor a key given as text."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ai_deploy.settings.check import SettingsError
from ai_deploy.settings.merge import Setting, merged_settings
from ai_deploy.settings.ssh import KEY, written_from_text

MASK = "********"
_SECRET_NAME = re.compile(r"key|token|secret|passw|passphrase|credential|auth", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_ENV_TEXT = ("env_default",)  # the .env text itself


def shown(name: str, value: Any) -> Any:
    """VALUE as it may be printed: masked when NAME looks secret, .env text replaced by its
    length, credentials in URLs and secret-looking table entries masked."""
    if value is None or value == "" or isinstance(value, bool):
        return value
    if name in _ENV_TEXT:
        return f"<{len(str(value))} characters of .env text, not shown>"
    if name == KEY:  # a path; a key given as text was written to a private file
        return "<the key's text, not shown>" if written_from_text(value) else value
    if _SECRET_NAME.search(name):
        return MASK
    if isinstance(value, dict):
        return {k: shown(str(k), v) for k, v in value.items()}
    if isinstance(value, str):
        return _URL_USERINFO.sub(f"{MASK}@", value)
    return value


def render(settings: dict[str, Setting]) -> list[str]:
    width = max((len(name) for name in settings), default=0)
    return [
        f"{s.name:<{width}} = {shown(s.name, s.value)!r}  # {s.source}" for s in settings.values()
    ]


def show_config(environment: str | None, data: Sequence[str], as_json: bool = False) -> int:
    """Print the merged settings; 2 with a line per problem when they do not check."""
    try:
        settings = merged_settings(environment or "", list(data), Path.cwd())
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"ai-deploy: error: {problem}", file=sys.stderr)
        return 2
    from ai_deploy.ci.env_settings import env_rows

    from_env = env_rows(os.environ, MASK)
    if as_json:
        rows = [
            {"name": s.name, "value": shown(s.name, s.value), "source": s.source}
            for s in settings.values()
        ]
        rows += [{"name": n, "value": v, "source": src} for n, v, src in from_env]
        print(json.dumps(rows, indent=2, default=str))
    else:
        print("\n".join(render(settings)))
        print("\n# the deploy's environment variables")
        width = max(len(n) for n, _, _ in from_env)
        print("\n".join(f"{n:<{width}} = {v!r}  # {src}" for n, v, src in from_env))
    return 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "config",
        help="every setting with its value and where it comes from (checked, secrets masked)",
        description="Print every setting, its merged value and its source: group_data/all.py, "
        "group_data/prod.py, ai-deploy.toml (or AI_DEPLOY_SETTINGS), its "
        "[environments.ENV] table (hosts, ssh_user, ssh_key), the SSH variables, --data; later "
        "ones win; names left to app_name say 'derived from app_name'. Exits 2 naming each "
        "unknown or ill-typed setting or missing env_file / ssh_key file.",
    )
    parser.add_argument(
        "-e", "--environment", metavar="ENV", help="apply [environments.ENV] of ai-deploy.toml"
    )
    parser.add_argument(
        "--data", action="append", default=[], metavar="KEY=VALUE", help="as pyinfra's --data"
    )
    parser.add_argument("--json", action="store_true", help="a JSON list of name, value, source")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return show_config(args.environment, args.data, args.json)
