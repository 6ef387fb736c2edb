"""Runs load tests for the control plane: locust, headless, against the models it serves.

The local target runs locust as a subprocess on this machine; the EKS and ECS targets take the same
definition (LoadTestSpec) and run master and workers inside the cloud (see control_plane/targets).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import sessionmaker

from control_plane.db import AuditEntry, LoadTest
from control_plane.settings import Settings
from control_plane.targets.base import LoadTestResult
from fleet.settings import ClientSettings
from loadtest.results import parse_stats_csv

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = REPO_ROOT / "loadtest" / "triton_models.py"


def summarize(result: LoadTestResult) -> dict:
    """What the registry keeps of a run: the aggregate, how many models it reached, per-model rows."""
    rows = [asdict(stat) for stat in result.stats if stat.name != "Aggregated"]
    return {"aggregated": asdict(result.aggregated), "models_hit": len(rows), "rows": rows[:2000]}


class LoadTestRunner:
    def __init__(self, sessions: sessionmaker, settings: Settings, catalogue):
        self.sessions, self.settings, self.catalogue = sessions, settings, catalogue

    def start(self, loadtest_id: int) -> None:
        threading.Thread(target=self._run, args=(loadtest_id,), daemon=True,
                         name=f"loadtest-{loadtest_id}").start()

    def _run(self, loadtest_id: int) -> None:
        with self.sessions.begin() as session:
            test = session.get(LoadTest, loadtest_id)
            test.status = "running"
            spec = dict(test.spec)
        try:
            results = self._run_local(spec) if spec["target"] == "local" else self._run_in_target(spec)
            status, error = "succeeded", None
        except Exception as problem:  # noqa: BLE001  recorded on the load test, the API stays up
            log.exception("load test %s failed", loadtest_id)
            results, status, error = None, "failed", str(problem)
        with self.sessions.begin() as session:
            test = session.get(LoadTest, loadtest_id)
            test.status, test.results, test.error = status, results, error
            test.finished_at = datetime.now(UTC)
            session.add(AuditEntry(action=f"loadtest.{status}", subject=str(loadtest_id)))

    def _run_in_target(self, spec: dict) -> dict:
        """The same definition, run as locust master and workers inside EKS (Jobs) or ECS (tasks)."""
        from control_plane.deployments import make_target
        from control_plane.targets.base import LoadTestSpec

        target = make_target(spec["target"], self.settings)
        servers = target.discover_servers()
        if not servers:
            raise RuntimeError(f"no Triton servers are up in target '{spec['target']}': deploy first "
                               "(POST /api/v1/deployments)")
        result = target.run_loadtest(LoadTestSpec(
            locustfile=str(LOCUSTFILE.relative_to(REPO_ROOT)), host=servers[0].grpc_url, users=spec["users"],
            spawn_rate=spec["spawn_rate"], duration_s=spec["duration_s"], workers=spec.get("processes", 1),
            env={"LOCUST_MIX": spec["mix"], "LOCUST_ZIPF_S": str(spec["zipf_s"]),
                 "LOCUST_MODELS_FROM": self.settings.public_url or ""}))
        return summarize(result)

    def _run_local(self, spec: dict) -> dict:
        catalogue = self.catalogue()
        if not catalogue:
            raise RuntimeError("no servable models: register models and wait until they are servable")
        if not self.settings.public_url:
            raise RuntimeError("the control plane does not know its own URL (FLEET_PUBLIC_URL) for locust "
                               "to read the model catalogue from")
        with tempfile.TemporaryDirectory(prefix="fleet-loadtest-") as tmp:
            prefix = Path(tmp) / "run"
            command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
                       "-u", str(spec["users"]), "-r", str(spec["spawn_rate"]), "-t", f"{spec['duration_s']}s",
                       "--csv", str(prefix), "--host", catalogue[0]["server"], "--only-summary",
                       "--models-from", self.settings.public_url, "--mix", spec["mix"],
                       "--zipf-s", str(spec["zipf_s"])]
            if spec.get("processes", 1) > 1:
                command += ["--processes", str(spec["processes"])]
            # The token travels in the environment, not on a command line that `ps` shows.
            env = {**os.environ, **ClientSettings(api_token=self.settings.api_token).environment(),
                   "PYTHONSAFEPATH": "1"}
            completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env,
                                       timeout=spec["duration_s"] + 120)
            stats_path = Path(f"{prefix}_stats.csv")
            if not stats_path.exists():
                raise RuntimeError(f"locust exited with {completed.returncode} without results: "
                                   f"{completed.stderr.strip().splitlines()[-5:]}")
            summary = summarize(parse_stats_csv(stats_path.read_text(), str(stats_path)))
        return {**summary, "locust_exit_code": completed.returncode}
