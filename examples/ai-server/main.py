"""A small FastAPI "AI server": a slow startup standing in for model loading, a health check
that only answers once the model is loaded, and a predict endpoint with blocking inference work.

It is also the stand-in engine (engine.py) for tests and the bench: a start-up in phases, a
readiness endpoint (``GET /ready``, 200 only once warm), a completion in the OpenAI shape
(``POST /v1/completions``, what a ready probe asks), an SSE token stream (``GET /stream``) and,
while loading, a progress field on ``/health``: ``{"loading": {"done": D, "total": T}}``.
Environment variables beyond those in engine.py:

- ``ENGINE_SERVE_WHILE_LOADING=1``: answer requests during start-up (``/health`` 503 with the
  progress, ``/ready`` 503) instead of holding the port closed until warm (the default);
- ``ENGINE_HEALTHY_BEFORE_READY=1``: ``/health`` answers 200 once the weights are loaded, while
  compile and warm-up still run (the "healthy is not ready" servers);
- ``ENGINE_STREAM_TOKENS`` (20) and ``ENGINE_STREAM_INTERVAL_S`` (0.05): the stream's default
  length and pace, overridden per request by ``?tokens=`` and ``?interval=``.

Run from this directory: ``uvicorn main:app --host 127.0.0.1 --port 8000``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.requests import Request
from fastapi.responses import JSONResponse, StreamingResponse

from engine import Engine, EngineConfig, env_float

# Settings: environment variables only (the service loads /app/ai-server/.env through systemd's
# EnvironmentFile), so the same code runs unchanged on every host and in every release.
MODEL_LOAD_SECONDS = float(os.environ.get("MODEL_LOAD_SECONDS", "2"))
MODEL_NAME = os.environ.get("MODEL_NAME", "demo-model")
INFERENCE_SECONDS = 0.05
REVISION_FILE = Path(__file__).resolve().parent / "REVISION"
SERVE_WHILE_LOADING = os.environ.get("ENGINE_SERVE_WHILE_LOADING", "") == "1"
HEALTHY_BEFORE_READY = os.environ.get("ENGINE_HEALTHY_BEFORE_READY", "") == "1"
STREAM_TOKENS = int(env_float("ENGINE_STREAM_TOKENS", 20))
STREAM_INTERVAL_S = env_float("ENGINE_STREAM_INTERVAL_S", 0.05)

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
# the load phase takes MODEL_LOAD_SECONDS (a test may set it in this file)
engine = Engine(dataclasses.replace(EngineConfig.from_env(), load_s=MODEL_LOAD_SECONDS))


async def start_engine() -> None:
    """Every start-up phase (engine.py), then the server is ready."""
    started = time.monotonic()
    await engine.start()
    load_time = time.monotonic() - started
    _state["ready"] = True
    _state["loaded_at"] = time.time()
    logger.info("ai-server release %s ready; model loaded in %.2f s", RELEASE, load_time)
    logger.info(
        "ai-server start-up phases %s, compile cache hit: %s, %d bytes of weights read",
        engine.timings,
        engine.compile_cache_hit,
        engine.bytes_read,
    )


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    task = asyncio.create_task(start_engine()) if SERVE_WHILE_LOADING else None
    if task is None:
        await start_engine()  # uvicorn opens the port only once this returns
    yield
    if task is not None:
        task.cancel()
    _state["ready"] = False


def healthy() -> bool:
    return bool(_state["ready"]) or (HEALTHY_BEFORE_READY and engine.phase in ("compile", "warmup"))


app = FastAPI(title="ai-server", version="0.1.0", lifespan=lifespan)


# async, so health checks never queue behind /predict calls for a threadpool slot.
@app.get("/health")
async def health() -> JSONResponse:
    """200 with the release once the model is loaded; 503 before that."""
    if not healthy():
        return JSONResponse(
            status_code=503,
            content={"status": "loading", "release": RELEASE, "loading": engine.progress()},
        )
    loading = {} if _state["ready"] else {"loading": engine.progress()}
    return JSONResponse(
        content={
            "status": "ok",
            "release": RELEASE,
            "model": MODEL_NAME,
            "pid": os.getpid(),
            "loaded_at": _state["loaded_at"],
            **loading,
        }
    )


@app.get("/ready")
async def ready() -> JSONResponse:
    """200 only once every start-up phase, warm-up included, is done; 503 with the progress
    before that."""
    if not _state["ready"]:
        return JSONResponse(status_code=503, content={"ready": False, "loading": engine.progress()})
    return JSONResponse(
        content={"ready": True, "release": RELEASE, "compile_cache_hit": engine.compile_cache_hit}
    )


@app.post("/v1/completions")
async def completions(request: Request) -> JSONResponse:
    """A completion in the OpenAI shape, one token per ``max_tokens`` (what a ready probe
    asks for): 503 while starting, 404 for a model other than MODEL_NAME, 422 for a body that
    is not a JSON object."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return JSONResponse(status_code=422, content={"detail": "expected a JSON object"})
    if not _state["ready"]:
        return JSONResponse(status_code=503, content={"ready": False})
    model = body.get("model", MODEL_NAME)
    if model != MODEL_NAME:
        return JSONResponse(status_code=404, content={"detail": f"model {model!r} not served"})
    tokens = max(1, min(int(body.get("max_tokens") or 1), 64))
    text = " ".join(f"tok{i}" for i in range(tokens))
    return JSONResponse(content={"model": model, "choices": [{"index": 0, "text": text}]})


@app.get("/stream", response_model=None)
async def stream(
    tokens: int = STREAM_TOKENS, interval: float = STREAM_INTERVAL_S
) -> StreamingResponse | JSONResponse:
    """A token stream (server-sent events): TOKENS events INTERVAL seconds apart, then
    ``data: [DONE]``; a client that misses the last line knows its stream was cut."""
    if not (1 <= tokens <= 100_000 and 0 <= interval <= 60):
        detail = "tokens must be 1 to 100000 and interval 0 to 60 seconds"
        return JSONResponse(status_code=422, content={"detail": detail})
    if not _state["ready"]:
        return JSONResponse(status_code=503, content={"ready": False})

    async def events() -> AsyncIterator[str]:
        for index in range(tokens):
            await asyncio.sleep(interval)
            token = {"index": index, "token": f"tok{index}", "release": RELEASE}
            yield f"data: {json.dumps(token)}\n\n"
        yield "data: [DONE]\n\n"

    # nginx (blue/green) would buffer the events: X-Accel-Buffering asks it not to.
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


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
