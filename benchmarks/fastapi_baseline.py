"""The peer the packs are measured against: the classic "many models in one FastAPI process" server.

Why this shape: it is what most teams write first, and what the packs claim to beat. It is built to be a
faithful, not a straw-man, version of that pattern:

* uvicorn with one worker process per core (``--workers``, default: the machine's cores, as a production
  deployment would run it; every worker holds every model), uvloop and httptools (the ``uvicorn[standard]``
  production setup), access log off;
* every TorchScript model loaded at start into a dict keyed by model id (no lazy loading, no LRU);
* ``POST /predictions/{model_id}`` with a JSON body ``{"inputs": [[...], ...]}`` (batch first), validated by
  a pydantic model; the handler converts to a tensor with the model's dtype, runs the forward pass
  synchronously under ``torch.inference_mode()`` and answers ``{"outputs": [[...], ...]}``;
* torch on one thread per worker, like each pack instance (``PackSettings.torch_threads``): with workers =
  cores both contenders can use every core (until 2026-11-30 the baseline ran one worker, i.e. one core,
  against packs that used both: an unfair comparison, corrected).

``--only MODEL_ID`` serves a single model: the seeds' design, one model-server process per model
(``benchmarks.seeds_baseline``).

The handler is ``async def`` with the forward pass inline ("synchronous torch in the handler"): for models
this small that is faster than FastAPI's ``def`` handlers, which hop to a thread pool for every request
(``--handler sync`` runs that variant).

Run: ``python -m benchmarks.fastapi_baseline --models MANIFEST_DIR --port 8080 [--workers N] [--device cuda]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from fleet.settings import BaselineWorkerSettings
from model_repository.manifest import Manifest

TORCH_DTYPES = {"FP32": torch.float32, "INT64": torch.int64}


class PredictRequest(BaseModel):
    """A batch of rows for one model: nested lists, batch first."""

    inputs: list[Any]


def load_models(models_dir: Path, device: str = "cpu", limit: int | None = None, only: str | None = None
                ) -> tuple[dict[str, torch.jit.ScriptModule], dict[str, torch.dtype]]:
    """Every model of a generated manifest, loaded and on `device` (the pattern: all resident, in a dict)."""
    manifest = Manifest.read(models_dir)
    entries = manifest.models[:limit] if limit else manifest.models
    if only is not None:
        entries = [e for e in entries if e.id == only]
        if not entries:
            raise SystemExit(f"model {only!r} is not in {models_dir}/manifest.json")
    models: dict[str, torch.jit.ScriptModule] = {}
    dtypes: dict[str, torch.dtype] = {}
    for entry in entries:
        module = torch.jit.load(str(Path(models_dir) / entry.file), map_location=device)
        models[entry.id] = module.eval()
        dtypes[entry.id] = TORCH_DTYPES[entry.inputs[0].dtype]
    return models, dtypes


def create_app(models_dir: Path, device: str = "cpu", handler: str = "async", torch_threads: int = 1,
               limit: int | None = None, only: str | None = None) -> FastAPI:
    """The app with every model already loaded (so the first request is not a load)."""
    torch.set_num_threads(torch_threads)
    started = time.perf_counter()
    models, dtypes = load_models(models_dir, device, limit, only)
    load_s = time.perf_counter() - started
    app = FastAPI(title="classic multi-model server (baseline)")

    def run(model_id: str, body: PredictRequest) -> dict:
        model = models.get(model_id)
        if model is None:
            raise HTTPException(status_code=404, detail=f"unknown model '{model_id}'")
        try:
            x = torch.tensor(body.inputs, dtype=dtypes[model_id], device=device)
            with torch.inference_mode():
                y = model(x)
        except (RuntimeError, TypeError, ValueError) as error:
            raise HTTPException(status_code=400, detail=str(error).splitlines()[0][:300]) from None
        return {"model": model_id, "outputs": y.cpu().tolist()}

    if handler == "async":
        @app.post("/predictions/{model_id}")
        async def predict(model_id: str, body: PredictRequest) -> dict:
            return run(model_id, body)
    elif handler == "sync":
        @app.post("/predictions/{model_id}")
        def predict_sync(model_id: str, body: PredictRequest) -> dict:
            return run(model_id, body)
    else:
        raise ValueError(f"handler must be 'async' or 'sync', got {handler!r}")

    @app.get("/health")
    async def health() -> dict:
        return {"models": len(models), "device": device, "load_s": load_s, "handler": handler,
                "torch_threads": torch.get_num_threads(), "pid": os.getpid(),
                "workers": BaselineWorkerSettings.from_env().workers}

    return app


def app_from_environment() -> FastAPI:
    """uvicorn's factory for each worker process: several workers need an import string, not an app object,
    so the arguments travel in an environment variable."""
    arguments = json.loads(BaselineWorkerSettings.from_env().app or "{}")
    arguments["models_dir"] = Path(arguments["models_dir"])
    return create_app(**arguments)


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="folder with manifest.json")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--handler", choices=("async", "sync"), default="async")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="serve only the first N models")
    parser.add_argument("--only", default=None, metavar="MODEL_ID", help="serve this one model only")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="uvicorn worker processes (default: cores)")
    args = parser.parse_args(argv)
    arguments = {"models_dir": str(args.models), "device": args.device, "handler": args.handler,
                 "torch_threads": args.torch_threads, "limit": args.limit, "only": args.only}
    if args.workers <= 1:  # one process: no supervisor in between (what the seeds' per-model server runs)
        app = create_app(**{**arguments, "models_dir": args.models})
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
        return 0
    os.environ.update(BaselineWorkerSettings(app=json.dumps(arguments), workers=args.workers).environment())
    # uvicorn's supervisor kills a worker that misses one 5 s health ping and starts a new one, which loads
    # every model again: on a loaded 2-core machine (a worker loading 1,000 models holds the GIL) that became
    # an endless restart loop serving ~50 rps (fleet bench, 2026-11-30). A worker is not hung here.
    uvicorn.run("benchmarks.fastapi_baseline:app_from_environment", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level="warning", access_log=False, timeout_worker_healthcheck=600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
