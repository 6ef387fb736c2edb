"""ECS discovery against moto: the tasks behind the Triton target group become servers; a task that ECS is
stopping (desiredStatus STOPPED, its target draining) is drained with its placements kept, and leaves when
its target is no longer listed (a scale-in or a replaced task)."""
from __future__ import annotations

import json

import boto3
import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ecs.models import ecs_backends
from moto.elbv2.models import FakeHealthStatus, elbv2_backends

from control_plane.db import AuditEntry, Pack, Placement, Server, make_engine, make_sessionmaker
from control_plane.discovery import DiscoveryError, DiscoverySettings, discover
from control_plane.migrate import upgrade
from control_plane.targets.ecs.tasks import private_ip

from .conftest import REGION


@pytest.fixture
def sessions(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    upgrade(engine)
    return make_sessionmaker(engine)


@pytest.fixture
def fleet(aws, network):
    """A cluster with three running Triton tasks (awsvpc) and an ip target group on the gRPC port."""
    ec2, ecs, elbv2 = aws("ec2"), aws("ecs"), aws("elbv2")
    ecs.create_cluster(clusterName="fleet")
    instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1,
                                 InstanceType="c7g.2xlarge")["Instances"][0]
    ecs.register_container_instance(cluster="fleet", instanceIdentityDocument=json.dumps(
        {"instanceId": instance["InstanceId"], "region": REGION, "availabilityZone": f"{REGION}a"}))
    definition = ecs.register_task_definition(
        family="triton", networkMode="awsvpc", memory="4096",
        containerDefinitions=[{"name": "triton", "image": "triton", "cpu": 16, "memory": 32}])
    group = ec2.create_security_group(GroupName="triton", Description="triton", VpcId=network.vpc_id)["GroupId"]
    tasks = ecs.run_task(cluster="fleet", taskDefinition=definition["taskDefinition"]["taskDefinitionArn"], count=3,
                         networkConfiguration={"awsvpcConfiguration": {"subnets": network.subnet_ids[:1],
                                                                       "securityGroups": [group]}})["tasks"]
    target_group = elbv2.create_target_group(Name="triton", Protocol="TCP", Port=8001, VpcId=network.vpc_id,
                                             TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
    return {"tasks": tasks, "target_group": target_group, "elbv2": elbv2, "ecs": ecs}


def discover_now(sessions, moto_url, fleet):
    settings = DiscoverySettings(target="ecs", cluster="fleet", target_group_arn=fleet["target_group"], region=REGION)
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)

    class Endpointed:  # the same boto3 session, pointed at moto
        def client(self, name, **kwargs):
            return session.client(name, endpoint_url=moto_url, **kwargs)

    return discover(sessions, discovery=settings, platform_factory=Endpointed)


def test_tasks_behind_the_target_group_become_servers_and_leave_with_their_target(sessions, moto_url, fleet):
    tasks, elbv2 = fleet["tasks"], fleet["elbv2"]
    addresses = [private_ip(task) for task in tasks]
    # Two of the three tasks are registered (the third is still starting: not a server yet).
    elbv2.register_targets(TargetGroupArn=fleet["target_group"],
                           Targets=[{"Id": address, "Port": 8001} for address in addresses[:2]])
    result = discover_now(sessions, moto_url, fleet)
    names = [f"ecs-{task['taskArn'].rsplit('/', 1)[-1]}" for task in tasks]
    assert result.added == sorted(names[:2])
    with sessions() as session:
        first = session.get(Server, names[0])
        assert (first.grpc_url, first.http_url) == (f"{addresses[0]}:8001", f"http://{addresses[0]}:8000")
        assert first.family == "cpu" and first.capacity_bytes == 4096 * 2**20

    elbv2.register_targets(TargetGroupArn=fleet["target_group"], Targets=[{"Id": addresses[2], "Port": 8001}])
    elbv2.deregister_targets(TargetGroupArn=fleet["target_group"], Targets=[{"Id": addresses[0], "Port": 8001}])
    result = discover_now(sessions, moto_url, fleet)
    assert result.added == [names[2]] and result.removed == [names[0]]
    with sessions() as session:
        assert sorted(s.name for s in session.query(Server)) == sorted(names[1:])


def test_a_missing_target_group_is_explained_and_changes_nothing(sessions, moto_url, fleet):
    fleet["target_group"] = fleet["target_group"].replace("triton", "missing")
    with pytest.raises(DiscoveryError, match="cannot list the Triton tasks .* DescribeTargetHealth"):
        discover_now(sessions, moto_url, fleet)


class EcsStopping:
    """Plays the part of ECS and ELB that moto lacks when a service scales in (moto's stop_task ends a task
    at once, and a deregistered ip target vanishes): ECS first sets the task's desiredStatus to STOPPED while
    it keeps running, and the load balancer reports its deregistered target `draining` for the target
    group's deregistration delay; only then does ECS stop the task. The in-process moto server's state is
    set as AWS would show it."""

    def __init__(self, monkeypatch, target_group: str) -> None:
        self.draining: set[str] = set()
        group = elbv2_backends[DEFAULT_ACCOUNT_ID][REGION].target_groups[target_group]
        original = group.health_for

        def health_for(target, ec2_backend):
            status = original(target, ec2_backend)
            if target["Id"] in self.draining:
                return FakeHealthStatus(target["Id"], status.port, group.health_check_port, "draining",
                                        "Target.DeregistrationInProgress", "Target deregistration is in progress")
            return status
        monkeypatch.setattr(group, "health_for", health_for)

    @staticmethod
    def desired_stopped(task_arn: str) -> None:
        for task in ecs_backends[DEFAULT_ACCOUNT_ID][REGION].tasks["fleet"].values():
            if task.task_arn == task_arn:
                task.desired_status = "STOPPED"  # lastStatus stays RUNNING until the drain is over
                return
        raise AssertionError(f"no task {task_arn}")


def test_a_task_ecs_is_stopping_is_drained_with_its_placements_kept_and_leaves_with_its_target(
        sessions, moto_url, fleet, monkeypatch):
    tasks, elbv2, group = fleet["tasks"], fleet["elbv2"], fleet["target_group"]
    addresses = [private_ip(task) for task in tasks]
    names = [f"ecs-{task['taskArn'].rsplit('/', 1)[-1]}" for task in tasks]
    elbv2.register_targets(TargetGroupArn=group, Targets=[{"Id": address, "Port": 8001} for address in addresses])
    assert discover_now(sessions, moto_url, fleet).added == sorted(names)
    with sessions.begin() as session:
        session.add(Pack(name="p", family="cpu", kind="k"))
        session.flush()
        session.add_all([Placement(pack="p", server=names[0], state="loaded"),
                         Placement(pack="p", server=names[1], state="loaded")])
    ecs = EcsStopping(monkeypatch, group)

    # Scale-in: ECS marks task 0 to stop (its target still healthy), and deregisters task 1's target.
    ecs.desired_stopped(tasks[0]["taskArn"])
    ecs.draining.add(addresses[1])
    result = discover_now(sessions, moto_url, fleet)
    assert result.leaving == sorted(names[:2]) and result.removed == []
    with sessions() as session:
        assert {s.name for s in session.query(Server) if s.draining} == set(names[:2])
        assert session.query(Placement).count() == 2, "replicas stay until they are loaded elsewhere"
        assert [e.action for e in session.query(AuditEntry).filter_by(subject=names[0])][-1] == "server.leaving"

    # The deregistration delay is over: the targets are gone and ECS stops the tasks.
    elbv2.deregister_targets(TargetGroupArn=group, Targets=[{"Id": a, "Port": 8001} for a in addresses[:2]])
    ecs.draining.clear()
    for task in tasks[:2]:
        fleet["ecs"].stop_task(cluster="fleet", task=task["taskArn"], reason="Scaling activity initiated")
    result = discover_now(sessions, moto_url, fleet)
    assert result.removed == sorted(names[:2])
    with sessions() as session:
        assert [s.name for s in session.query(Server)] == [names[2]]
        assert session.query(Placement).count() == 0
