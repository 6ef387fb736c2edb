"""How much a server may hold, per tier: defaults per instance type, and a local server's real memory.

Budgets are stored and served by the control plane; the placement spends the host-RAM budget
(`capacity_bytes`), the sync keeps its disk cache within the disk budget, the pack runtime its GPU
memory within the GPU budget (split over the packs placed on the server), and inf2 packs use at most the
NeuronCores given, each pack instance keeping its members within its share of one core's memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import psutil

GiB = 2**30
# Inferentia2: 32 GiB of HBM per chip, two NeuronCore-v2 per chip (AWS Neuron docs, "Inferentia2
# Architecture"), so 16 GiB per core; ~1 GiB of it is left to the Neuron runtime (I/O tensors, scratchpad),
# as ~1 GiB of a GPU is left to CUDA's context. A judgement, not a measurement: no Inf2 machine here.
NEURON_CORE_V2_BYTES = 16 * GiB
NEURON_CORE_BUDGET_BYTES = NEURON_CORE_V2_BYTES - GiB


@dataclass(frozen=True)
class TierBudgets:
    host_ram_bytes: int
    disk_bytes: int
    gpu_bytes: int | None = None
    neuron_cores: int | None = None
    neuron_core_bytes: int | None = None  # device memory each NeuronCore may spend on members


# Memory, disk and accelerator of the instance types the deploy targets use, less what the OS, Triton and
# the sync container need (~2 GiB RAM, ~20% of disk); GPU memory keeps ~1 GiB for CUDA's context.
INSTANCE_TYPES: dict[str, TierBudgets] = {
    "c7g.2xlarge": TierBudgets(host_ram_bytes=14 * GiB, disk_bytes=80 * GiB),
    "c7g.4xlarge": TierBudgets(host_ram_bytes=30 * GiB, disk_bytes=80 * GiB),
    "g4dn.xlarge": TierBudgets(host_ram_bytes=14 * GiB, disk_bytes=100 * GiB, gpu_bytes=14 * GiB),
    "g4dn.2xlarge": TierBudgets(host_ram_bytes=30 * GiB, disk_bytes=180 * GiB, gpu_bytes=14 * GiB),
    "inf2.xlarge": TierBudgets(host_ram_bytes=14 * GiB, disk_bytes=80 * GiB, neuron_cores=2,
                               neuron_core_bytes=NEURON_CORE_BUDGET_BYTES),
    "inf2.8xlarge": TierBudgets(host_ram_bytes=126 * GiB, disk_bytes=80 * GiB, neuron_cores=2,
                                neuron_core_bytes=NEURON_CORE_BUDGET_BYTES),
}


def device_bytes(family: str, gpu_budget_bytes: int | None, instance_type: str | None) -> int | None:
    """Device memory one pack instance's tier may share with the other packs on its server: the GPU's
    budget for the gpu family (one instance per pack), one NeuronCore's for inf2 (every inf2 pack runs
    one instance per core, so each core holds one instance of each pack); None: no device tier."""
    if family == "gpu":
        return gpu_budget_bytes
    if family == "inf2":
        known = INSTANCE_TYPES.get(instance_type or "")
        return (known.neuron_core_bytes if known else None) or NEURON_CORE_BUDGET_BYTES
    return None


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
