"""What ecs/templates/adfilter-fleet.yaml promises, read from the template itself.

moto cannot run this template, so these assertions (with cfn-lint) are what stands between a change and a
broken fleet. They read it with the loader the target uses, checked first against cfn-lint's decoder.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cfnlint.decode
import pytest

from control_plane.targets.base import DeploymentSpec
from control_plane.targets.ecs.target import EcsConfig, stack_parameters
from control_plane.targets.ecs.template import (
    DEFAULT_TEMPLATE,
    TEMPLATE_BODY_LIMIT,
    load_template,
    template_body,
)
from deploy.ecs_task import task_containers

MOTO_TEMPLATE = Path(__file__).parent / "fixtures" / "moto-fleet.yaml"
T = load_template()
RESOURCES: dict[str, Any] = T["Resources"]
GRAVITON_FAMILIES = ("c7g", "c8g", "m7g")


def _of_type(kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in RESOURCES.items() if r["Type"] == kind}


def _props(name: str) -> dict[str, Any]:
    return RESOURCES[name]["Properties"]


def _container(name: str) -> dict[str, Any]:
    definitions = _props("TritonTaskDefinition")["ContainerDefinitions"]
    for definition in definitions:
        if "Fn::If" in definition:  # the optional metrics sidecar
            definition = definition["Fn::If"][1]
        if definition["Name"] == name:
            return definition
    raise KeyError(name)


def _substituted(sub: Any) -> str:
    """A Fn::Sub string with every ${...} replaced by a placeholder (enough to parse the JSON it holds)."""
    text = sub["Fn::Sub"][0] if isinstance(sub["Fn::Sub"], list) else sub["Fn::Sub"]
    return re.sub(r"\$\{([^}!]+)\}", lambda m: m.group(1).replace(".", "_"), text)


def _statements(role: str) -> list[dict[str, Any]]:
    return [s for policy in _props(role).get("Policies", []) for s in policy["PolicyDocument"]["Statement"]]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_our_loader_reads_the_template_exactly_as_cfn_lint_does():
    decoded, problems = cfnlint.decode.decode(str(DEFAULT_TEMPLATE))
    assert problems == []
    assert json.loads(json.dumps(decoded)) == T


def test_the_body_sent_to_cloudformation_fits_its_51200_byte_limit():
    body = template_body()
    assert len(body.encode()) < TEMPLATE_BODY_LIMIT
    assert json.loads(body) == T


def test_nlb_is_a_network_load_balancer_with_its_own_security_group():
    nlb = _props("LoadBalancer")
    assert nlb["Type"] == "network"
    assert nlb["SecurityGroups"] == [{"Ref": "LoadBalancerSecurityGroup"}]


def test_listener_is_tcp_on_8001_forwarding_to_the_triton_target_group():
    listener = _props("GrpcListener")
    assert (listener["Protocol"], listener["Port"]) == ("TCP", 8001)
    assert listener["DefaultActions"] == [{"Type": "forward", "TargetGroupArn": {"Ref": "TargetGroup"}}]


def test_target_group_is_tcp_8001_with_an_http_readiness_check_on_8000():
    group = _props("TargetGroup")
    assert (group["Protocol"], group["Port"], group["TargetType"]) == ("TCP", 8001, "ip")
    assert (group["HealthCheckProtocol"], group["HealthCheckPort"], group["HealthCheckPath"]) == \
        ("HTTP", "8000", "/v2/health/ready")


def test_deregistration_delay_outlasts_triton_max_connection_age_plus_grace():
    attributes = {a["Key"]: a["Value"] for a in _props("TargetGroup")["TargetGroupAttributes"]}
    assert attributes["deregistration_delay.timeout_seconds"] == {"Ref": "DeregistrationDelaySeconds"}
    assert attributes["deregistration_delay.connection_termination.enabled"] == "true"
    assert attributes["preserve_client_ip.enabled"] == "false"
    defaults = {name: p.get("Default") for name, p in T["Parameters"].items()}
    assert defaults["DeregistrationDelaySeconds"] * 1000 > \
        defaults["GrpcMaxConnectionAgeMs"] + defaults["GrpcMaxConnectionAgeGraceMs"]


def test_cross_zone_balancing_is_an_explicit_choice_defaulting_to_off():
    attributes = {a["Key"]: a["Value"] for a in _props("LoadBalancer")["LoadBalancerAttributes"]}
    assert attributes["load_balancing.cross_zone.enabled"] == {"Ref": "CrossZoneLoadBalancing"}
    assert T["Parameters"]["CrossZoneLoadBalancing"]["Default"] == "false"


def test_instances_are_graviton_only_from_the_ecs_arm64_ami_parameter():
    overrides = _props("AutoScalingGroup")["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]
    types = [o["InstanceType"]["Fn::Sub"] for o in overrides]
    assert types == [f"{family}.${{InstanceSize}}" for family in GRAVITON_FAMILIES]
    assert T["Parameters"]["InstanceSize"]["AllowedValues"] == ["xlarge", "2xlarge", "4xlarge"]
    image = T["Parameters"]["ImageId"]
    assert image["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    assert image["Default"] == "/aws/service/ecs/optimized-ami/amazon-linux-2023/arm64/recommended/image_id"
    assert _props("LaunchTemplate")["LaunchTemplateData"]["ImageId"] == {"Ref": "ImageId"}


def test_capacity_provider_has_managed_scaling_and_termination_protection():
    provider = _props("CapacityProvider")["AutoScalingGroupProvider"]
    assert provider["ManagedScaling"]["Status"] == "ENABLED"
    assert provider["ManagedTerminationProtection"] == "ENABLED"
    # managed termination protection only works on an ASG that protects new instances
    assert _props("AutoScalingGroup")["NewInstancesProtectedFromScaleIn"] is True
    assert "DesiredCapacity" not in _props("AutoScalingGroup")  # ECS managed scaling owns it


def test_triton_task_is_arm64_awsvpc_on_ec2():
    task = _props("TritonTaskDefinition")
    assert task["RuntimePlatform"] == {"CpuArchitecture": "ARM64", "OperatingSystemFamily": "LINUX"}
    assert (task["NetworkMode"], task["RequiresCompatibilities"]) == ("awsvpc", ["EC2"])


PARAMETERS = {"ImageRegistry": "123456789012.dkr.ecr.us-east-1.amazonaws.com", "RepositoryBucket": "models",
              "RepositoryPrefix": "fleet", "ResultsBucket": "results", "GrpcMaxConnectionAgeMs": 60000,
              "GrpcMaxConnectionAgeGraceMs": 10000}


def _resolved(name: str, scope: str) -> dict[str, Any]:
    """A container definition as ECS receives it for this SyncScope (every intrinsic evaluated)."""
    containers = task_containers("TritonTaskDefinition", {**PARAMETERS, "SyncScope": scope})
    return next(c for c in containers if c["Name"] == name)


def test_sync_scope_is_whole_by_default_or_assigned():
    scope = T["Parameters"]["SyncScope"]
    assert (scope["Default"], scope["AllowedValues"]) == ("whole", ["whole", "assigned"])
    assert T["Conditions"]["SyncAssigned"] == {"Fn::Equals": [{"Ref": "SyncScope"}, "assigned"]}


@pytest.mark.parametrize("scope", ["whole", "assigned"])
def test_triton_runs_the_fleet_command_with_the_admin_key_from_the_secret(scope):
    triton = _resolved("triton", scope)
    [command] = triton["Command"]
    flags = command.split()
    for flag in ("--model-repository=/repository/models", "--model-control-mode=explicit",
                 "--disable-auto-complete-config",
                 "--http-restricted-api=model-repository:triton-admin-key=$TRITON_ADMIN_KEY",
                 "--grpc-restricted-protocol=model-repository:triton-admin-key=$TRITON_ADMIN_KEY",
                 "--grpc-max-connection-age=60000", "--grpc-max-connection-age-grace=10000",
                 "--metrics-config=summary_latencies=true"):
        assert flag in flags, flag
    # whole: adfilter is loaded at start; assigned: Triton starts empty and the control plane loads packs
    assert [f for f in flags if f.startswith("--load-model")] == \
        (["--load-model=adfilter"] if scope == "whole" else [])
    assert command.startswith("exec tritonserver ")
    assert triton["EntryPoint"] == ["/bin/sh", "-c"]  # ECS does not expand $VARS in a command itself
    assert _container("triton")["Secrets"] == [{"Name": "TRITON_ADMIN_KEY", "ValueFrom": {
        "Fn::If": ["CreateAdminKey", {"Ref": "AdminKeySecret"}, {"Ref": "AdminKeySecretArn"}]}}]
    assert {(p["ContainerPort"], p["Protocol"]) for p in triton["PortMappings"]} == \
        {(8000, "tcp"), (8001, "tcp"), (8002, "tcp")}


def test_triton_health_check_curls_readiness():
    check = _container("triton")["HealthCheck"]
    assert check["Command"] == ["CMD-SHELL", "curl -fsS http://localhost:8000/v2/health/ready || exit 1"]
    assert check["StartPeriod"] >= 60  # model loading


@pytest.mark.parametrize("scope", ["whole", "assigned"])
def test_triton_starts_only_after_a_first_complete_sync(scope):
    init_sync, sync = _resolved("init-sync", scope), _resolved("sync", scope)
    # once, then exit 0; a pass that fails (no S3, no index) logs why and is retried with back-off
    shell, flag, script = init_sync["Command"]
    assert (shell, flag) == ("/bin/sh", "-c") and "EntryPoint" not in init_sync
    share = " --server-from ecs-task-metadata --allow-unassigned" if scope == "assigned" else ""
    assert f"until fleet sync s3://models/fleet /repository/models --interval 0{share};" in script
    assert "d * 2" in script and "retrying in $d s" in script
    assert init_sync["Essential"] is False
    whole = ["fleet", "sync", "s3://models/fleet", "/repository/models", "--interval", "30"]
    assigned = ["--server-from", "ecs-task-metadata", "--triton-metrics-url", "http://localhost:8002/metrics"]
    assert sync["Command"] == (whole if scope == "whole" else whole + assigned)
    after_init = [{"ContainerName": "init-sync", "Condition": "SUCCESS"}]
    assert _resolved("triton", scope)["DependsOn"] == after_init and sync["DependsOn"] == after_init
    mounts = {c: _resolved(c, scope)["MountPoints"][0] for c in ("init-sync", "sync", "triton")}
    assert {m["ContainerPath"] for m in mounts.values()} == {"/repository"}  # staging is a sibling
    assert mounts["triton"]["ReadOnly"] is True


def test_every_container_logs_to_cloudwatch():
    for name in ("init-sync", "sync", "triton", "metrics"):
        logging = _container(name)["LogConfiguration"]
        assert logging["LogDriver"] == "awslogs"
        assert logging["Options"]["awslogs-group"] == {"Ref": "LogGroup"}


def test_task_role_may_only_read_the_repository_prefix_and_publish_its_sync_status():
    statements = _statements("TaskRole")
    assert "ManagedPolicyArns" not in _props("TaskRole")
    assert [(s["Effect"], s["Action"]) for s in statements] == \
        [("Allow", "s3:GetObject"), ("Allow", "s3:ListBucket"), ("Allow", "s3:PutObject")]
    read, listing, status = statements
    # the only write: the sync's status document next to the assignments (model_repository/s3_sync.py)
    assert status["Resource"] == \
        {"Fn::Sub": "arn:${AWS::Partition}:s3:::${RepositoryBucket}/${RepositoryPrefix}/.fleet/status/*"}
    assert "Condition" not in status
    assert read["Resource"] == \
        {"Fn::Sub": "arn:${AWS::Partition}:s3:::${RepositoryBucket}/${RepositoryPrefix}/*"}
    assert listing["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::${RepositoryBucket}"}
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [{"Fn::Sub": "${RepositoryPrefix}/*"},
                                                                 {"Ref": "RepositoryPrefix"}]}}
    for statement in statements:
        assert "*" not in _as_list(statement["Action"]) and statement["Resource"] != "*"


def test_only_the_optional_metrics_sidecar_adds_to_the_task_role_and_only_its_log_group():
    attached = {name: r for name, r in _of_type("AWS::IAM::Policy").items()
                if {"Ref": "TaskRole"} in r["Properties"]["Roles"]}
    assert list(attached) == ["MetricsPublisherPolicy"]
    policy = attached["MetricsPublisherPolicy"]
    assert policy["Condition"] == "MetricsEnabled"
    [statement] = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Action"] == ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    assert statement["Resource"] == {"Fn::GetAtt": ["MetricsLogGroup", "Arn"]}


def test_execution_role_is_separate_and_reads_only_the_one_secret():
    task = _props("TritonTaskDefinition")
    assert task["ExecutionRoleArn"] == {"Fn::GetAtt": ["ExecutionRole", "Arn"]}
    assert task["TaskRoleArn"] == {"Fn::GetAtt": ["TaskRole", "Arn"]}
    statements = {s["Sid"]: s for s in _statements("ExecutionRole")}
    assert set(statements) == {"EcrLogin", "PullFleetImages", "WriteLogs", "ReadAdminKey"}
    assert statements["ReadAdminKey"]["Action"] == "secretsmanager:GetSecretValue"
    assert statements["ReadAdminKey"]["Resource"] == \
        {"Fn::If": ["CreateAdminKey", {"Ref": "AdminKeySecret"}, {"Ref": "AdminKeySecretArn"}]}
    # the only wildcard resource is the ECR login, which has no resource-level permissions
    assert [sid for sid, s in statements.items() if s["Resource"] == "*"] == ["EcrLogin"]
    assert statements["EcrLogin"]["Action"] == "ecr:GetAuthorizationToken"


def test_tasks_accept_grpc_and_health_checks_from_the_nlb_only():
    ingress = _props("TaskSecurityGroup")["SecurityGroupIngress"]
    from_nlb = [r for r in ingress if r.get("SourceSecurityGroupId") == {"Ref": "LoadBalancerSecurityGroup"}]
    assert [(r["FromPort"], r["ToPort"]) for r in from_nlb] == [(8000, 8001)]
    assert all("CidrIp" not in r or r["CidrIp"] == {"Ref": "ControlPlaneCidr"} for r in ingress)


def test_service_sits_behind_the_nlb_on_the_capacity_provider_spread_across_azs():
    service = _props("Service")
    assert service["LoadBalancers"] == [{"ContainerName": "triton", "ContainerPort": 8001,
                                         "TargetGroupArn": {"Ref": "TargetGroup"}}]
    assert service["CapacityProviderStrategy"][0]["CapacityProvider"] == {"Ref": "CapacityProvider"}
    assert {"Type": "spread", "Field": "attribute:ecs.availability-zone"} in service["PlacementStrategies"]
    assert service["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == \
        {"Enable": True, "Rollback": True}
    assert set(RESOURCES["Service"]["DependsOn"]) == {"GrpcListener", "ClusterCapacityProviders"}


def test_service_scales_on_cpu_with_target_tracking():
    target = _props("ScalableTarget")
    assert (target["ServiceNamespace"], target["ScalableDimension"]) == ("ecs", "ecs:service:DesiredCount")
    tracking = _props("CpuScalingPolicy")["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["PredefinedMetricSpecification"] == \
        {"PredefinedMetricType": "ECSServiceAverageCPUUtilization"}


def _metrics_env(name: str) -> dict[str, Any]:
    env = {e["Name"]: e["Value"] for e in _container("metrics")["Environment"]}
    return json.loads(_substituted(env[name]))


def test_metrics_sidecar_publishes_per_model_triton_metrics_as_emf():
    prometheus = _metrics_env("CW_CONFIG_CONTENT")["logs"]["metrics_collected"]["prometheus"]
    processor = prometheus["emf_processor"]
    assert processor["metric_namespace"] == "TritonFleet"
    declared = {selector: declaration["dimensions"] for declaration in processor["metric_declaration"]
                for selector in declaration["metric_selectors"]}
    assert declared["^nv_inference_request_success$"] == [["ClusterName", "model"]]
    assert declared["^nv_inference_request_failure$"] == [["ClusterName", "model"]]
    assert declared["^nv_inference_request_summary_us$"] == [["ClusterName", "model", "quantile"]]
    assert prometheus["log_group_name"] == "MetricsLogGroup"
    scrape = _metrics_env("PROMETHEUS_CONFIG_CONTENT")
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["localhost:8002"]


def _dashboard() -> dict[str, Any]:
    return json.loads(_substituted(_props("Dashboard")["DashboardBody"]))


def test_dashboard_shows_nlb_flows_and_bytes_per_model_requests_and_p99_and_ecs_cpu_memory():
    text = json.dumps(_dashboard())
    for metric in ("ActiveFlowCount", "NewFlowCount", "ProcessedBytes", "CPUUtilization",
                   "MemoryUtilization"):
        assert f'"{metric}"' in text, metric
    expressions = [m[0]["expression"] for w in _dashboard()["widgets"] for m in w["properties"]["metrics"]
                   if isinstance(m[0], dict)]
    assert any('MetricName="nv_inference_request_success"' in e and "{TritonFleet,ClusterName,model}" in e
               for e in expressions)
    p99 = [e for e in expressions if "nv_inference_request_summary_us" in e]
    assert p99 and 'quantile="0.99"' in p99[0] and "{TritonFleet,ClusterName,model,quantile}" in p99[0]


def test_alarms_watch_adfilter_p99_latency_and_errors_with_the_dimensions_the_sidecar_publishes():
    alarms = {r["Properties"]["MetricName"]: r["Properties"]
              for r in _of_type("AWS::CloudWatch::Alarm").values()}
    p99 = alarms["nv_inference_request_summary_us"]
    assert p99["Namespace"] == "TritonFleet" and p99["Statistic"] == "Maximum"
    assert {d["Name"]: d["Value"] for d in p99["Dimensions"]} == \
        {"ClusterName": {"Ref": "Cluster"}, "model": "adfilter", "quantile": "0.99"}
    errors = alarms["nv_inference_request_failure"]
    assert {d["Name"] for d in errors["Dimensions"]} == {"ClusterName", "model"}
    assert errors["Statistic"] == "Sum"
    assert alarms["UnHealthyHostCount"]["Namespace"] == "AWS/NetworkELB"


def test_outputs_give_the_nlb_dns_name_cluster_and_service():
    outputs = T["Outputs"]
    assert outputs["LoadBalancerDnsName"]["Value"] == {"Fn::GetAtt": ["LoadBalancer", "DNSName"]}
    assert outputs["ClusterName"]["Value"] == {"Ref": "Cluster"}
    assert outputs["ServiceName"]["Value"] == {"Fn::GetAtt": ["Service", "Name"]}


def test_a_new_vpc_is_created_only_without_a_vpc_id_across_two_or_three_azs():
    assert T["Conditions"]["CreateVpc"] == {"Fn::Equals": [{"Ref": "VpcId"}, ""]}
    assert T["Parameters"]["AvailabilityZoneCount"]["AllowedValues"] == [2, 3]
    subnets = _of_type("AWS::EC2::Subnet")
    assert {r["Condition"] for r in subnets.values()} == {"CreateVpc", "CreateThirdAz"}
    assert len(subnets) == 6


@pytest.mark.parametrize("template", [DEFAULT_TEMPLATE, MOTO_TEMPLATE], ids=["real", "moto-double"])
def test_every_parameter_the_target_sends_exists_in_the_template(template):
    config = EcsConfig(image_registry="123456789012.dkr.ecr.us-east-1.amazonaws.com")
    sent = stack_parameters(config, DeploymentSpec(repository_uri="s3://models/fleet", replicas={"cpu": 3}))
    assert set(sent) <= set(load_template(template)["Parameters"])


def test_the_moto_double_has_exactly_the_real_templates_outputs():
    assert set(load_template(MOTO_TEMPLATE)["Outputs"]) == set(T["Outputs"])


@pytest.mark.parametrize(("discovery", "scope"), [("ecs", "assigned"), ("none", "whole"), (None, "whole")])
def test_a_control_plane_that_discovers_ecs_tasks_deploys_them_to_sync_only_their_share(monkeypatch, discovery,
                                                                                        scope):
    from control_plane.deployments import make_target
    from control_plane.settings import Settings

    monkeypatch.setenv("FLEET_ECS_IMAGE_REGISTRY", "123456789012.dkr.ecr.us-east-1.amazonaws.com")
    if discovery is None:
        monkeypatch.delenv("FLEET_DISCOVERY_TARGET", raising=False)
    else:
        monkeypatch.setenv("FLEET_DISCOVERY_TARGET", discovery)
    target = make_target("ecs", Settings(api_token="t"))
    sent = stack_parameters(target.config, DeploymentSpec(repository_uri="s3://models/fleet", replicas={"cpu": 2}))
    assert sent["SyncScope"] == scope


@pytest.mark.parametrize(("results", "expected"), [("my-results", "my-results"), (None, "models")])
def test_a_control_plane_deploys_with_the_results_bucket_docs_ecs_md_names(monkeypatch, results, expected):
    """docs/ecs.md step 3 (and step 6's `aws s3 cp s3://my-results/...`): FLEET_ECS_RESULTS_BUCKET, else the
    repository's bucket, becomes the stack's ResultsBucket, the only bucket the locust tasks may write."""
    from control_plane.deployments import make_target
    from control_plane.settings import Settings

    monkeypatch.setenv("FLEET_ECS_IMAGE_REGISTRY", "123456789012.dkr.ecr.us-east-1.amazonaws.com")
    if results is None:
        monkeypatch.delenv("FLEET_ECS_RESULTS_BUCKET", raising=False)
    else:
        monkeypatch.setenv("FLEET_ECS_RESULTS_BUCKET", results)
    target = make_target("ecs", Settings(api_token="t"))
    sent = stack_parameters(target.config, DeploymentSpec(repository_uri="s3://models/fleet", replicas={"cpu": 2}))
    assert sent["ResultsBucket"] == expected
