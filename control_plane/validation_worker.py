"""The sandboxed half of artifact validation: a fork server, one fresh child process per artifact.

Run as `python -m control_plane.validation_worker` by control_plane.validation, which starts it with an
allow-listed environment (no API token, Triton key or cloud credentials) and in its own network namespace
where the machine allows it. It imports torch once (seconds of CPU), prints `ready`, then for each JSON job
line on stdin ({"path", "format", "signature", "memory_bytes", "cpu_s", "timeout_s", "log"}) forks a child
that sets its own RLIMIT_AS and RLIMIT_CPU before it opens the artifact, loads it from the file, calls it
once and exits. The server kills a child that outlives the wall timeout, and answers one JSON verdict line
({"ok": true} or {"ok": false, "kind", "reason"}). Whatever a child does (hang, exhaust memory, abort), the
next artifact gets a new child of the same clean parent, which never touched an artifact itself.

Unpickling: torch.jit.load uses TorchScript's own unpickler, which builds only tensors and TorchScript
types. torch.export.load in torch 2.13 is not so careful: pickled weights and tensor constants go through
`torch.load(..., weights_only=False)` and "opaque" constants through `pickle.loads`, either of which runs
any code the file names. Here both are forced to weights_only semantics before anything is read, so such
a payload is refused instead of executed (and the process runs without secrets or network regardless).
"""
from __future__ import annotations

import json
import os
import pickle
import resource
import select
import signal
import sys
import time
from pathlib import Path

from model_repository import families
from model_repository.families import runtime_module
from model_repository.formats import HOW_TO_PRODUCE, INTEGER_DTYPES, TORCH_DTYPES


def harden_unpickling(torch) -> None:
    """Make every unpickling the loaders do inside this process weights-only (tensors and plain data)."""
    import io

    from torch import _weights_only_unpickler
    from torch.export.pt2_archive import _package

    original_load = torch.load

    def weights_only_load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original_load(*args, **kwargs)

    class WeightsOnlyPickle:
        """Stands in for the `pickle` module inside torch.export's archive reader."""

        @staticmethod
        def loads(data: bytes, **_: object):
            return _weights_only_unpickler.Unpickler(io.BytesIO(data), encoding="utf-8").load()

        def __getattr__(self, name: str):
            raise AttributeError(f"pickle.{name} is disabled in the validator")

    torch.load = weights_only_load  # the archive reader calls torch.load through the torch module
    _package.pickle = WeightsOnlyPickle()


def _example(torch, spec: dict, batch: int):
    shape = [batch] + [d if d > 0 else 2 for d in spec["shape"][1:]]
    dtype = getattr(torch, TORCH_DTYPES[spec["dtype"]])
    if spec["dtype"] == "BOOL":
        return torch.randint(0, 2, shape).to(torch.bool)
    if spec["dtype"] in INTEGER_DTYPES:
        low, high = spec.get("value_range") or (0, 2)
        return torch.randint(int(low), int(high), shape, dtype=dtype)
    return torch.randn(shape, dtype=dtype)


def _first_line(error: BaseException, last: bool = False) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
    return (lines[-1] if last else lines[0])[:300]


def _memory_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if "alloc" in line.lower() or "memory" in line.lower()]
    return (lines[0] if lines else _first_line(error))[:300]


def _out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or "can't allocate memory" in text or "bad_alloc" in text \
        or "out of memory" in text


def _load(torch, job: dict):
    """(callable module, what a split starts from): the artifact loaded from its file, or, for a weights
    file registered against an architecture (job["program"]), that program bound to the weights."""
    path, fmt = job["path"], job["format"]
    program = job.get("program")
    if program is not None:
        programs = runtime_module("pack_programs")
        loaded = programs.load_program("check", Path(program["path"]), fmt, program["spec"])
        return loaded.member(Path(path)), None
    if fmt == "torch_export":
        exported = torch.export.load(path)
        return exported.module(), exported
    module = torch.jit.load(path, map_location="cpu")
    return module, module


def check(torch, path: str, fmt: str, signature: dict, job: dict | None = None) -> dict:
    """Load the artifact from its file and call it with inputs of the declared signature; with
    job["split_dir"], split it into program and weights there (model_repository/families.py)."""
    job = job or {"path": path, "format": fmt}
    try:
        module, source = _load(torch, job)
    except Exception as error:  # noqa: BLE001  every loader failure is the artifact's
        if _out_of_memory(error):
            return {"ok": False, "kind": "memory", "reason": _memory_line(error)}
        if isinstance(error, pickle.UnpicklingError) or "weights only load failed" in str(error).lower():
            return {"ok": False, "kind": "pickle",
                    "reason": "the archive holds a pickle that names code or objects other than tensors and plain "
                              "data; such pickles can run code, so the validator refuses them without running "
                              f"them. Re-save the model from plain tensors. {HOW_TO_PRODUCE}"}
        if job.get("program") is not None:
            return {"ok": False, "kind": "load", "reason": f"the weights do not load into their architecture's "
                                                           f"program ({_first_line(error)})"}
        what = "torch.export program (.pt2)" if fmt == "torch_export" else "TorchScript archive"
        return {"ok": False, "kind": "load",
                "reason": f"the artifact looks like a {what} but does not load ({_first_line(error)}); "
                          f"{HOW_TO_PRODUCE}"}
    inputs = [_example(torch, s, 2) for s in signature["inputs"]]
    try:
        with torch.inference_mode():
            outputs = module(*inputs)
    except Exception as error:  # noqa: BLE001
        if _out_of_memory(error):
            return {"ok": False, "kind": "memory", "reason": _memory_line(error)}
        hint = (" (a torch.export program must be exported with a dynamic batch dimension: "
                "dynamic_shapes={...: {0: torch.export.Dim('batch')}})") if fmt == "torch_export" else ""
        return {"ok": False, "kind": "call", "reason": "calling the model with the declared inputs (batch of 2) "
                                                       f"failed: {_first_line(error, last=True)}{hint}"}
    if not isinstance(outputs, (tuple, list)):
        outputs = (outputs,)
    declared = signature["outputs"]
    if len(outputs) != len(declared):
        return {"ok": False, "kind": "signature",
                "reason": f"the model returns {len(outputs)} outputs, the signature declares {len(declared)}"}
    for out, spec in zip(outputs, declared, strict=True):
        want = getattr(torch, TORCH_DTYPES[spec["dtype"]])
        if not isinstance(out, torch.Tensor):
            return {"ok": False, "kind": "signature", "reason": f"{spec['name']} is not a tensor"}
        if out.dtype != want:
            return {"ok": False, "kind": "signature",
                    "reason": f"{spec['name']} is {str(out.dtype).removeprefix('torch.')}, the signature declares "
                              f"{spec['dtype']} ({TORCH_DTYPES[spec['dtype']]}): fix the signature's dtype or "
                              "cast the output in the model"}
        expected = [2] + spec["shape"][1:]
        if out.dim() != len(expected) or any(e > 0 and e != a for e, a in zip(expected, out.shape, strict=True)):
            return {"ok": False, "kind": "signature",
                    "reason": f"{spec['name']} has shape {list(out.shape)} for a batch of 2, the signature "
                              f"declares {spec['shape']}"}
    verdict: dict = {"ok": True}
    if job.get("split_dir") and source is not None:
        verdict["split"] = _split(torch, source, fmt, Path(job["split_dir"]), inputs, tuple(outputs))
    elif job.get("split_dir") and job.get("program") is not None:  # weights registered for an architecture
        spec = job["program"]["spec"]
        runtime_module("pack_weights").write_weights(
            Path(job["split_dir"]) / "weights.safetensors", [(e["name"], module.tensors[e["name"]]) for e in spec])
        verdict["split"] = {"ok": True, "weights": "weights.safetensors", "program": "", "reason": "", "spec": []}
    return verdict


def _split(torch, source, fmt: str, out: Path, inputs: list, outputs: tuple) -> dict:
    """Split what was just loaded and checked; a failure here costs the split, never the registration."""
    try:
        if fmt == "torch_export":
            split = families.split_export(torch, source, out)
        else:
            split = families.split_torchscript(torch, source, out)
        if split.ok:
            split = families.verify(torch, split, out, fmt, inputs, outputs)
    except Exception as error:  # noqa: BLE001
        if _out_of_memory(error):
            raise
        split = families.Split(False, f"splitting failed ({_first_line(error)}); it is served whole")
    return split.to_json()


def _run_child(torch, job: dict, verdict_fd: int) -> None:
    """In the forked child: limit this process, then load and check the artifact; never returns."""
    code = 0
    try:
        log_fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        resource.setrlimit(resource.RLIMIT_AS, (job["memory_bytes"], job["memory_bytes"]))
        resource.setrlimit(resource.RLIMIT_CPU, (job["cpu_s"], job["cpu_s"] + 5))
        try:
            verdict = check(torch, job["path"], job["format"], job["signature"], job)
        except MemoryError as error:
            verdict = {"ok": False, "kind": "memory", "reason": _memory_line(error)}
        os.write(verdict_fd, json.dumps(verdict).encode())
    except BaseException:  # noqa: BLE001  reported to the server as a crash with the log's last line
        code = 70
    finally:
        os._exit(code)


def _log_tail(path: str) -> str:
    try:
        with open(path, errors="replace") as log:
            lines = [line.strip() for line in log.read()[-4000:].splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def run_job(torch, job: dict) -> dict:
    """Fork a child for one artifact, wait for its verdict within the job's wall timeout, reap it."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _run_child(torch, job, write_fd)
    os.close(write_fd)
    deadline = time.monotonic() + job["timeout_s"]
    data = b""
    try:
        while True:
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"ok": False, "kind": "timeout", "reason": f"{job['timeout_s']:.0f} s", "pid": pid}
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number == signal.SIGXCPU:
            return {"ok": False, "kind": "cpu", "reason": "", "pid": pid}
        detail = "; ".join(x for x in (signal.Signals(number).name, _log_tail(job["log"])) if x)
        return {"ok": False, "kind": "crash", "reason": detail, "pid": pid}
    if not data:
        detail = "; ".join(x for x in (f"exit status {os.WEXITSTATUS(status)}", _log_tail(job["log"])) if x)
        return {"ok": False, "kind": "crash", "reason": detail, "pid": pid}
    return {**json.loads(data), "pid": pid}


def warm_up(torch) -> None:
    """Load one program of each format that this process builds itself, so that the lazy imports and
    caches of both loaders are in place before any fork: each child then starts warm (a .pt2 check took
    ~0.8 s in a cold child, mostly first-use imports)."""
    import io

    module = torch.nn.Linear(2, 2).eval()
    example = (torch.zeros(2, 2),)
    script = io.BytesIO()
    torch.jit.save(torch.jit.trace(module, example), script)
    torch.jit.load(io.BytesIO(script.getvalue()))(*example)
    program = io.BytesIO()
    batch = torch.export.Dim("batch", max=64)
    torch.export.save(torch.export.export(module, example, dynamic_shapes=({0: batch},)), program)
    with torch.inference_mode():
        torch.export.load(io.BytesIO(program.getvalue())).module()(*example)


def main() -> None:
    """Serve jobs from stdin, one forked child each, until stdin closes."""
    # Verdicts go to the original stdout; anything torch prints goes to stderr instead.
    verdict_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import torch
    import torch._export.serde.serialize  # noqa: F401  imported once here rather than in every child

    torch.set_num_threads(1)  # before any fork: no intra-op thread pool exists to be copied half-alive
    harden_unpickling(torch)
    warm_up(torch)
    runtime_module("pack_programs")  # the splitter's and the weights check's code, imported before any fork
    import safetensors.torch  # noqa: F401
    verdict_out.write("ready\n")
    verdict_out.flush()
    for line in sys.stdin:
        job = json.loads(line)
        try:
            verdict = run_job(torch, job)
        finally:
            try:
                os.unlink(job["log"])
            except OSError:
                pass
        verdict_out.write(json.dumps(verdict) + "\n")
        verdict_out.flush()


if __name__ == "__main__":
    main()
