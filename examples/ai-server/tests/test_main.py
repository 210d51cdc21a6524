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
