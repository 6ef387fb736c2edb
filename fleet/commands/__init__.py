"""The `fleet` command's own subcommands, one module per job; fleet/cli.py names each and imports it only when
it runs (its LazyGroup), so `fleet sync` in the server image imports nothing it does not need."""
from __future__ import annotations

from tqdm import tqdm

# Kept in step with model_repository.profiles.PROFILES (not imported: it pulls torch into every command).
PROFILE_NAMES = ("tiny", "bert-mini", "bert-small", "bert-base", "resnet50", "mixed")


def progress(total: int, unit: str, desc: str, unit_scale: bool = False) -> tqdm:
    return tqdm(total=total, unit=unit, desc=desc, unit_scale=unit_scale, dynamic_ncols=True)
