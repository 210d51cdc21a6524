"""The command line as one list of verbs: each verb's module adds its own parser, and building
the parser loads neither pyinfra nor the GCP client libraries (every verb's module is imported
for it, so `ai-deploy --help` stays quick)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from ai_deploy import cli

pytestmark = pytest.mark.unit


def test_each_verb_comes_from_its_own_module() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    names = list(sub.choices)
    assert len(names) == len(cli.VERBS)
    for verb, name in zip(cli.VERBS, names, strict=True):
        defaults = sub.choices[name]._defaults
        func = defaults.get("func")
        if func is None:  # a verb with actions: its actions' functions
            inner = next(
                a for a in sub.choices[name]._actions if isinstance(a, argparse._SubParsersAction)
            )
            funcs = {p._defaults["func"] for p in inner.choices.values()}
        else:
            funcs = {func}
        assert {f.__module__ for f in funcs} == {verb.__name__}, name


def test_building_the_parser_loads_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from ai_deploy.cli import build_parser\n"
        "build_parser().parse_args(['status'])\n"
        "heavy = ('pyinfra', 'pyinfra_cli', 'gevent', 'paramiko', 'google')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_deploy_without_gcp_loads_no_compute_client() -> None:
    """The Compute client takes seconds to import: a `--no-gcp` deploy's engine never loads it
    (the GCP phases import it when they run)."""
    code = (
        "import sys\n"
        "import ai_deploy.ci.flow\n"
        "print(sorted(m for m in sys.modules if m.startswith('google.cloud')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_deploy_to_a_plain_host_never_imports_the_compute_client(tmp_path: Path) -> None:
    """A whole `deploy --no-gcp --host` run up to its SSH check (a loopback address nothing
    answers on) imports no google.cloud module: those are seconds of every deploy's start."""
    example = Path(__file__).resolve().parents[2] / "examples" / "ai-server"
    cmd = [sys.executable, "-m", "ai_deploy.cli"]
    subprocess.run([*cmd, "artifact", "build", str(example), "-o", str(tmp_path)], check=True)
    (artifact,) = tmp_path.glob("*.tar.gz")
    deploy = [*cmd[:1], "-X", "importtime", *cmd[1:], "deploy", "--no-gcp"]
    done = subprocess.run(
        [*deploy, "--host", "127.0.0.9", "--artifact", str(artifact)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert "==> Check SSH" in done.stdout, done.stdout + done.stderr
    assert "google.cloud" not in done.stderr
