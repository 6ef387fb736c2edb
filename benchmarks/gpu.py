"""The GPU variant (``fleet bench --gpu``): packs on CUDA vs raw batched torch vs FastAPI on the same GPU.

Why: on G4dn the packs run their members on ``cuda:N`` (``configs/gpu.pbtxt``, ``KIND_GPU``); the question
is how much of the GPU's own rate they deliver, and how they compare with the classic server moved to the
GPU. Three contenders, same models, same Zipf sequence, same machine:

* ``packs_grpc``: tritonserver with ``--model-config-name=gpu`` (``TritonServer(family="gpu")``), gRPC aio;
* ``fastapi_http``: ``benchmarks.fastapi_baseline --device cuda``, aiohttp (same as the CPU peers phase);
* ``torch_batched`` (the limit): no server at all. In this process, the same models on the GPU, fed the
  Zipf sequence in groups of ``concurrency`` requests, one forward pass per distinct member per group (what
  perfect dynamic batching would do), synchronised after each group. Its rate is what the GPU and torch
  can do for this mix; servers can only approach it.

Needs a machine with an NVIDIA GPU and a CUDA build of torch in the venv, and a Python-backend stub
environment with numpy < 2 (see docs/benchmarks.md, "GPU"). Without CUDA it returns
``{"skipped": reason}`` and the suite says so; nothing else runs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.common import _median, _say
from benchmarks.driver import zipf_order
from benchmarks.peers import PeersConfig, measure, serving
from benchmarks.torch_limit import torch_batched_limit


@dataclass(frozen=True)
class GpuConfig:
    peers: PeersConfig = PeersConfig(models=1000, family="gpu", fastapi_device="cuda",
                                     contenders=("packs_grpc", "fastapi_http"), concurrency=64,
                                     sweep_concurrency=(16, 64, 256))
    torch_seconds: float = 10.0
    device: str = "cuda"


def cuda_unavailable_reason() -> str | None:
    """None when a CUDA device is usable, else why not (shown to the user, recorded in the JSON)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return "torch is not installed"
    if not torch.cuda.is_available():
        return (f"no CUDA device: torch {torch.__version__} reports torch.cuda.is_available() == False "
                "(CPU-only build or no NVIDIA GPU/driver)")
    return None


def run_gpu(models_dir: Path, work: Path, config: GpuConfig = GpuConfig(), seed: int = 0,
            progress: bool = True) -> dict:
    reason = cuda_unavailable_reason()
    if reason:
        _say(f"GPU benchmark skipped: {reason}", progress)
        return {"skipped": reason}
    peers_config = replace(config.peers, family="gpu", fastapi_device=config.device)
    with serving(models_dir, work, peers_config, progress) as served:
        peers = measure(served, peers_config, seed, progress)
        order = zipf_order(len(served["targets"]), peers_config.zipf_s, 400_000, seed, seed + 3000).tolist()
        limits = [torch_batched_limit(served["source"], served["targets"], order, peers_config.concurrency,
                                      config.torch_seconds, config.device) for _ in range(peers_config.rounds)]
    limit_rps = _median(r["rps"] for r in limits)
    summary = {name: {"rps": s["rps"], "p99_ms": s["p99_ms"]} for name, s in peers["summary"].items()}
    summary["torch_batched"] = {"rps": limit_rps, "p99_ms": float("nan")}
    ratios = {f"{name}_over_torch_batched_rps": s["rps"] / limit_rps for name, s in peers["summary"].items()}
    if "fastapi_http" in peers["summary"] and "packs_grpc" in peers["summary"]:
        ratios["packs_grpc_over_fastapi_rps"] = peers["ratios"]["packs_grpc_over_fastapi_rps"]
    return {"peers": peers, "torch_batched": limits, "summary": summary, "ratios": ratios,
            "device": limits[0]["device"] if limits else None, "skipped": None}
