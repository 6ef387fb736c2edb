"""Teardown clears the scale-in protection that ECS managed termination protection sets (moto).

Without it, deleting the stack stalls on the capacity provider while protected instances remain.
"""
from __future__ import annotations

import json

from control_plane.targets.ecs.stack import release_scale_in_protection

# The part of the real template that matters here: an ASG whose new instances are protected from scale-in.
STACK = {
    "Parameters": {"SubnetId": {"Type": "String"}},
    "Resources": {
        "LaunchTemplate": {"Type": "AWS::EC2::LaunchTemplate", "Properties": {"LaunchTemplateData": {
            "ImageId": "ami-12c6146b", "InstanceType": "c7g.2xlarge"}}},
        "AutoScalingGroup": {"Type": "AWS::AutoScaling::AutoScalingGroup", "Properties": {
            "MinSize": "0", "MaxSize": "4", "DesiredCapacity": "3", "NewInstancesProtectedFromScaleIn": True,
            "VPCZoneIdentifier": [{"Ref": "SubnetId"}],
            "LaunchTemplate": {"LaunchTemplateId": {"Ref": "LaunchTemplate"},
                               "Version": {"Fn::GetAtt": ["LaunchTemplate", "LatestVersionNumber"]}}}},
    },
}


def test_teardown_first_clears_scale_in_protection_of_every_instance(aws, network):
    cfn, autoscaling = aws("cloudformation"), aws("autoscaling")
    cfn.create_stack(StackName="fleet", TemplateBody=json.dumps(STACK),
                     Parameters=[{"ParameterKey": "SubnetId", "ParameterValue": network.subnet_ids[0]}])
    group = cfn.describe_stack_resource(StackName="fleet", LogicalResourceId="AutoScalingGroup")[
        "StackResourceDetail"]["PhysicalResourceId"]

    def protected() -> list[bool]:
        groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"]
        return [i["ProtectedFromScaleIn"] for i in groups[0]["Instances"]]

    assert protected() == [True, True, True]
    messages: list[str] = []
    assert release_scale_in_protection(cfn, autoscaling, "fleet", messages.append) == 3
    assert protected() == [False, False, False]
    assert messages == [f"cleared scale-in protection on 3 instances of {group}"]


def test_without_a_stack_there_is_nothing_to_release(aws):
    assert release_scale_in_protection(aws("cloudformation"), aws("autoscaling"), "absent", print) == 0
