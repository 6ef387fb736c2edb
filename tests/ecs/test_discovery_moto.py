"""ECS discovery against moto: the tasks behind the Triton target group become servers, and leave when
their target is deregistered (a scale-in or a replaced task)."""
from __future__ import annotations

import json

import boto3
import pytest

from control_plane.db import Server, make_engine, make_sessionmaker
from control_plane.discovery import DiscoveryError, DiscoverySettings, discover
from control_plane.migrate import upgrade
from control_plane.targets.ecs_tasks import private_ip

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
