"""Builds packs from the registry into a local working copy and publishes it to S3.

The working copy is only a staging area: S3 (with its index) is what servers sync from.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.db import Model, ModelVersion, Pack
from control_plane.registry import Registry, entry_for
from model_repository.formats import SUFFIX
from model_repository.packing import PackPlan, member_file, write_triton_model
from model_repository.s3_sync import upload
from model_repository.triton_config import PackSettings


class RepositoryBuilder:
    def __init__(self, registry: Registry, work_dir: Path, pack_settings: PackSettings | None = None):
        self.registry = registry
        self.repo = Path(work_dir) / "repository"
        self.cache = Path(work_dir) / "artifacts"
        self.repo.mkdir(parents=True, exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        self.pack_settings = pack_settings or PackSettings()

    def _cached(self, version: ModelVersion) -> Path:
        path = self.cache / f"{version.sha256}{SUFFIX[version.format]}"
        if not path.exists():
            self.registry.download_artifact(version.s3_key, path)  # streamed to disk, never held in memory
        return path

    def build(self, session: Session, pack: Pack, settings: PackSettings | None = None) -> int:
        """Write one pack as the registry declares it now; returns its member count (0 removes it).

        `settings` (default: the builder's) carries what differs per pack: its generation and residency budget.
        """
        rows = session.execute(
            select(Model, ModelVersion)
            .join(ModelVersion, (ModelVersion.model == Model.name) & (ModelVersion.version == Model.current_version))
            .where(Model.pack == pack.name, Model.desired == "loaded").order_by(Model.name)).all()
        target = self.repo / pack.name
        if not rows:
            shutil.rmtree(target, ignore_errors=True)
            return 0
        entries = []
        for model, version in rows:
            self._cached(version)
            entries.append(entry_for(model, version).model_copy(
                update={"file": f"{version.sha256}{SUFFIX[version.format]}"}))
        write_triton_model(PackPlan(pack.name, "custom", tuple(entries)), self.cache, self.repo,
                           settings or self.pack_settings)
        wanted = {Path(member_file(e)).name for e in entries}
        for stale in (target / "1" / "members").iterdir():
            if stale.name not in wanted:
                stale.unlink()
        return len(entries)

    def publish(self) -> list[str]:
        return upload(self.repo, self.registry.settings.repository_uri, self.registry.s3)
