"""The limit: the same models run by bare torch in this process, with no server, protocol or serialisation.

Why: every server's CPU (or GPU) cost per request is this forward pass plus its own overhead, so it is the
rate no server can beat on the same device and the yardstick for "where the time goes". On the CPU it runs
one request per forward pass (what the servers do at batch 1); on the GPU (``benchmarks.gpu``) in groups
of the offered concurrency, one forward pass per member per group (what perfect dynamic batching would do).
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from benchmarks.serving import Target


def torch_batched_limit(source: Path, targets: Sequence[Target], order: Sequence[int], group: int,
                        seconds: float, device: str, models: dict | None = None) -> dict:
    """Requests per second when the Zipf sequence is served in groups of `group` requests, one forward pass
    per member per group, on `device`, with no server, serialisation or network (group 1 on the CPU: the
    bare torch cost of each request, the limit any CPU server can only approach)."""
    import torch

    from benchmarks.fastapi_baseline import load_models

    def synchronize() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    if models is None:
        models, _ = load_models(source, device)
    inputs = [torch.as_tensor(t.array, device=device) for t in targets]
    ids = [t.member or t.model for t in targets]
    with torch.inference_mode():
        for index in range(len(targets)):  # first calls (TorchScript profiling) outside the clock
            for _ in range(2):
                models[ids[index]](inputs[index])
        synchronize()
        done, groups, started = 0, 0, time.perf_counter()
        position = 0
        while time.perf_counter() - started < seconds:
            chunk = [order[(position + k) % len(order)] for k in range(group)]
            position += group
            by_member: dict[int, list[int]] = defaultdict(list)
            for index in chunk:
                by_member[index].append(index)
            for index, same in by_member.items():
                batch = inputs[index] if len(same) == 1 else torch.cat([inputs[index]] * len(same))
                models[ids[index]](batch)
            synchronize()
            done += group
            groups += 1
        elapsed = time.perf_counter() - started
    cuda = device.startswith("cuda")
    name = torch.cuda.get_device_name(device) if cuda else f"cpu, {torch.get_num_threads()} thread(s)"
    return {"rps": done / elapsed, "us_per_request": elapsed / done * 1e6, "groups": groups, "group": group,
            "seconds": elapsed, "device": name}
