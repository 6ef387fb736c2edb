"""EcsTarget against moto in server mode: deploy, discover, scale, teardown and their failures.

moto runs tests/ecs/fixtures/moto-fleet.yaml, not the real template (moto's CloudFormation cannot parse
the real one and rejects an NLB TCP listener); test_template.py checks that both share the parameters
the target sends and the outputs it reads. moto never starts a service's tasks: `EcsScheduler` does.
"""
from __future__ import annotations

import pytest
from moto.cloudformation.models import Event, cloudformation_backends

from control_plane.targets.base import DeploymentSpec, TargetError
from control_plane.targets.ecs.stack import EventFeed, wait_for_stack

SPEC = DeploymentSpec(repository_uri="s3://models/fleet/v1", replicas={"cpu": 2}, image_tag="0.2.0")
ACCOUNT, REGION = "123456789012", "us-east-1"


def _moto_stack(name: str):
    """moto's own record of a stack, to script what AWS would do and moto cannot (fail a resource)."""
    stacks = cloudformation_backends[ACCOUNT][REGION].stacks.values()
    return next(stack for stack in stacks if stack.name == name)


def _record(stack, logical_id: str, resource_type: str, status: str, reason: str | None = None) -> None:
    stack.events.append(Event(stack.stack_id, stack.name, logical_id, "", resource_type, status, reason,
                              None))


def test_deploy_creates_the_stack_reports_its_events_and_waits_for_ready_tasks(make_target, scheduler, aws):
    messages: list[str] = []
    with scheduler.starting_tasks_when_created(2):
        make_target().deploy(SPEC, messages.append)

    stack = aws("cloudformation").describe_stacks(StackName="fleet")["Stacks"][0]
    sent = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    assert {"RepositoryBucket": "models", "RepositoryPrefix": "fleet/v1", "ImageTag": "0.2.0",
            "DesiredCount": "2", "ResultsBucket": "models"}.items() <= sent.items()
    assert messages[0] == "creating stack fleet"
    assert "fleet (AWS::CloudFormation::Stack) CREATE_COMPLETE" in messages
    assert "2 of 2 adfilter tasks ready" in messages
    assert messages[-1].startswith("ad-filter fleet ready: gRPC at ") and messages[-1].endswith(":8001")


def test_deploy_again_updates_the_stack_in_place(make_target, scheduler, aws):
    target = make_target()
    with scheduler.starting_tasks_when_created(2):
        target.deploy(SPEC)
    messages: list[str] = []
    target.deploy(DeploymentSpec(repository_uri="s3://models/fleet/v2", replicas={"cpu": 2}), messages.append)

    stack = aws("cloudformation").describe_stacks(StackName="fleet")["Stacks"][0]
    assert stack["StackStatus"] == "UPDATE_COMPLETE"
    assert {"ParameterKey": "RepositoryPrefix", "ParameterValue": "fleet/v2"} in stack["Parameters"]
    assert messages[0] == "updating stack fleet (now CREATE_COMPLETE)"
    assert "fleet (AWS::CloudFormation::Stack) UPDATE_COMPLETE" in messages
    # events of the first deploy are not reported again
    assert not any("CREATE_" in m for m in messages[1:])


def test_discover_returns_ready_service_tasks_by_eni_address_and_ignores_other_tasks(make_target, scheduler,
                                                                                     aws):
    target = make_target()
    with scheduler.starting_tasks_when_created(2):
        target.deploy(SPEC)
    outputs = scheduler.outputs()
    ecs = aws("ecs")
    # a locust task in the same cluster is not a Triton server
    ecs.run_task(cluster=outputs["ClusterName"], taskDefinition=outputs["LoadTestTaskDefinitionArn"],
                 group="loadtest:x", networkConfiguration={"awsvpcConfiguration": {
                     "subnets": outputs["TaskSubnetIds"].split(","),
                     "securityGroups": [outputs["LoadTestSecurityGroupId"]]}})

    servers = target.discover_servers()

    described = ecs.describe_tasks(cluster=outputs["ClusterName"], tasks=scheduler.started)["tasks"]
    addresses = {d["value"] for t in described for a in t["attachments"] for d in a["details"]
                 if d["name"] == "privateIPv4Address"}
    assert {s.host for s in servers} == addresses and len(servers) == 2
    assert all(s.family == "cpu" and s.grpc_url == f"{s.host}:8001" for s in servers)
    assert {s.name for s in servers} == {f"ecs-{arn.rsplit('/', 1)[-1]}" for arn in scheduler.started}


def test_discover_leaves_out_stopped_tasks(make_target, scheduler, aws):
    target = make_target()
    with scheduler.starting_tasks_when_created(2):
        target.deploy(SPEC)
    cluster = scheduler.outputs()["ClusterName"]
    aws("ecs").stop_task(cluster=cluster, task=scheduler.started[0], reason="scaled in")

    assert [s.name for s in target.discover_servers()] == [f"ecs-{scheduler.started[1].rsplit('/', 1)[-1]}"]


def test_scale_sets_desired_count_and_moves_the_autoscaling_floor(make_target, scheduler, aws):
    target = make_target()
    with scheduler.starting_tasks_when_created(2):
        target.deploy(SPEC)
    outputs = scheduler.outputs()
    resource = f"service/{outputs['ClusterName']}/{outputs['ServiceName']}"
    autoscaling = aws("application-autoscaling")
    # moto's CloudFormation skips scalable targets; register the one the real template creates
    autoscaling.register_scalable_target(ServiceNamespace="ecs", ResourceId=resource,
                                         ScalableDimension="ecs:service:DesiredCount", MinCapacity=2,
                                         MaxCapacity=4)

    target.scale("cpu", 6)

    service = aws("ecs").describe_services(cluster=outputs["ClusterName"],
                                           services=[outputs["ServiceName"]])["services"][0]
    scalable = autoscaling.describe_scalable_targets(ServiceNamespace="ecs",
                                                     ResourceIds=[resource])["ScalableTargets"][0]
    assert service["desiredCount"] == 6
    assert (scalable["MinCapacity"], scalable["MaxCapacity"]) == (6, 6)


def test_scale_refuses_families_that_ecs_does_not_run(make_target):
    with pytest.raises(TargetError, match="only the cpu family.*eks target"):
        make_target().scale("gpu", 1)


def test_teardown_deletes_the_stack_and_reports_it(make_target, scheduler, aws):
    target = make_target()
    with scheduler.starting_tasks_when_created(2):
        target.deploy(SPEC)
    messages: list[str] = []
    target.teardown(messages.append)

    names = [s["StackName"] for s in aws("cloudformation").describe_stacks()["Stacks"]]
    assert "fleet" not in names
    assert messages[0] == "deleting stack fleet"
    assert "fleet (AWS::CloudFormation::Stack) DELETE_COMPLETE" in messages


def test_teardown_without_a_stack_is_a_no_op(make_target):
    messages: list[str] = []
    make_target().teardown(messages.append)
    assert messages == ["stack fleet does not exist: nothing to delete"]


def test_calls_before_deploy_say_to_deploy_first(make_target):
    with pytest.raises(TargetError, match="no stack fleet.*run deploy first"):
        make_target().discover_servers()


def test_deploy_rejects_a_repository_without_prefix_before_calling_aws(make_target, aws):
    with pytest.raises(TargetError, match="s3://BUCKET/PREFIX with a non-empty prefix"):
        make_target().deploy(DeploymentSpec(repository_uri="s3://models"))
    assert aws("cloudformation").describe_stacks()["Stacks"] == []


def test_tasks_that_never_become_ready_fail_deploy_with_the_stopped_reason(make_target, scheduler, aws):
    target = make_target(ready_timeout_s=0.3)
    with pytest.raises(TargetError, match="0 of 1 tasks") as first:
        target.deploy(DeploymentSpec(repository_uri="s3://models/fleet"))
    assert "no task of the service has started yet" in str(first.value)

    # ECS started a task, and its essential container exited
    arn = scheduler.start_service_tasks(1)[0]
    aws("ecs").stop_task(cluster=scheduler.outputs()["ClusterName"], task=arn,
                         reason="Essential container in task exited")
    with pytest.raises(TargetError) as second:
        target.deploy(DeploymentSpec(repository_uri="s3://models/fleet"))
    report = str(second.value)
    assert f"task {arn.rsplit('/', 1)[-1]} stopped: Essential container in task exited" in report
    assert "log group /triton-fleet/test" in report


def test_deploy_over_a_failed_create_names_the_failed_resource_and_says_to_tear_down(make_target, scheduler):
    target = make_target()
    with scheduler.starting_tasks_when_created(1):
        target.deploy(DeploymentSpec(repository_uri="s3://models/fleet"))
    # Script the failed create that moto cannot produce: the service failed, the rest was cancelled.
    stack = _moto_stack("fleet")
    _record(stack, "Service", "AWS::ECS::Service", "CREATE_FAILED",
            "Resource handler returned message: \"Invalid request provided: CreateService error: "
            "Unable to assume the service linked role\"")
    _record(stack, "TargetGroup", "AWS::ElasticLoadBalancingV2::TargetGroup", "CREATE_FAILED",
            "Resource creation cancelled")
    stack.status = "ROLLBACK_COMPLETE"

    with pytest.raises(TargetError) as failure:
        target.deploy(DeploymentSpec(repository_uri="s3://models/fleet"))
    message = str(failure.value)
    assert message.startswith("stack fleet ended ROLLBACK_COMPLETE: resource Service (AWS::ECS::Service) "
                              "CREATE_FAILED: Resource handler returned message")
    assert "Unable to assume the service linked role" in message
    assert "TargetGroup" not in message
    assert "run teardown, then deploy again" in message


def test_waiting_reports_each_event_once_and_fails_on_rollback_with_the_reason(aws):
    cfn = aws("cloudformation")
    stack_id = cfn.create_stack(StackName="fleet", TemplateBody='{"Resources": {"C": '
                                '{"Type": "AWS::ECS::Cluster"}}}')["StackId"]
    stack = _moto_stack("fleet")
    feed = EventFeed(cfn, stack_id, skip_existing=True)
    stack.status = "UPDATE_IN_PROGRESS"
    _record(stack, "fleet", "AWS::CloudFormation::Stack", "UPDATE_IN_PROGRESS", "User Initiated")
    seen: list[str] = []

    def progress(message: str) -> None:
        """CloudFormation's next steps, played when the waiter reports the update started."""
        seen.append(message)
        if message.endswith("UPDATE_IN_PROGRESS: User Initiated"):
            _record(stack, "Service", "AWS::ECS::Service", "UPDATE_FAILED",
                    "API: iam:PassRole User: arn:aws:iam::123456789012:user/ci is not authorized to perform: "
                    "iam:PassRole on resource: arn:aws:iam::123456789012:role/fleet-TaskRole")
            _record(stack, "fleet", "AWS::CloudFormation::Stack", "UPDATE_ROLLBACK_COMPLETE")
            stack.status = "UPDATE_ROLLBACK_COMPLETE"

    with pytest.raises(TargetError) as failure:
        wait_for_stack(cfn, feed, "UPDATE_COMPLETE", progress, timeout_s=5, poll_s=0.01)

    assert seen == ["fleet (AWS::CloudFormation::Stack) UPDATE_IN_PROGRESS: User Initiated",
                    "Service (AWS::ECS::Service) UPDATE_FAILED: API: iam:PassRole User: "
                    "arn:aws:iam::123456789012:user/ci is not authorized to perform: iam:PassRole on "
                    "resource: arn:aws:iam::123456789012:role/fleet-TaskRole",
                    "fleet (AWS::CloudFormation::Stack) UPDATE_ROLLBACK_COMPLETE"]
    message = str(failure.value)
    assert "resource Service (AWS::ECS::Service) UPDATE_FAILED" in message
    assert "The deploying identity lacks iam:PassRole: grant it" in message
    assert "the previous version is running again" in message


def test_a_stack_that_does_not_settle_in_time_is_reported_as_still_running(aws):
    cfn = aws("cloudformation")
    stack_id = cfn.create_stack(StackName="fleet", TemplateBody='{"Resources": {"C": '
                                '{"Type": "AWS::ECS::Cluster"}}}')["StackId"]
    _moto_stack("fleet").status = "UPDATE_IN_PROGRESS"
    feed = EventFeed(cfn, stack_id, skip_existing=True)
    with pytest.raises(TargetError, match="still UPDATE_IN_PROGRESS after 0s; CloudFormation carries on"):
        wait_for_stack(cfn, feed, "UPDATE_COMPLETE", lambda _: None, timeout_s=0.05, poll_s=0.01)


def test_deploy_without_create_permission_names_the_missing_action(make_target, iam_user, enforce_iam, aws):
    session = iam_user(["cloudformation:DescribeStacks", "cloudformation:DescribeStackEvents"])
    enforce_iam()
    with pytest.raises(TargetError, match=r"missing AWS permission cloudformation:CreateStack \(denied on "
                                          r"CreateStack\): grant cloudformation:CreateStack"):
        make_target(session=session).deploy(SPEC)


def test_discover_without_ecs_permissions_names_the_missing_action(make_target, scheduler, iam_user,
                                                                   enforce_iam):
    with scheduler.starting_tasks_when_created(2):
        make_target().deploy(SPEC)
    session = iam_user(["cloudformation:DescribeStacks", "ecs:DescribeServices"])
    enforce_iam()
    with pytest.raises(TargetError, match="missing AWS permission ecs:ListTasks"):
        make_target(session=session).discover_servers()
