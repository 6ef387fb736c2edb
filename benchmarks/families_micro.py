"""In-process measurements behind the families runtime's choices (benchmarks/families.py runs them).

* binding: a member's forward through its own shallow copy of the program (the runtime's way, bound once at
  load) vs one shared module whose tensors are swapped in under a lock before each forward; and for
  torch.export, the functional graph call vs `torch.func.functional_call` (which reparametrises the module
  in place, so it needs the lock too);
* stacking: M members of one architecture at batch 1 as M forwards vs one `vmap` forward over their stacked
  weights (pack_stacked.forward), one thread: this sets the knobs stack_members / stack_max_member_bytes;
* tiny loads: a tiny member's load as a whole artifact (`torch.jit.load(path)`) vs mapping its weights and
  binding them to its (already loaded) program.

Every comparison alternates its two sides call by call (A B A B) and reports medians, so a busy moment of the shared
machine hits both.
"""
from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import torch

from model_repository.families import runtime_module


def alternate(a, b, rounds: int, repeats: int) -> tuple[float, float]:
    """Median ms of `a` and `b`, called alternately (a, b, a, b, ...), so a busy moment of the shared machine
    hits both sides alike; one untimed call of each first."""
    a()
    b()
    times_a, times_b = [], []
    for _ in range(rounds * repeats):
        for call, times in ((a, times_a), (b, times_b)):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times_a), statistics.median(times_b)


def _swap(module_c, plan: list, tensors: dict) -> None:
    for attribute, name, subplan in plan:
        if subplan is None:
            module_c.setattr(attribute, tensors[name])
        else:
            _swap(module_c.getattr(attribute), subplan, tensors)


def binding(split, inputs: list, rounds: int = 5, repeats: int = 20) -> dict:
    """Per-forward ms: the bound member vs swap-under-lock on one shared module, for one split member."""
    programs = runtime_module("pack_programs")
    program = programs.load_program("bench", split.program, split.split_format, split.split.spec)
    member = program.member(split.weights)
    lock = threading.Lock()
    if split.split_format == "torchscript":
        shared = program.module._c

        def swapped():
            with lock:
                _swap(shared, program.plan, member.tensors)
                return shared.forward(*inputs)
        other = "swap references under a lock (setattr of every tensor, then forward)"
    else:
        module = torch.export.load(str(split.program)).module()

        def swapped():
            with lock:
                return torch.func.functional_call(module, member.tensors, tuple(inputs))
        other = "torch.func.functional_call under a lock (reparametrises the module in place)"
    with torch.inference_mode():
        bound_ms, swapped_ms = alternate(lambda: member(*inputs), swapped, rounds, repeats)
        same = torch.equal(member(*inputs), swapped())
    return {"format": split.split_format, "tensors": len(split.split.spec), "bound_ms": bound_ms,
            "swapped_ms": swapped_ms, "other": other, "same_outputs": bool(same),
            "ratio_swapped_over_bound": swapped_ms / bound_ms}


def stacking(splits: list, make_input, rounds: int = 5, repeats: int = 10) -> dict:
    """ms for M members at batch 1: M forwards vs one forward over stacked weights (one thread)."""
    programs = runtime_module("pack_programs")
    stacked = runtime_module("pack_stacked")
    first = splits[0]
    program = programs.load_program("bench", first.program, first.split_format, first.split.spec)
    members = [program.member(s.weights) for s in splits]
    batches = [[make_input(k)] for k in range(len(members))]
    with torch.inference_mode():
        loop_ms, stack_ms = alternate(lambda: [m(*b) for m, b in zip(members, batches, strict=True)],
                                      lambda: stacked.forward(members, batches), rounds, repeats)
        looped = torch.cat([m(*b) for m, b in zip(members, batches, strict=True)])
        together = torch.cat([out[0] for out in stacked.forward(members, batches)])
    return {"members": len(members), "weight_bytes": members[0].weight_bytes, "loop_ms": loop_ms,
            "stacked_ms": stack_ms, "speedup": loop_ms / stack_ms,
            "max_abs_difference": float((looped - together).abs().max())}


def tiny_loads(whole: list[Path], splits: list, rounds: int = 5) -> dict:
    """ms per tiny member load: torch.jit.load(path) vs mapping + binding (its program already loaded)."""
    programs = runtime_module("pack_programs")
    first = splits[0]
    program = programs.load_program("bench", first.program, first.split_format, first.split.spec)
    for path in whole:
        path.read_bytes()  # page cache, for both sides
    whole_ms, family_ms = alternate(lambda: [torch.jit.load(str(p)) for p in whole],
                                    lambda: [program.member(s.weights) for s in splits], rounds, 1)
    return {"members": len(whole), "whole_ms_per_member": whole_ms / len(whole),
            "family_ms_per_member": family_ms / len(splits), "ratio_family_over_whole": family_ms / whole_ms}
