"""The stand-in engine: phases that read the model files, a compile step that its cache makes
warm, progress on /health while loading, /ready only once warm, a token stream."""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from fastapi.testclient import TestClient

APP_DIR = Path(__file__).resolve().parent.parent


def load_main(monkeypatch: pytest.MonkeyPatch, **env: str) -> ModuleType:
    for name in [n for n in os.environ if n.startswith("ENGINE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MODEL_LOAD_SECONDS", "0")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sys.modules.pop("main", None)
    return importlib.import_module("main")


def sse_events(body: str) -> list[str]:
    return [line.removeprefix("data: ") for line in body.splitlines() if line.startswith("data: ")]


def test_weights_are_read_from_every_model_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    (models / "sub").mkdir(parents=True)
    (models / "a.safetensors").write_bytes(os.urandom(3 * (1 << 20) + 7))
    (models / "sub" / "b.bin").write_bytes(b"x" * 1000)
    main = load_main(monkeypatch, ENGINE_MODEL_DIR=str(models), XDG_CACHE_HOME=str(tmp_path))
    with TestClient(main.app) as client:
        assert client.get("/ready").status_code == 200
    assert main.engine.bytes_read == 3 * (1 << 20) + 7 + 1000
    assert main.engine.progress() == {"done": 40, "total": 40, "phase": "warmup"}


def test_a_missing_model_dir_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    main = load_main(monkeypatch, ENGINE_MODEL_DIR=str(tmp_path / "nowhere"))
    with (
        pytest.raises(FileNotFoundError, match=r"ENGINE_MODEL_DIR=.*nowhere"),
        TestClient(main.app),
    ):
        pass


def test_a_bad_size_is_refused_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="ENGINE_WARMUP_SECONDS='-1' is negative"):
        load_main(monkeypatch, ENGINE_WARMUP_SECONDS="-1").EngineConfig.from_env()
    with pytest.raises(ValueError, match="ENGINE_STREAM_TOKENS='many' is not a number"):
        load_main(monkeypatch, ENGINE_STREAM_TOKENS="many")


def test_the_compile_cache_makes_the_second_start_warm(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "ENGINE_COMPILE_SECONDS": "0.2"}
    first = load_main(monkeypatch, **env)
    with TestClient(first.app) as client:
        assert client.get("/ready").json()["compile_cache_hit"] is False
    entries = list((tmp_path / "cache" / "ai-server" / "compile").iterdir())
    assert len(entries) == 1 and entries[0].is_file()  # no partial file left beside it
    second = load_main(monkeypatch, **env)
    with TestClient(second.app) as client:
        assert client.get("/ready").json()["compile_cache_hit"] is True
    # Another model is another compiled artefact: cold again.
    third = load_main(monkeypatch, MODEL_NAME="other-model", **env)
    with TestClient(third.app) as client:
        assert client.get("/ready").json()["compile_cache_hit"] is False


def test_the_stream_sends_every_token_then_done(monkeypatch: pytest.MonkeyPatch) -> None:
    main = load_main(monkeypatch, AI_SERVER_RELEASE="r-stream")
    with TestClient(main.app) as client:
        reply = client.get("/stream", params={"tokens": 5, "interval": 0})
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = sse_events(reply.text)
        assert events[-1] == "[DONE]"
        tokens = [json.loads(e) for e in events[:-1]]
        assert [t["index"] for t in tokens] == [0, 1, 2, 3, 4]
        assert {t["release"] for t in tokens} == {"r-stream"}
        assert client.get("/stream", params={"tokens": 0}).status_code == 422
        assert client.get("/stream", params={"interval": -1}).status_code == 422
        default = sse_events(client.get("/stream", params={"interval": 0}).text)
        assert len(default) == 21  # ENGINE_STREAM_TOKENS' default, then [DONE]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start the app under a real uvicorn on a loopback port with the given environment."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> str:
        port = free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
        full.update({"MODEL_LOAD_SECONDS": "0", "XDG_CACHE_HOME": str(tmp_path), **env})
        cmd = [sys.executable, "-m", "uvicorn", "main:app", "--port", str(port)]
        procs.append(subprocess.Popen(cmd, cwd=APP_DIR, env=full, stderr=subprocess.DEVNULL))
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


def get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.TransportError:
        return None


def test_health_reports_progress_while_loading_and_ready_waits_for_warm(
    serve: Callable[..., str],
) -> None:
    base = serve(
        ENGINE_SERVE_WHILE_LOADING="1", ENGINE_COMPILE_SECONDS="1", ENGINE_WARMUP_SECONDS="1"
    )
    seen: list[int] = []
    for _ in range(600):
        health = get(f"{base}/health")
        if health is not None and health.status_code == 200:
            break
        if health is not None:
            assert health.status_code == 503
            loading = health.json()["loading"]
            assert loading["total"] == 40 and 0 <= loading["done"] < 40
            seen.append(loading["done"])
            if loading["done"] <= 25:  # a second of compile and one of warm-up still to go
                assert get(f"{base}/ready").status_code == 503
                assert get(f"{base}/stream").status_code == 503
        time.sleep(0.05)
    assert health is not None and health.status_code == 200
    assert "loading" not in health.json()
    assert get(f"{base}/ready").status_code == 200
    assert seen == sorted(seen) and len(set(seen)) >= 3  # it moved, and never went back


def test_healthy_before_ready_answers_health_while_still_warming(serve: Callable[..., str]) -> None:
    base = serve(
        ENGINE_SERVE_WHILE_LOADING="1",
        ENGINE_HEALTHY_BEFORE_READY="1",
        ENGINE_COMPILE_SECONDS="1",
        ENGINE_WARMUP_SECONDS="1",
    )
    for _ in range(600):
        health = get(f"{base}/health")
        if health is not None and health.status_code == 200:
            break
        time.sleep(0.05)
    assert health is not None and health.status_code == 200
    assert health.json()["loading"]["phase"] in ("compile", "warmup")
    assert get(f"{base}/ready").status_code == 503
    for _ in range(600):
        if get(f"{base}/ready").status_code == 200:
            break
        time.sleep(0.05)
    assert get(f"{base}/ready").status_code == 200


def test_by_default_the_port_stays_closed_until_warm(serve: Callable[..., str]) -> None:
    base = serve(ENGINE_WARMUP_SECONDS="1.5")
    answers = []
    for _ in range(600):
        health = get(f"{base}/health")
        answers.append(None if health is None else health.status_code)
        if health is not None:
            break
        time.sleep(0.05)
    assert answers[-1] == 200 and set(answers[:-1]) <= {None}
