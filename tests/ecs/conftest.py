"""Fixtures for the ECS target's tests: one moto server on loopback, reset before every test.

moto stands in for AWS with known differences that these fixtures make explicit (see /work/shared/NOTES.md):
its CloudFormation cannot run the real template, so deploy tests use tests/ecs/fixtures/moto-fleet.yaml; it
never starts a service's tasks, so `EcsScheduler` plays ECS's scheduler with run_task; its awsvpc tasks need
a VPC with DNS hostnames and a registered container instance; and it would stop running tasks by itself.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

from control_plane.targets.ecs import EcsConfig, EcsTarget

REGION = "us-east-1"
REGISTRY = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
MOTO_TEMPLATE = Path(__file__).parent / "fixtures" / "moto-fleet.yaml"


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_url: str) -> Callable[[str], Any]:
    """A factory of boto3 clients for the clean moto server (dummy credentials, us-east-1)."""
    requests.post(f"{moto_url}/moto-api/reset", timeout=10)
    # moto moves a task one lifecycle step per describe (RUNNING to STOPPED in four describes); keep tasks
    # RUNNING until something stops them, as ECS does.
    requests.post(f"{moto_url}/moto-api/state-manager/set-transition", timeout=10, json={
        "model_name": "ecs::task", "transition": {"progression": "manual", "times": 10**9}})

    def client(service: str, **credentials: str) -> Any:
        keys = credentials or {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        return boto3.client(service, endpoint_url=moto_url, region_name=REGION, **keys)

    return client


@dataclass
class Network:
    vpc_id: str
    subnet_ids: list[str]


@pytest.fixture
def network(aws: Callable[[str], Any]) -> Network:
    ec2 = aws("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    # moto builds an awsvpc task's ENI details from the VPC's DNS hostnames (real VPCs for ECS have them on)
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{az}")
               ["Subnet"]["SubnetId"] for i, az in enumerate("ab")]
    return Network(vpc, subnets)


def _register_task_definition(ecs: Any, family: str, container: str, image: str) -> str:
    """An awsvpc task definition like the real template's; moto's run_task wants cpu/memory per container."""
    return ecs.register_task_definition(
        family=family, networkMode="awsvpc", requiresCompatibilities=["EC2"],
        runtimePlatform={"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"},
        containerDefinitions=[{"name": container, "image": f"{REGISTRY}/{image}:0.1.0", "cpu": 16,
                               "memory": 32}])["taskDefinition"]["taskDefinitionArn"]


@pytest.fixture
def make_target(moto_url: str, network: Network, aws: Callable[[str], Any]) -> Callable[..., EcsTarget]:
    """An EcsTarget on moto with the moto-compatible template and fast polling; kwargs override config."""
    ecs = aws("ecs")
    task_definitions = {
        "TritonTaskDefinitionArn": _register_task_definition(ecs, "adfilter", "triton",
                                                             "triton-fleet/server-cpu"),
        "LoadTestTaskDefinitionArn": _register_task_definition(ecs, "loadtest", "locust",
                                                               "triton-fleet/loadtest"),
    }

    def build(session: boto3.Session | None = None, **overrides: Any) -> EcsTarget:
        settings: dict[str, Any] = {
            "image_registry": REGISTRY, "stack_name": "fleet", "region": REGION, "endpoint_url": moto_url,
            "template": MOTO_TEMPLATE, "poll_s": 0.02, "ready_timeout_s": 10.0, "stack_timeout_s": 10.0,
            "task_start_timeout_s": 5.0, "loadtest_grace_s": 5.0,
            "parameters": {"VpcId": network.vpc_id, "PrivateSubnetIds": ",".join(network.subnet_ids),
                           **task_definitions},
        }
        settings.update(overrides)
        session = session or boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing")
        return EcsTarget(EcsConfig(**settings), session=session)

    return build


@dataclass
class EcsScheduler:
    """Plays the part of ECS that moto lacks: starts the service's tasks once the stack created it.

    ECS would start each task in the group "service:NAME" with the service's task definition and network
    configuration; this does the same through run_task, after registering the container instance moto
    needs to place tasks.
    """

    aws: Callable[[str], Any]
    stack_name: str = "fleet"
    started: list[str] = field(default_factory=list)

    def outputs(self, timeout_s: float = 10.0) -> dict[str, str]:
        cfn, deadline = self.aws("cloudformation"), time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stacks = [s for s in cfn.describe_stacks()["Stacks"] if s["StackName"] == self.stack_name]
            if stacks and stacks[0]["StackStatus"] in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
                return {o["OutputKey"]: o["OutputValue"] for o in stacks[0]["Outputs"]}
            time.sleep(0.02)
        raise AssertionError(f"stack {self.stack_name} never completed")

    def add_instance(self, cluster: str) -> None:
        ec2, ecs = self.aws("ec2"), self.aws("ecs")
        instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1,
                                     InstanceType="c7g.2xlarge")["Instances"][0]
        document = {"instanceId": instance["InstanceId"], "region": REGION, "availabilityZone": f"{REGION}a"}
        ecs.register_container_instance(cluster=cluster, instanceIdentityDocument=json.dumps(document))

    def start_service_tasks(self, count: int) -> list[str]:
        outputs, ecs = self.outputs(), self.aws("ecs")
        cluster, name = outputs["ClusterName"], outputs["ServiceName"]
        if not ecs.list_container_instances(cluster=cluster)["containerInstanceArns"]:
            self.add_instance(cluster)
        service = ecs.describe_services(cluster=cluster, services=[name])["services"][0]
        tasks = ecs.run_task(cluster=cluster, taskDefinition=service["taskDefinition"], count=count,
                             group=f"service:{name}", startedBy=service["deployments"][0]["id"],
                             networkConfiguration={"awsvpcConfiguration": {
                                 "subnets": outputs["TaskSubnetIds"].split(","),
                                 "securityGroups": [outputs["TaskSecurityGroupId"]]}})["tasks"]
        self.started += [task["taskArn"] for task in tasks]
        return [task["taskArn"] for task in tasks]

    def stop(self, arn: str, reason: str) -> None:
        self.aws("ecs").stop_task(cluster=self.outputs()["ClusterName"], task=arn, reason=reason)

    @contextmanager
    def during_deploy(self, action: Callable[[], Any]) -> Iterator[None]:
        """Run `action` (say, start two service tasks) once the stack exists, while the block deploys."""
        thread = threading.Thread(target=action, daemon=True)
        thread.start()
        try:
            yield
        finally:
            thread.join(timeout=15)

    def starting_tasks_when_created(self, count: int) -> Any:
        return self.during_deploy(lambda: self.start_service_tasks(count))


@pytest.fixture
def scheduler(aws: Callable[[str], Any]) -> EcsScheduler:
    return EcsScheduler(aws)


@pytest.fixture
def enforce_iam(moto_url: str) -> Iterator[Callable[[], None]]:
    """Call the yielded function to make moto check IAM policies from then on; undone after the test."""

    def enable() -> None:
        requests.post(f"{moto_url}/moto-api/reset-auth", data=b"0", timeout=10)

    yield enable
    requests.post(f"{moto_url}/moto-api/reset-auth", data=b"inf", timeout=10)


@pytest.fixture
def iam_user(aws: Callable[[str], Any]) -> Callable[[list[str]], boto3.Session]:
    """A session for a new IAM user allowed exactly `actions` (checked once `enforce_iam` is on)."""

    def create(actions: list[str]) -> boto3.Session:
        iam = aws("iam")
        name = f"deployer-{len(iam.list_users()['Users'])}"
        iam.create_user(UserName=name)
        policy = {"Version": "2012-10-17",
                  "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
        iam.put_user_policy(UserName=name, PolicyName="only", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return boto3.Session(aws_access_key_id=key["AccessKeyId"],
                             aws_secret_access_key=key["SecretAccessKey"])

    return create
