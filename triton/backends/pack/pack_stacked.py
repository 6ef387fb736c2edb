"""One forward for several members of one architecture: their weights stacked, `torch.func.vmap` over them.

Why: a Triton batch that holds requests for 32 members of one architecture costs 32 forwards when each
member runs alone; for small members each forward is mostly per-call overhead (Python, dispatch, small
kernels), so running them as one forward over stacked weights is faster (measured on one CPU thread, 32 tiny
MLPs: 2.3x, benchmarks/families.py). For compute-bound members (BERT-mini on CPU) it is not: the pack
runtime stacks only where its knobs say (`stack_members`, `stack_max_member_bytes`).

The stacked outputs equal the per-member outputs to float rounding, not bit for bit: a batched matmul sums
in another order than a plain one.

This file is copied into every pack next to model.py; it imports only torch and pack_programs.
"""
from __future__ import annotations

from collections import defaultdict

import pack_programs


def plan_groups(rows: dict[str, int], minimum: int) -> tuple[list[list[str]], list[str]]:
    """Members grouped by their batch's row count (vmap needs one shape per input across members):
    groups of at least `minimum` members run stacked, the rest alone. Returns (groups, alone)."""
    by_rows: dict[int, list[str]] = defaultdict(list)
    for ident, count in rows.items():
        by_rows[count].append(ident)
    groups = [idents for idents in by_rows.values() if len(idents) >= max(2, minimum)]
    grouped = {ident for group in groups for ident in group}
    return groups, [ident for ident in rows if ident not in grouped]


def forward(members: list[pack_programs.BoundMember], batches: list[list]) -> list[list]:
    """Run members of one architecture (same device) as one forward.

    `batches[k]`: member k's input tensors, all members with the same shapes. Returns each member's
    outputs as a list of tensors.
    """
    import torch

    program = members[0].program.on(members[0].device)
    stacked = pack_programs.stack_tensors(members)
    inputs = [torch.stack([batch[i] for batch in batches]) for i in range(len(batches[0]))]
    result = program.stacked(stacked, inputs)
    outputs = list(result) if isinstance(result, (tuple, list)) else [result]
    return [[out[k] for out in outputs] for k in range(len(members))]
