"""A release's model files on a host in a temporary directory (tests/unit/hostkit.py: the gate's
own shell, stand-in systemd), fetched by fetcher.py from tests/fakes/model_server.py on
loopback: each release opens the bytes its manifest named for as long as it exists, whatever
another release ships under the same name and version, and the blob store holds only blobs.
The link and record shell runs as root (install -o root), as it does on a host."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hostkit import FakeHost

from ai_deploy.artifact.models_manifest import Model, ModelFile
from ai_deploy.host.gate import put_in_service
from ai_deploy.host.outcome import SERVED, SWITCHED_BACK, HostOutcome
from ai_deploy.host.release.models import RECORD, models_script, parse_models
from tests.unit.test_models_fetcher import GROUP, ModelServer, payload, server, sha

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(os.geteuid() != 0, reason="the model links are made root's, as on a host"),
]
__all__ = ["server"]  # the fixture, shared with test_models_fetcher

A, B = payload(40_000, seed=1), payload(30_000, seed=2)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    with FakeHost(tmp_path / "host") as h:
        h.install_units("socket")
        yield h


def model(server: ModelServer, data: bytes, *, path: str = "w.bin", name: str = "demo",
          version: str = "1") -> Model:  # fmt: skip
    """A model whose file PATH is DATA, served at a URL of its own."""
    item = server.put(f"{sha(data)[:12]}/{path.replace('/', '_')}", data)
    return Model(name, version, (ModelFile(path, item["url"], item["sha256"], item["size"]),))


def deploy(
    host: FakeHost,
    release: str,
    *models: Model,
    behaviour: str = "healthy",
    extra: dict[str, bytes] | None = None,
    **settings: object,
) -> HostOutcome:
    """RELEASE with MODELS put in service through the gate, as ops does (uploaded when new)."""
    have = release in host.tree().releases
    run: dict[str, object] = {}
    if not have:
        art, digest = host.artifact(release, behaviour=behaviour, extra=extra)
        run = {"artifact_remote": art, "artifact_sha256": digest}
    spec = host.spec(
        release, deploy_strategy="socket", app_group=GROUP, models_allow_http=True,
        models_space_reserve_bytes=0, models_fetch_retries=0, **run, **settings,
    )  # fmt: skip
    spec = dataclasses.replace(spec, models=models)
    return put_in_service(host.remote, spec, host="h1", have_release=have)


def opened(host: FakeHost, release: str, path: str = "w.bin", name: str = "demo") -> bytes:
    """What the app of RELEASE reads at models/<name>/<path> (links followed)."""
    return (host.app_root / "releases" / release / "models" / name / path).read_bytes()


def listed(host: FakeHost) -> dict[str, tuple[dict[str, object], ...]]:
    """Each release's models as `ai-deploy releases` and `status` read them."""
    return parse_models(host.remote.run(models_script(host.layout)).stdout)


def store(host: FakeHost) -> Path:
    return host.app_root / "models" / "blobs"


def watching(host: FakeHost, check: Callable[[], None]) -> list[int]:
    """CHECK run after every command the gate sends; the list counts the checks."""
    seen: list[int] = []
    send = host.remote.run

    def run(script: str, *, timeout: float | None = None):  # type: ignore[no-untyped-def]
        done = send(script, timeout=timeout)
        check()
        seen.append(1)
        return done

    host.remote.run = run  # type: ignore[method-assign]
    return seen


def test_a_release_keeps_its_bytes_while_another_ships_its_name_and_version_with_others(
    host: FakeHost, server: ModelServer
) -> None:
    assert deploy(host, "r1", model(server, A)).status == SERVED
    assert opened(host, "r1") == A

    def r1_still_a() -> None:
        assert opened(host, "r1") == A

    seen = watching(host, r1_still_a)  # during r2's fetch, link, start and switch-back
    out = deploy(host, "r2", model(server, B), behaviour="unhealthy")
    assert (out.status, out.serving) == (SWITCHED_BACK, "r1")
    assert len(seen) > 10 and opened(host, "r2") == B
    found = listed(host)
    assert found["r1"] == (
        {"name": "demo", "version": "1", "size_bytes": len(A), "verified": True},
    )
    assert found["r2"] == (
        {"name": "demo", "version": "1", "size_bytes": len(B), "verified": True},
    )
    # r2 pruned (one release kept, r1 stays as previous): r1 keeps its blob and its bytes.
    assert deploy(host, "r3", model(server, B), releases_keep=1).status == SERVED
    assert sorted(host.tree().releases) == ["r1", "r3"]
    assert sorted(p.name for p in store(host).iterdir()) == sorted(
        [sha(A), f"{sha(A)}.verified", sha(B), f"{sha(B)}.verified"]
    )
    assert listed(host)["r1"][0]["verified"] is True
    # A rollback serves r1 on its own bytes.
    assert host.deploy("r1", action="rollback").status == SERVED
    assert host.link("current") == "r1" and opened(host, "r1") == A


def test_a_path_that_is_a_file_in_one_release_and_a_directory_in_another_is_kept_apart(
    host: FakeHost, server: ModelServer
) -> None:
    assert deploy(host, "r1", model(server, A, path="w.bin")).status == SERVED
    assert deploy(host, "r2", model(server, B, path="w.bin/inner.bin")).status == SERVED
    assert deploy(host, "r3", model(server, B, path="w.bin")).status == SERVED
    assert opened(host, "r1") == A and opened(host, "r2", "w.bin/inner.bin") == B
    assert opened(host, "r3") == B
    trees = {
        r: sorted(str(p.relative_to(host.app_root / "releases" / r / "models" / "demo"))
                  for p in (host.app_root / "releases" / r / "models" / "demo").rglob("*"))
        for r in ("r1", "r2", "r3")
    }  # fmt: skip
    assert trees == {"r1": ["w.bin"], "r2": ["w.bin", "w.bin/inner.bin"], "r3": ["w.bin"]}
    assert (host.app_root / "releases" / "r1" / "models" / "demo" / "w.bin").is_symlink()
    assert all(v[0]["verified"] for v in listed(host).values())


def test_a_directory_where_a_link_goes_is_refused_never_linked_inside(
    host: FakeHost, server: ModelServer
) -> None:
    """The same release again, its w.bin now a directory (only damage makes that): refused."""
    first = model(server, A)
    assert deploy(host, "r1", first).status == SERVED
    path = host.app_root / "releases" / "r1" / "models" / "demo" / "w.bin"
    path.unlink()
    path.mkdir()
    out = deploy(host, "r1", first)
    assert out.phase == "models" and "could not link the model files" in out.reason
    assert list(path.iterdir()) == []


def test_a_model_named_blobs_leaves_the_blob_store_to_blobs(
    host: FakeHost, server: ModelServer
) -> None:
    named = model(server, A, name="blobs", version=sha(B))  # a version that is a blob's name
    other = model(server, B, name="other")
    assert deploy(host, "r1", named, other).status == SERVED
    assert deploy(host, "r2", other, named).status == SERVED
    assert all(p.is_file() and not p.is_symlink() for p in store(host).iterdir())
    assert opened(host, "r2", name="blobs") == A and opened(host, "r2", name="other") == B
    assert [n for n in os.listdir(host.app_root / "models") if n[0] != "."] == ["blobs"]


def test_prune_removes_what_is_not_a_blob_from_the_blob_store(
    host: FakeHost, server: ModelServer
) -> None:
    """A directory an older layout left in blobs/ (a model named "blobs"), a stray link."""
    assert deploy(host, "r1", model(server, A)).status == SERVED
    (store(host) / "v1" / "sub").mkdir(parents=True)
    (store(host) / "v1" / "sub" / "w.bin").symlink_to(f"../../{sha(A)}")
    (store(host) / ("c" * 64)).symlink_to("/nowhere")
    assert deploy(host, "r2", model(server, A)).status == SERVED
    assert sorted(p.name for p in store(host).iterdir()) == [sha(A), f"{sha(A)}.verified"]


def test_a_release_made_with_the_shared_layout_keeps_it_until_deployed_again(
    host: FakeHost, server: ModelServer
) -> None:
    """models/<name> -> ../../../models/<name>/<version>, as releases were linked before."""
    first = model(server, A)
    assert deploy(host, "r1", first).status == SERVED
    tree = host.app_root / "releases" / "r1" / "models" / "demo"
    version = host.app_root / "models" / "demo" / "1"
    version.mkdir(parents=True)
    (version / "w.bin").symlink_to(f"../../blobs/{sha(A)}")
    for p in sorted(tree.rglob("*"), reverse=True):
        p.unlink()
    tree.rmdir()
    tree.symlink_to("../../../models/demo/1")
    assert deploy(host, "r2", model(server, B)).status == SERVED  # prune keeps r1's version
    assert opened(host, "r1") == A and listed(host)["r1"][0]["verified"] is True
    assert deploy(host, "r1", first).status == SERVED  # r1 again: a tree of its own
    assert tree.is_dir() and not tree.is_symlink() and opened(host, "r1") == A
    assert deploy(host, "r3", model(server, B)).status == SERVED
    assert not (host.app_root / "models" / "demo").exists()  # no release links it now


def test_the_same_release_again_changes_nothing_in_its_tree(
    host: FakeHost, server: ModelServer
) -> None:
    first = model(server, A, path="sub/w.bin")
    assert deploy(host, "r1", first).status == SERVED
    release = host.app_root / "releases" / "r1"

    def state() -> dict[str, tuple[int, int, str]]:
        paths = [release / RECORD, *sorted((release / "models").rglob("*"))]
        return {
            str(p): (p.lstat().st_ino, p.lstat().st_mtime_ns, os.readlink(p) if p.is_symlink()
                     else "")
            for p in paths
        }  # fmt: skip

    before = state()
    assert deploy(host, "r1", first).status == SERVED  # restarted behind the gate, as ops would
    assert state() == before


def test_an_artifacts_own_record_is_not_the_deploys(host: FakeHost, server: ModelServer) -> None:
    assert deploy(host, "r1", model(server, A)).status == SERVED  # sha(A) is verified now
    forged = json.dumps(
        [{"name": "forged", "version": "9",
          "files": [{"path": "w.bin", "sha256": sha(A), "size": len(A)}]}]
    ).encode()  # fmt: skip
    assert deploy(host, "r2", extra={RECORD: forged}).status == SERVED  # no models.toml
    assert not (host.app_root / "releases" / "r2" / RECORD).exists()
    assert "r2" not in listed(host)
    assert deploy(host, "r3", model(server, B), extra={RECORD: forged}).status == SERVED
    assert [m["name"] for m in listed(host)["r3"]] == ["demo"]
    # Prune goes by the deploy's records: the forged one pinned nothing.
    assert deploy(host, "r4", releases_keep=1).status == SERVED
    assert sorted(p.name for p in store(host).iterdir()) == [sha(B), f"{sha(B)}.verified"]
