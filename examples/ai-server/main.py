"""A small FastAPI "AI server": a slow startup standing in for model loading, a health check
that only answers once the model is loaded, and a predict endpoint with blocking inference work.

Run from this directory: ``uvicorn main:app --host 127.0.0.1 --port 8000``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse

# Settings: environment variables only (the service loads /app/ai-server/.env through systemd's
# EnvironmentFile), so the same code runs unchanged on every host and in every release.
MODEL_LOAD_SECONDS = float(os.environ.get("MODEL_LOAD_SECONDS", "2"))
MODEL_NAME = os.environ.get("MODEL_NAME", "demo-model")
INFERENCE_SECONDS = 0.05
REVISION_FILE = Path(__file__).resolve().parent / "REVISION"

# uvicorn configures this logger, so startup lines land beside its own in the service log.
logger = logging.getLogger("uvicorn.error")


def read_release() -> str:
    """The release this code belongs to: the REVISION file beside this module, else the
    AI_SERVER_RELEASE environment variable, else "dev"."""
    try:
        release = REVISION_FILE.read_text(encoding="utf-8").strip()
    except OSError:
        release = ""
    return release or os.environ.get("AI_SERVER_RELEASE", "").strip() or "dev"


RELEASE = read_release()
_state: dict[str, object] = {"ready": False, "loaded_at": None}


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    started = time.monotonic()
    await asyncio.sleep(MODEL_LOAD_SECONDS)  # stands in for loading model weights onto the GPU
    load_time = time.monotonic() - started
    _state["ready"] = True
    _state["loaded_at"] = time.time()
    logger.info("ai-server release %s ready; model loaded in %.2f s", RELEASE, load_time)
    yield
    _state["ready"] = False


app = FastAPI(title="ai-server", version="0.1.0", lifespan=lifespan)


# async, so health checks never queue behind /predict calls for a threadpool slot.
@app.get("/health")
async def health() -> JSONResponse:
    """200 with the release once the model is loaded; 503 before that."""
    if not _state["ready"]:
        return JSONResponse(status_code=503, content={"status": "loading", "release": RELEASE})
    return JSONResponse(
        content={
            "status": "ok",
            "release": RELEASE,
            "model": MODEL_NAME,
            "pid": os.getpid(),
            "loaded_at": _state["loaded_at"],
        }
    )


@app.get("/predict")
def predict(q: str = "") -> dict[str, object]:
    """Fake inference: ~50 ms of blocking work (a sync endpoint, so it runs in the threadpool)."""
    time.sleep(INFERENCE_SECONDS)
    digest = hashlib.sha256(q.encode("utf-8")).digest()
    score = round(digest[0] / 255, 4)
    return {
        "input": q,
        "prediction": "positive" if score >= 0.5 else "negative",
        "score": score,
        "model": MODEL_NAME,
        "release": RELEASE,
    }
