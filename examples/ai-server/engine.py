"""The stand-in inference engine: a start-up in phases like a real model server's, with the
progress a health path can report.

Phases, in order, each counted in ``STEPS`` steps of progress:

- ``weights``: every file under ``ENGINE_MODEL_DIR`` read in full (at most
  ``ENGINE_READ_MBPS`` MB/s when set, like a cold disk);
- ``load``: ``MODEL_LOAD_SECONDS`` of waiting (moving the weights onto the GPU);
- ``compile``: ``ENGINE_COMPILE_SECONDS`` when its cache entry under the service's cache dir
  (``$XDG_CACHE_HOME/ai-server/compile``) is missing, ``ENGINE_COMPILE_WARM_SECONDS`` when it
  is there; a finished compile writes the entry, so the next start is warm;
- ``warmup``: ``ENGINE_WARMUP_SECONDS`` (first requests, CUDA graphs).

A phase of zero seconds and no files is done at once, so with no environment variable set the
start-up is the example's two-second load and nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

STEPS = 10  # progress steps per phase
PHASES = ("weights", "load", "compile", "warmup")
_CHUNK = 1 << 20


def env_float(name: str, default: float) -> float:
    """The environment variable NAME as a non-negative number, DEFAULT when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number: set it to seconds, e.g. 2") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r} is negative: set it to 0 or more")
    return value


@dataclass(frozen=True)
class EngineConfig:
    """Sizes of each phase, from the environment (see the module docstring)."""

    model_dir: Path | None
    read_mbps: float
    load_s: float
    compile_s: float
    compile_warm_s: float
    warmup_s: float
    cache_dir: Path
    model_name: str

    @classmethod
    def from_env(cls) -> EngineConfig:
        model_dir = os.environ.get("ENGINE_MODEL_DIR", "").strip()
        cache_root = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
        return cls(
            model_dir=Path(model_dir) if model_dir else None,
            read_mbps=env_float("ENGINE_READ_MBPS", 0),
            load_s=env_float("MODEL_LOAD_SECONDS", 2),
            compile_s=env_float("ENGINE_COMPILE_SECONDS", 0),
            compile_warm_s=env_float("ENGINE_COMPILE_WARM_SECONDS", 0),
            warmup_s=env_float("ENGINE_WARMUP_SECONDS", 0),
            cache_dir=Path(cache_root) / "ai-server" / "compile",
            model_name=os.environ.get("MODEL_NAME", "demo-model"),
        )


def model_files(model_dir: Path | None) -> list[Path]:
    """Every regular file under MODEL_DIR (links followed), sorted; none when it is unset."""
    if model_dir is None:
        return []
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"ENGINE_MODEL_DIR={model_dir} is not a directory: point it at the model files"
        )
    return sorted(p for p in model_dir.rglob("*") if p.is_file())


def compile_key(config: EngineConfig, files: list[Path]) -> str:
    """What the compiled artefact depends on: the model's name and its files' names and sizes."""
    digest = hashlib.sha256(config.model_name.encode())
    for path in files:
        digest.update(f"\0{path.name}\0{path.stat().st_size}".encode())
    return digest.hexdigest()[:32]


@dataclass
class Engine:
    """One start-up's state: the phase it is in and the steps done, for the health path."""

    config: EngineConfig
    done: int = 0
    phase: str = "weights"
    warm: bool = False
    bytes_read: int = 0
    compile_cache_hit: bool | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return STEPS * len(PHASES)

    def progress(self) -> dict[str, object]:
        """The documented optional health field: ``{"done": D, "total": T}`` plus the phase."""
        return {"done": self.done, "total": self.total, "phase": self.phase}

    async def start(self) -> None:
        """Run every phase in order; ``warm`` is true once the last one is done."""
        files = model_files(self.config.model_dir)
        await self._phase("weights", self._read_weights(files))
        await self._phase("load", self._wait(self.config.load_s))
        entry = self.config.cache_dir / compile_key(self.config, files)
        self.compile_cache_hit = entry.is_file()
        seconds = self.config.compile_warm_s if self.compile_cache_hit else self.config.compile_s
        await self._phase("compile", self._wait(seconds))
        if not self.compile_cache_hit and self.config.compile_s:
            self._keep_compiled(entry)
        await self._phase("warmup", self._wait(self.config.warmup_s))
        self.warm = True

    def _keep_compiled(self, entry: Path) -> None:
        """The compile cache entry, written atomically (a start cut mid-compile leaves the cache
        cold); a cache that cannot be written (no writable home) only costs the next start."""
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            partial = entry.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(f"{self.config.model_name}\n", encoding="utf-8")
            partial.replace(entry)
        except OSError:
            return

    async def _phase(self, name: str, steps: AsyncIterator[int]) -> None:
        self.phase = name
        base = PHASES.index(name) * STEPS
        started = time.monotonic()
        async for step in steps:
            self.done = base + step
        self.done = base + STEPS
        self.timings[name] = round(time.monotonic() - started, 3)

    async def _wait(self, seconds: float) -> AsyncIterator[int]:
        for step in range(1, STEPS + 1):
            if seconds:
                await asyncio.sleep(seconds / STEPS)
            yield step

    async def _read_weights(self, files: list[Path]) -> AsyncIterator[int]:
        total = sum(path.stat().st_size for path in files) or 1
        started = time.monotonic()
        for path in files:
            with path.open("rb") as handle:
                while chunk := await asyncio.to_thread(handle.read, _CHUNK):
                    self.bytes_read += len(chunk)
                    if self.config.read_mbps:
                        due = started + self.bytes_read / (self.config.read_mbps * 1e6)
                        await asyncio.sleep(max(0.0, due - time.monotonic()))
                    yield min(STEPS, self.bytes_read * STEPS // total)
