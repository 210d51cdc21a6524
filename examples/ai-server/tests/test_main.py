"""The example server's own test: health once the model is loaded, a prediction after it."""

from __future__ import annotations

import importlib
import sys

import pytest
from fastapi.testclient import TestClient


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("MODEL_LOAD_SECONDS", "0")
    monkeypatch.setenv("AI_SERVER_RELEASE", "test-release")
    sys.modules.pop("main", None)
    main = importlib.import_module("main")
    with TestClient(main.app) as test_client:
        yield test_client


def test_health_answers_once_loaded(client: TestClient) -> None:
    reply = client.get("/health")
    assert reply.status_code == 200
    assert reply.json()["status"] == "ok"


def test_predict_names_the_release(client: TestClient) -> None:
    reply = client.get("/predict", params={"q": "hello"})
    assert reply.status_code == 200
    assert "release" in reply.json()


def test_completions_answer_the_served_model_only(client: TestClient) -> None:
    reply = client.post("/v1/completions", json={"model": "demo-model", "max_tokens": 2})
    assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == "tok0 tok1"
    assert client.post("/v1/completions", json={"model": "other"}).status_code == 404
    assert client.post("/v1/completions", content=b"[1]").status_code == 422
    assert client.post("/v1/completions", content=b"{not json").status_code == 422
