"""Spec keeps no defaults of its own: a setting its data lacks is group_data/all.py's (a derived
one derived from the data's app_name), read from the file each time, so a changed default
reaches every Spec."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import ai_deploy.project
from ai_deploy.host.settings import Spec
from ai_deploy.project import group_data_defaults

pytestmark = pytest.mark.unit

# What one run decides (not settings): the only fields that may have a default.
RUN_FIELDS = {
    "action",
    "release_id",
    "who",
    "deployer",
    "pid",
    "machine",
    "run_id",
    "artifact_remote",
    "artifact_sha256",
    "lock_hash",
    "models",
    "lock_token",
}


def test_only_what_a_run_decides_has_a_default() -> None:
    defaulted = {
        f.name
        for f in dataclasses.fields(Spec)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    assert defaulted == RUN_FIELDS


def test_a_spec_of_no_data_is_group_datas() -> None:
    assert Spec.from_data({}, release_id="r") == Spec.from_data(
        group_data_defaults(), release_id="r"
    )


def test_a_changed_group_data_default_reaches_the_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (ai_deploy.project.project_dir() / "group_data" / "all.py").read_text()
    for name, value in {
        "app_name": '"other-app"',
        "health_deadline_s": "17",
        "models_fetch_retries": "3",
        "gpu_memory_when_short": '"refuse"',
        "app_cache_dir": '"/var/cache/elsewhere"',
    }.items():
        text, count = re.subn(rf"^{name} = .*$", f"{name} = {value}", text, flags=re.M)
        assert count == 1, name
    (tmp_path / "group_data").mkdir()
    (tmp_path / "group_data" / "all.py").write_text(text)
    monkeypatch.setattr(ai_deploy.project, "project_dir", lambda: tmp_path)

    spec = Spec.from_data({})
    assert (spec.deadline_s, spec.models_fetch_retries) == (17.0, 3)
    assert spec.gpu_memory_when_short == "refuse"
    assert spec.layout.app_name == "other-app"
    assert spec.layout.app_root == "/app/other-app"  # derived from the new default name
    assert spec.layout.log_dir == "/var/log/other-app"
    assert spec.layout.cache_dir == "/var/cache/elsewhere"
    assert spec.app_group == "other-app"
    # A value the data holds wins; derived settings follow the data's own app_name.
    mine = Spec.from_data({"app_name": "mine", "health_deadline_s": 5})
    assert (mine.app_root, mine.app_group, mine.deadline_s) == ("/app/mine", "mine", 5.0)
    assert mine.nginx_upstream == "/etc/nginx/mine-upstream.conf"
    assert mine.models_fetch_retries == 3


def test_pyinfra_host_data_falls_back_the_same_way() -> None:
    """An object (pyinfra's HostData raises AttributeError for a name it lacks)."""

    class Data:
        app_name = "obj"
        releases_keep = 9

    spec = Spec.from_data(Data())
    assert (spec.app_root, spec.keep) == ("/app/obj", 9)
    assert spec.port == group_data_defaults()["app_port"]
