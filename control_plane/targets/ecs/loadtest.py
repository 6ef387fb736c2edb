"""Run locust as ECS tasks (one master, N workers) and collect its stats CSV from S3.

Why a shell script per task: ECS overrides may replace a container's command but not its entry point, so
the load-test task definition's entry point is `/bin/sh -c` and each run passes one script. The master's
script runs locust headless, then uploads what the run wrote (locust's CSVs and the locustfile's
PREFIX_run.json, which `fleet report` reads) to s3://RESULTS_BUCKET/RESULTS_PREFIX, even when locust
failed, so a broken run still leaves evidence. Why two phases: workers need the master's
address, which exists only once ECS has attached the master task's ENI.
"""
from __future__ import annotations

import shlex
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from control_plane.targets.base import LoadTestResult, LoadTestSpec, Progress, TargetError
from control_plane.targets.ecs.tasks import describe_tasks, private_ip, stop_summary
from loadtest.results import ResultsError
from loadtest.results import parse_stats_csv as parse_locust_csv

LOCUST_CONTAINER = "locust"
CSV_BASENAME = "adfilter"  # locust --csv DIR/adfilter writes adfilter_stats.csv, adfilter_failures.csv ...
_RUN_TASK_MAX = 10  # run_task starts at most 10 tasks per call
_UPLOAD = """import pathlib, sys, boto3
folder, bucket, prefix = sys.argv[1:4]
s3 = boto3.client("s3")
for path in sorted(pathlib.Path(folder).iterdir()):
    if path.suffix in (".csv", ".json"):
        s3.upload_file(str(path), bucket, prefix + path.name)
"""


@dataclass(frozen=True)
class LocustCommands:
    """The shell scripts that the master and worker tasks run."""

    spec: LoadTestSpec
    host: str
    workers_max_wait_s: int
    master_port: int = 5557
    results_dir: str = "/tmp/loadtest"

    def master(self) -> str:
        locust = ["locust", "-f", self.spec.locustfile, "--master",
                  "--master-bind-port", str(self.master_port), "--headless",
                  "--expect-workers", str(self.spec.workers),
                  "--expect-workers-max-wait", str(self.workers_max_wait_s),
                  "--users", str(self.spec.users), "--spawn-rate", str(self.spec.spawn_rate),
                  "--run-time", f"{self.spec.duration_s}s", "--host", self.host,
                  "--csv", f"{self.results_dir}/{CSV_BASENAME}", "--only-summary",
                  # request failures belong in the stats; a non-zero exit means locust itself failed
                  "--exit-code-on-error", "0"]
        upload = ["python3", "-c", _UPLOAD, self.results_dir]
        return (f"mkdir -p {shlex.quote(self.results_dir)}; {shlex.join(locust)}; status=$?; "
                f'{shlex.join(upload)} "$RESULTS_BUCKET" "$RESULTS_PREFIX" || status=1; exit $status')

    def worker(self, master_ip: str) -> str:
        return "exec " + shlex.join(["locust", "-f", self.spec.locustfile, "--worker", "--master-host",
                                     master_ip, "--master-port", str(self.master_port)])


@dataclass(frozen=True)
class LoadTestPlace:
    """Where load-test tasks run, from the stack's outputs."""

    cluster: str
    task_definition: str
    subnets: list[str]
    security_group: str
    results_bucket: str

    @classmethod
    def from_outputs(cls, outputs: dict[str, str]) -> LoadTestPlace:
        return cls(outputs["ClusterName"], outputs["LoadTestTaskDefinitionArn"],
                   outputs["TaskSubnetIds"].split(","), outputs["LoadTestSecurityGroupId"],
                   outputs["ResultsBucket"])


class LoadTestRun:
    """One locust run on ECS; `run` starts it, waits for it and stops every task it started."""

    def __init__(self, ecs: Any, s3: Any, place: LoadTestPlace, spec: LoadTestSpec, host: str,
                 progress: Progress, *, start_timeout_s: float, grace_s: float, poll_s: float) -> None:
        self._ecs, self._s3, self._place, self._spec = ecs, s3, place, spec
        self._progress = progress
        self._start_timeout_s, self._grace_s, self._poll_s = start_timeout_s, grace_s, poll_s
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"
        self.results_prefix = f"loadtests/{self.run_id}/"
        self._commands = LocustCommands(spec, host, workers_max_wait_s=int(start_timeout_s))
        self._started: list[str] = []

    def run(self) -> LoadTestResult:
        try:
            master = self._start(self._commands.master(), count=1,
                                 extra_env={"RESULTS_BUCKET": self._place.results_bucket,
                                            "RESULTS_PREFIX": self.results_prefix})[0]
            master_ip = self._wait_for_address(master)
            self._progress(f"locust master {self.run_id} at {master_ip}; "
                           f"starting {self._spec.workers} workers")
            self._start(self._commands.worker(master_ip), count=self._spec.workers, extra_env={})
            run_s = self._start_timeout_s + self._spec.duration_s + self._grace_s
            stopped = self._wait(master, lambda task: task.get("lastStatus") == "STOPPED", run_s, "finish")
        finally:
            self._stop_all()
        return self._collect(stopped)

    def _start(self, command: str, count: int, extra_env: dict[str, str]) -> list[str]:
        environment = [{"name": k, "value": v} for k, v in {**self._spec.env, **extra_env}.items()]
        arns: list[str] = []
        for batch in range(0, count, _RUN_TASK_MAX):
            started = self._ecs.run_task(
                cluster=self._place.cluster, taskDefinition=self._place.task_definition,
                count=min(_RUN_TASK_MAX, count - batch), group=f"loadtest:{self.run_id}",
                startedBy="triton-fleet-loadtest",
                networkConfiguration={"awsvpcConfiguration": {
                    "subnets": self._place.subnets, "securityGroups": [self._place.security_group]}},
                overrides={"containerOverrides": [{"name": LOCUST_CONTAINER, "command": [command],
                                                   "environment": environment}]})
            if started.get("failures"):
                reasons = "; ".join(f"{f.get('arn', '')} {f.get('reason')} {f.get('detail', '')}".strip()
                                    for f in started["failures"])
                raise TargetError(f"ECS could not start locust tasks: {reasons}. Raise MaxInstances or use a "
                                  "larger InstanceSize so the cluster has room for the load generators")
            batch_arns = [task["taskArn"] for task in started["tasks"]]
            self._started += batch_arns  # recorded at once, so a later failure still stops them
            arns += batch_arns
        return arns

    def _wait_for_address(self, arn: str) -> str:
        task = self._wait(arn, lambda t: private_ip(t) is not None, self._start_timeout_s, "get an address")
        return str(private_ip(task))  # not None: that is what the wait waited for

    def _wait(self, arn: str, done: Callable[[dict[str, Any]], bool], timeout_s: float,
              goal: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        status = ""
        while True:
            task = describe_tasks(self._ecs, self._place.cluster, [arn])[0]
            if task.get("lastStatus") != status:
                status = task.get("lastStatus", "")
                self._progress(f"locust master {self.run_id}: {status}")
            if done(task):
                return task
            if task.get("lastStatus") == "STOPPED":
                raise TargetError(f"locust master stopped before it could {goal}: {stop_summary(task)}")
            if time.monotonic() >= deadline:
                hint = ("with no free capacity the capacity provider must launch an instance first: raise "
                        "EcsConfig.task_start_timeout_s or MaxInstances"
                        if status in ("PROVISIONING", "PENDING", "ACTIVATING") else
                        "locust may still wait for its workers or be stuck: read the loadtest/locust log "
                        "streams")
                raise TargetError(f"locust master did not {goal} within {timeout_s:.0f}s (last status "
                                  f"{status}); {hint}")
            time.sleep(self._poll_s)

    def _stop_all(self) -> None:
        """Stop whatever this run started and is still running: idle load generators cost money."""
        if not self._started:
            return
        for task in describe_tasks(self._ecs, self._place.cluster, self._started):
            if task.get("lastStatus") != "STOPPED":
                self._ecs.stop_task(cluster=self._place.cluster, task=task["taskArn"],
                                    reason=f"load test {self.run_id} finished")

    def _collect(self, master: dict[str, Any]) -> LoadTestResult:
        key = f"{self.results_prefix}{CSV_BASENAME}_stats.csv"
        exit_code = next((c.get("exitCode") for c in master.get("containers", [])
                          if c.get("name") == LOCUST_CONTAINER), None)
        if exit_code not in (None, 0):
            raise TargetError(f"locust master failed ({stop_summary(master)}); its CSVs, if any, are in "
                              f"s3://{self._place.results_bucket}/{self.results_prefix}; read the loadtest/"
                              "locust log stream for the error")
        try:
            text = self._s3.get_object(Bucket=self._place.results_bucket, Key=key)["Body"].read().decode()
        except self._s3.exceptions.NoSuchKey as error:
            raise TargetError(f"locust finished but s3://{self._place.results_bucket}/{key} does not exist: "
                              "the master could not upload its CSVs (check that the loadtest image has "
                              "python3 with boto3 and the task role may write loadtests/*)") from error
        self._progress(f"collected s3://{self._place.results_bucket}/{key}")
        try:  # the parser local and eks runs use, so reports treat every target alike
            return parse_locust_csv(text, f"s3://{self._place.results_bucket}/{key}")
        except ResultsError as error:
            raise TargetError(f"{error}; read the loadtest/locust log stream of the master") from None
