"""How much a server may hold, per tier: defaults per instance type, and a local server's real memory.

Budgets are stored and served by the control plane; the placement spends the host-RAM budget
(`capacity_bytes`), the sync keeps its disk cache within the disk budget, the pack runtime its GPU
memory within the GPU budget, and inf2 packs use at most the NeuronCores given.
"""
from __future__ import annotations

from dataclasses import dataclass

import psutil

GiB = 2**30


@dataclass(frozen=True)
class TierBudgets:
    host_ram_bytes: int
    disk_bytes: int
    gpu_bytes: int | None = None
    neuron_cores: int | None = None


# Memory, disk and accelerator of the instance types the deploy targets use, less what the OS, Triton and
# the sync container need (~2 GiB RAM, ~20% of disk); GPU memory keeps ~1 GiB for CUDA's context.
INSTANCE_TYPES: dict[str, TierBudgets] = {
    "c7g.2xlarge": TierBudgets(host_ram_bytes=14 * GiB, disk_bytes=80 * GiB),
    "c7g.4xlarge": TierBudgets(host_ram_bytes=30 * GiB, disk_bytes=80 * GiB),
    "g4dn.xlarge": TierBudgets(host_ram_bytes=14 * GiB, disk_bytes=100 * GiB, gpu_bytes=14 * GiB),
    "g4dn.2xlarge": TierBudgets(host_ram_bytes=30 * GiB, disk_bytes=180 * GiB, gpu_bytes=14 * GiB),
    "inf2.xlarge": TierBudgets(host_ram_bytes=14 * GiB, disk_bytes=80 * GiB, neuron_cores=2),
    "inf2.8xlarge": TierBudgets(host_ram_bytes=126 * GiB, disk_bytes=80 * GiB, neuron_cores=2),
}


def local_capacity_bytes(servers_on_this_machine: int, fraction: float = 0.8) -> int:
    """A local server's host-RAM budget: its share of the memory available on this machine right now.

    Read from the kernel (psutil's `available`: free plus reclaimable cache), so a busy machine gets
    smaller budgets than an idle one instead of a fixed figure that overcommits it.
    """
    if servers_on_this_machine < 1:
        raise ValueError("servers_on_this_machine must be at least 1")
    return int(psutil.virtual_memory().available * fraction / servers_on_this_machine)


def local_disk_bytes(path: str, servers_on_this_machine: int, fraction: float = 0.5) -> int:
    """A local server's disk-cache budget: its share of the free space where its repository lives."""
    return int(psutil.disk_usage(path).free * fraction / max(1, servers_on_this_machine))
