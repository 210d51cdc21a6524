"""The inventory contract (ai_deploy.settings.ssh.Reach): what `ai-deploy` writes is what the
prod inventory reads back, fields not given are not written, a bad endpoint is refused by
name, and a key given drops the old key variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_deploy.settings.ssh import OLD_SSH_KEY_ENV, Reach, ReachError

pytestmark = pytest.mark.unit


def test_what_is_written_is_read_back() -> None:
    given = Reach(
        hosts=("vm-1", "vm-2"),
        user="deploy",
        key=Path("/run/key"),
        known_hosts=Path("/run/known_hosts"),
        strict="yes",
        endpoints={"vm-1": ("127.0.0.1", 40001), "vm-2": ("10.0.0.2", 22)},
    )
    assert Reach.from_env(given.env({})) == given


def test_fields_not_given_leave_the_environment_alone() -> None:
    env = {"AI_DEPLOY_SSH_USER": "mine", "PATH": "/bin"}
    assert Reach().env(env) == env
    assert Reach.from_env(env).user == "mine"


def test_a_key_given_drops_the_old_key_variable() -> None:
    env = Reach(key=Path("/run/key")).env({OLD_SSH_KEY_ENV: "/old/key"})
    assert OLD_SSH_KEY_ENV not in env


@pytest.mark.parametrize("bad", ["vm-1=127.0.0.1", "vm-1=:22", "=h:22", "vm-1=h:port"])
def test_a_bad_endpoint_is_refused_naming_the_variable(bad: str) -> None:
    with pytest.raises(ReachError, match="AI_DEPLOY_SSH_ENDPOINTS"):
        Reach.from_env({"AI_DEPLOY_SSH_ENDPOINTS": bad})
