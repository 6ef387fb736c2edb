"""Artifact validation in isolated worker processes.

A registered artifact is untrusted: loading it may raise, hang or crash the interpreter. It is therefore
loaded and run in a separate process (a small spawn pool kept warm, since importing torch costs ~1 s);
the web server only sees a verdict. A crashed worker is replaced and the upload is rejected.
"""
from __future__ import annotations

import io
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool


class ArtifactRejected(ValueError):
    """The artifact is not a TorchScript module matching its declared signature; says why."""


def _example(spec: dict, batch: int):
    import torch

    shape = [batch] + [d if d > 0 else 2 for d in spec["shape"][1:]]
    if spec["dtype"] == "INT64":
        low, high = spec.get("value_range") or (0, 2)
        return torch.randint(int(low), int(high), shape, dtype=torch.int64)
    return torch.randn(shape)


def check_artifact(data: bytes, signature: dict) -> dict:
    """Runs in a worker: load the TorchScript bytes and call it with inputs of the declared signature."""
    import torch

    torch.set_num_threads(1)
    try:
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as error:  # noqa: BLE001  every loader failure means "not TorchScript"
        return {"ok": False, "reason": "the artifact is not a TorchScript archive saved with torch.jit.save "
                                       f"({str(error).splitlines()[0][:200]})"}
    try:
        with torch.inference_mode():
            outputs = module(*[_example(s, 2) for s in signature["inputs"]])
    except Exception as error:  # noqa: BLE001
        return {"ok": False, "reason": "calling the model with the declared inputs failed: "
                                       f"{str(error).strip().splitlines()[-1][:300]}"}
    if not isinstance(outputs, (tuple, list)):
        outputs = (outputs,)
    declared = signature["outputs"]
    if len(outputs) != len(declared):
        return {"ok": False, "reason": f"the model returns {len(outputs)} outputs, the signature declares "
                                       f"{len(declared)}"}
    for out, spec in zip(outputs, declared, strict=True):
        if not isinstance(out, torch.Tensor) or out.dtype != torch.float32:
            return {"ok": False, "reason": f"{spec['name']} must be a float32 tensor"}
        expected = [2] + spec["shape"][1:]
        if out.dim() != len(expected) or any(e > 0 and e != a for e, a in zip(expected, out.shape, strict=True)):
            return {"ok": False, "reason": f"{spec['name']} has shape {list(out.shape)} for a batch of 2, "
                                           f"the signature declares {spec['shape']}"}
    return {"ok": True}


class ArtifactValidator:
    def __init__(self, workers: int = 2, timeout_s: float = 60.0):
        self.workers, self.timeout_s = workers, timeout_s
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    def validate(self, data: bytes, signature: dict) -> None:
        with self._lock:
            pool = self._pool
        try:
            verdict = pool.submit(check_artifact, data, signature).result(timeout=self.timeout_s)
        except BrokenProcessPool:
            self._replace(pool)
            raise ArtifactRejected("loading the artifact crashed the validator process; it is not a "
                                   "usable TorchScript module") from None
        except FutureTimeout:
            self._replace(pool)
            raise ArtifactRejected(f"the artifact did not load and run within {self.timeout_s:.0f} s") from None
        if not verdict["ok"]:
            raise ArtifactRejected(verdict["reason"])

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                broken.shutdown(wait=False, cancel_futures=True)
                for process in list(getattr(broken, "_processes", {}).values()):
                    process.kill()
                self._pool = self._new_pool()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
