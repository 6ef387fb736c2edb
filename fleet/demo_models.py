"""The models `make demo` (fleet up) registers: a bulk of one profile, then a real-size phase.

Why a phase and not the whole `mixed` profile: 1,000 `mixed` models are ~7 GiB (80 BERT-minis, 15 models of
~100 MiB, 5 of 417 MiB), more than a 2-core CI machine generates, uploads, validates and syncs within the
three minutes the demo may take. One model of each real-size kind still moves hundreds of megabytes through
every step, so a newcomer sees real sizes; `fleet up --profile mixed` runs the whole profile where there is
time.
"""
from __future__ import annotations

import time
from pathlib import Path

import click
from tqdm import tqdm

# One of each kind a 2-core CI machine can move within the demo's time (bert-base, 417 MiB, cannot), and a
# family: consecutive models of one kind are fine-tunes of one base, so the three BERT-minis register as
# one architecture (its program stored and loaded once; each member is its weights: docs/data-plane.md).
REAL_SIZE_PHASE = ("bert-mini", "bert-mini", "bert-mini", "resnet50", "bert-small")


def generate(generated: Path, models: int, profile: str, real_size: tuple[str, ...], seed: int
             ) -> list[tuple[Path, object]]:
    """The demo's models as (folder, manifest entry): `models - len(real_size)` of `profile`, then one model
    of each real-size kind (indices continue, so every id is unique)."""
    from model_repository import profiles
    from model_repository.generator import generate_profile

    bulk = models - len(real_size)
    if bulk < 0:
        raise click.ClickException(f"--models {models} is fewer than the {len(real_size)} real-size models")
    out: list[tuple[Path, object]] = []
    needed = profiles.disk_needed(profile, bulk) if bulk else 0
    needed += sum(profiles.MAX_BYTES[kind] for kind in real_size)
    click.echo(f"   needs up to {needed / 2**30:.2f} GiB on disk ({profiles.disk_free(generated) / 2**30:.1f} "
               "GiB free)")
    try:
        profiles.check_disk(generated, needed)
    except profiles.NotEnoughDisk as error:
        raise click.ClickException(str(error)) from None
    with tqdm(total=models, unit="model", desc="generate") as bar:
        if bulk:
            folder = generated / profile
            manifest = generate_profile(folder, bulk, profile, seed=seed, on_progress=bar.update)
            out += [(folder, entry) for entry in manifest.models]
        start = bulk
        for kind, count in _runs(real_size):
            folder = generated / f"{kind}-{start}"
            manifest = generate_profile(folder, count, kind, seed=seed, start=start, on_progress=bar.update,
                                        family=count > 1)
            out += [(folder, entry) for entry in manifest.models]
            start += count
    return out


def _runs(kinds: tuple[str, ...]) -> list[tuple[str, int]]:
    """Consecutive equal kinds as (kind, count): ("a", "a", "b") -> [("a", 2), ("b", 1)]."""
    runs: list[tuple[str, int]] = []
    for kind in kinds:
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1] + 1)
        else:
            runs.append((kind, 1))
    return runs


def served_bytes(api) -> tuple[int, int, str]:
    """Total bytes of the servable models, and the largest one's bytes and name, as the registry reports them."""
    total, largest, name, page = 0, 0, "", 1
    while True:
        body = api.call("GET", "/api/v1/models", params={"status": "servable", "per_page": 1000,
                                                        "page": page}).json()
        for item in body["items"]:
            total += item["bytes"]
            if item["bytes"] > largest:
                largest, name = item["bytes"], item["name"]
        if page * body["per_page"] >= body["total"]:
            return total, largest, name
        page += 1


def first_answers(api, names: list[str]) -> list[dict]:
    """Time each real-size model's first (cold: the pack loads it) and second (warm) answer over gRPC."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    from loadtest.payloads import random_inputs
    from model_repository.manifest import NUMPY_DTYPES, TensorSpec

    rows = []
    for name in names:
        model = api.call("GET", f"/api/v1/models/{name}").json()
        specs = [TensorSpec(**spec) for spec in model["signature"]["inputs"]]
        arrays = random_inputs(specs, 1, np.random.default_rng(0))
        client = grpcclient.InferenceServerClient(model["endpoints"][0]["grpc_url"])
        try:
            inputs = []
            for spec, array in zip(specs, arrays, strict=True):
                tensor = grpcclient.InferInput(spec.name, list(array.shape), spec.dtype)
                tensor.set_data_from_numpy(array.astype(NUMPY_DTYPES[spec.dtype]))
                inputs.append(tensor)
            timings = []
            for _ in range(2):
                begin = time.perf_counter()
                client.infer(model["pack"], inputs, parameters=model["request_parameters"], client_timeout=120)
                timings.append(time.perf_counter() - begin)
        finally:
            client.close()
        family = model.get("architecture") or {}
        rows.append({"name": name, "bytes": model["bytes"], "first_s": round(timings[0], 3),
                     "warm_ms": round(timings[1] * 1000, 1), "architecture": family.get("id"),
                     "family_members": family.get("members", 0)})
    return rows
