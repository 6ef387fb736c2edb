"""Load tests on ECS: the scripts the locust tasks run, and the run_task orchestration around them.

The scripts are run for real (locust master and worker on loopback, CSV upload to moto's S3), because a
wrong flag or a quoting slip would only show up inside a container otherwise. The orchestration runs
against moto's ECS, where `LocustAgent` plays the containers: moto starts nothing.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from control_plane.targets.base import DeploymentSpec, LoadTestSpec, TargetError
from control_plane.targets.ecs.loadtest import LocustCommands
from loadtest.results import parse_stats_csv

LOCUSTFILE = Path(__file__).parent / "fixtures" / "fake_adfilter_locustfile.py"
STATS_CSV = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
    "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
    "99.99%,100%\n"
    "grpc,adfilter,120000,12,2,2.1,1,40,16,2000.5,0.2,2,2,3,3,4,5,7,9,20,35,40\n"
    ",Aggregated,120000,12,2,2.1,1,40,16,2000.5,0.2,2,2,3,3,4,5,7,9,20,35,40\n"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_master_and_worker_scripts_run_locust_and_upload_its_csvs(moto_url, aws, tmp_path):
    s3 = aws("s3")
    s3.create_bucket(Bucket="results")
    spec = LoadTestSpec(locustfile=str(LOCUSTFILE), host="nlb.example:8001", users=4, spawn_rate=4,
                        duration_s=1, workers=1)
    commands = LocustCommands(spec, spec.host, workers_max_wait_s=30, master_port=_free_port(),
                              results_dir=str(tmp_path / "results"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "RESULTS_BUCKET": "results", "RESULTS_PREFIX": "loadtests/run-1/", "AWS_ENDPOINT_URL": moto_url,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}

    master = subprocess.Popen(["sh", "-c", commands.master()], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    worker = subprocess.Popen(["sh", "-c", commands.worker("127.0.0.1")], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        output, _ = master.communicate(timeout=60)
        assert master.returncode == 0, output
        assert worker.wait(timeout=30) == 0  # workers leave when the master quits
    finally:
        for process in (master, worker):
            process.kill()

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="results", Prefix="loadtests/run-1/")["Contents"]}
    assert {"loadtests/run-1/adfilter_stats.csv", "loadtests/run-1/adfilter_run.json"} <= keys
    text = s3.get_object(Bucket="results", Key="loadtests/run-1/adfilter_stats.csv")["Body"].read().decode()
    stats = {stat.name: stat for stat in parse_stats_csv(text).stats}
    assert stats["adfilter"].requests > 0 and stats["adfilter"].failures == 0
    assert stats["Aggregated"].requests == stats["adfilter"].requests


def test_the_master_script_exits_non_zero_when_locust_fails(tmp_path):
    """The task's exit code is what the target checks before collecting results."""
    spec = LoadTestSpec(locustfile="missing.py", host="h:8001")
    commands = LocustCommands(spec, spec.host, workers_max_wait_s=1, results_dir=str(tmp_path / "r"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["sh", "-c", commands.master()], env=env, cwd=tmp_path, capture_output=True,
                            timeout=60)
    assert result.returncode != 0


class LocustAgent:
    """What the locust containers would do on ECS: the master writes its stats CSV to the results prefix
    it was given and exits once the expected workers have started; workers keep running."""

    def __init__(self, ecs, s3, cluster: str, workers: int, csv_text: str | None) -> None:
        self.ecs, self.s3, self.cluster = ecs, s3, cluster
        self.workers, self.csv_text = workers, csv_text
        self.thread = threading.Thread(target=self._play, daemon=True)

    def _tasks(self) -> list[dict]:
        arns = self.ecs.list_tasks(cluster=self.cluster, startedBy="triton-fleet-loadtest")["taskArns"]
        return self.ecs.describe_tasks(cluster=self.cluster, tasks=arns)["tasks"] if arns else []

    def _play(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            tasks = self._tasks()
            masters = [t for t in tasks if "--master " in _command(t)]
            if masters and len(tasks) - 1 >= self.workers:
                overrides = masters[0]["overrides"]["containerOverrides"][0]
                env = {e["name"]: e["value"] for e in overrides["environment"]}
                if self.csv_text is not None:
                    self.s3.put_object(Bucket=env["RESULTS_BUCKET"],
                                       Key=env["RESULTS_PREFIX"] + "adfilter_stats.csv",
                                       Body=self.csv_text.encode())
                self.ecs.stop_task(cluster=self.cluster, task=masters[0]["taskArn"],
                                   reason="Essential container in task exited")
                return
            time.sleep(0.02)


def _command(task: dict) -> str:
    return task["overrides"]["containerOverrides"][0]["command"][0]


@pytest.fixture
def fleet(make_target, scheduler, aws):
    """A deployed (moto) fleet and its outputs; the results bucket is the repository's."""
    aws("s3").create_bucket(Bucket="models")
    target = make_target()
    with scheduler.starting_tasks_when_created(1):
        target.deploy(DeploymentSpec(repository_uri="s3://models/fleet"))
    return target, scheduler.outputs()


def test_run_loadtest_starts_workers_at_the_masters_address_and_collects_the_stats(fleet, aws):
    target, outputs = fleet
    ecs = aws("ecs")
    agent = LocustAgent(ecs, aws("s3"), outputs["ClusterName"], workers=3, csv_text=STATS_CSV)
    agent.thread.start()
    messages: list[str] = []
    spec = LoadTestSpec(locustfile="loadtest/bid_requests.py", host="", users=64, duration_s=30, workers=3,
                        env={"BID_MIX": "ctv"})

    result = target.run_loadtest(spec, messages.append)

    agent.thread.join(timeout=10)
    assert (result.aggregated.requests, result.aggregated.p99_ms) == (120000, 9)
    assert result.stats_csv == STATS_CSV
    tasks = agent._tasks()
    master = next(t for t in tasks if "--master " in _command(t))
    workers = [t for t in tasks if t is not master]
    master_ip = next(d["value"] for d in master["attachments"][0]["details"]
                     if d["name"] == "privateIPv4Address")
    assert len(workers) == 3
    assert all(f"--worker --master-host {master_ip} --master-port 5557" in _command(t) for t in workers)
    assert f"--host {outputs['GrpcEndpoint']}" in _command(master)  # no host given: the NLB
    assert "--expect-workers 3" in _command(master) and "--run-time 30s" in _command(master)
    assert all(t["taskDefinitionArn"] == outputs["LoadTestTaskDefinitionArn"] for t in tasks)
    assert all({"name": "BID_MIX", "value": "ctv"} in t["overrides"]["containerOverrides"][0]["environment"]
               for t in tasks)
    # the target stops the workers it started once the master is done
    assert {t["lastStatus"] for t in workers} == {"STOPPED"}
    assert all(t["stoppedReason"].startswith("load test ") for t in workers)
    assert any(m.startswith("collected s3://models/loadtests/") for m in messages)


def test_a_master_that_uploaded_nothing_is_reported_with_where_the_csv_should_be(fleet, aws):
    target, outputs = fleet
    agent = LocustAgent(aws("ecs"), aws("s3"), outputs["ClusterName"], workers=1, csv_text=None)
    agent.thread.start()
    with pytest.raises(TargetError,
                       match=r"s3://models/loadtests/.*/adfilter_stats.csv does not exist.*boto3"):
        target.run_loadtest(LoadTestSpec(locustfile="loadtest/bid_requests.py", host="nlb:8001", workers=1))
    agent.thread.join(timeout=10)


def test_a_load_test_that_never_finishes_times_out_and_stops_all_its_tasks(make_target, scheduler, aws):
    target = make_target(task_start_timeout_s=0.2, loadtest_grace_s=0.2)
    with scheduler.starting_tasks_when_created(1):
        target.deploy(DeploymentSpec(repository_uri="s3://models/fleet"))
    spec = LoadTestSpec(locustfile="loadtest/bid_requests.py", host="nlb:8001", duration_s=0, workers=2)

    with pytest.raises(TargetError, match=r"locust master did not finish within 0s \(last status RUNNING\)"):
        target.run_loadtest(spec)

    cluster = scheduler.outputs()["ClusterName"]
    ecs = aws("ecs")
    arns = ecs.list_tasks(cluster=cluster, startedBy="triton-fleet-loadtest")["taskArns"]
    assert len(arns) == 3
    assert {t["lastStatus"] for t in ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"]} == {"STOPPED"}


def test_a_load_test_needs_a_worker(make_target):
    with pytest.raises(TargetError, match="at least one worker"):
        make_target().run_loadtest(LoadTestSpec(locustfile="loadtest/bid_requests.py", host="h", workers=0))
