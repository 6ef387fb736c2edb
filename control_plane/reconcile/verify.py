"""Loading a pack and verifying what the server serves: `loaded` only once Triton's config for the pack
carries the generation that was built.

A server that syncs itself (a sidecar) may not have the new files yet; Triton treats the load of an
unchanged model as a no-op, so only the generation in the config it serves tells. If the pack's residency
budget differs from the placement's, the pack is loaded again with Triton's config override carrying the
placement's budget (the files stay those on the server's disk); the same for the device tier's budget
(gpu and inf2 servers). These talk to one Triton only (model_repository.triton_admin), no registry.
"""
from __future__ import annotations

from dataclasses import dataclass

from control_plane.pending import sync_behind
from model_repository.triton_admin import ModelConfig, TritonAdmin


@dataclass(frozen=True)
class LoadResult:
    state: str  # loaded | pending (serves an older generation, or none yet) | failed
    generation: int  # the generation the server was read back to serve (-1: none or unknown)
    error: str | None
    residency_bytes: int = -1  # the max_resident_bytes it was read back to run with (-1: unknown)
    device_bytes: int = -1  # the max_device_bytes it was read back to run with (-1: none or unknown)


def load_and_verify(triton: TritonAdmin, pack: str, generation: int, residency: int | None,
                    device: int | None = None) -> LoadResult:
    """Load a pack, then read its config back: `loaded` only if the server serves `generation` with the
    residency (and device) budget asked for."""
    loaded = triton.load(pack)
    if not loaded.ok:
        return LoadResult("failed", -1, loaded.error)
    config, unverified = _serving(triton, pack, generation)
    if unverified is not None:
        return unverified
    if (residency and config.parameter("max_resident_bytes") != str(residency)) or (
            device and config.parameter("max_device_bytes") != str(device)):
        return _override_budgets(triton, pack, generation, config, residency, device)
    return _loaded(config, generation)


def resize(triton: TritonAdmin, pack: str, generation: int, residency: int, device: int | None = None) -> LoadResult:
    """Reload a loaded pack with other residency (and device tier) budgets, keeping the server's files."""
    config, unverified = _serving(triton, pack, generation)
    if unverified is not None:
        return unverified
    return _override_budgets(triton, pack, generation, config, residency, device)


def _serving(triton: TritonAdmin, pack: str, generation: int) -> tuple[ModelConfig, LoadResult | None]:
    """The pack's config as the server serves it, and a result instead when that is not `generation`."""
    read = triton.config(pack)
    if read.config is None:
        return ModelConfig(), LoadResult("failed", -1, read.error)
    served = read.config.parameter("generation")
    if served != str(generation):
        return read.config, LoadResult("pending", read.config.int_parameter("generation"),
                                       sync_behind(served, generation),
                                       read.config.int_parameter("max_resident_bytes"))
    return read.config, None


def _override_budgets(triton: TritonAdmin, pack: str, generation: int, config: ModelConfig,
                      residency: int | None, device: int | None = None) -> LoadResult:
    override = config.with_parameters({"max_resident_bytes": residency, "max_device_bytes": device})
    loaded = triton.load(pack, config=override)
    if not loaded.ok:
        return LoadResult("failed", -1, f"residency budget override: {loaded.error}")
    read = triton.config(pack)
    if read.config is None:
        return LoadResult("failed", -1, read.error)
    served = read.config.parameter("generation")
    if served != str(generation):
        return LoadResult("pending", read.config.int_parameter("generation"), sync_behind(served, generation),
                          read.config.int_parameter("max_resident_bytes"),
                          read.config.int_parameter("max_device_bytes"))
    return _loaded(read.config, generation)


def _loaded(config: ModelConfig, generation: int) -> LoadResult:
    return LoadResult("loaded", generation, None, config.int_parameter("max_resident_bytes"),
                      config.int_parameter("max_device_bytes"))
