"""Create, update and delete the fleet's CloudFormation stack, reporting each stack event as progress.

Why poll events rather than use boto3's waiters: a waiter says only that the stack failed, while the user
needs to know which resource failed and why (`ResourceStatusReason`), and wants to watch a 10-minute
create move along instead of staring at a silent terminal.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from control_plane.targets.base import Progress, TargetError
from control_plane.targets.ecs.aws import missing_action

# Statuses an update may start from; any other settled status needs a teardown or a manual fix first.
_UPDATABLE = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE",
              "IMPORT_ROLLBACK_COMPLETE"}
# Failures that are consequences of another resource's failure, not causes.
_COLLATERAL = ("Resource creation cancelled", "Resource update cancelled")
_NEXT_STEP = {
    "ROLLBACK_COMPLETE": "a stack that failed to create cannot be updated: fix the cause, run teardown, "
                         "then deploy again",
    "ROLLBACK_FAILED": "fix the cause, run teardown, then deploy again",
    "CREATE_FAILED": "fix the cause, run teardown, then deploy again",
    "UPDATE_ROLLBACK_COMPLETE": "the previous version is running again: fix the cause and deploy again",
    "UPDATE_ROLLBACK_FAILED": "fix the cause, then run `aws cloudformation continue-update-rollback` "
                              "before deploying again",
    "DELETE_FAILED": "remove what blocks the deletion, then run teardown again",
}


def describe_stack(cfn: Any, name: str) -> dict[str, Any] | None:
    """The stack called `name`, or None when there is none."""
    try:
        return cfn.describe_stacks(StackName=name)["Stacks"][0]
    except ClientError as error:
        if "does not exist" in error.response.get("Error", {}).get("Message", ""):
            return None
        raise


def stack_outputs(stack: Mapping[str, Any]) -> dict[str, str]:
    return {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}


class EventFeed:
    """A stack's events that happened after the feed started, oldest first, each returned once."""

    def __init__(self, cfn: Any, stack_id: str, *, skip_existing: bool) -> None:
        self._cfn = cfn
        self.stack_id = stack_id
        self.history: list[dict[str, Any]] = []
        self._seen: set[str] = set()
        if skip_existing:  # events are newest first: remembering the newest page hides all older ones
            page = cfn.describe_stack_events(StackName=stack_id)["StackEvents"]
            self._seen.update(event["EventId"] for event in page)

    def poll(self) -> list[dict[str, Any]]:
        fresh: list[dict[str, Any]] = []
        request: dict[str, Any] = {"StackName": self.stack_id}
        while True:
            page = self._cfn.describe_stack_events(**request)
            for event in page["StackEvents"]:
                if event["EventId"] in self._seen:
                    return self._keep(fresh)
                fresh.append(event)
            if not page.get("NextToken"):
                return self._keep(fresh)
            request["NextToken"] = page["NextToken"]

    def _keep(self, newest_first: list[dict[str, Any]]) -> list[dict[str, Any]]:
        oldest_first = newest_first[::-1]
        self._seen.update(event["EventId"] for event in oldest_first)
        self.history.extend(oldest_first)
        return oldest_first


def describe_event(event: Mapping[str, Any]) -> str:
    line = f"{event['LogicalResourceId']} ({event['ResourceType']}) {event['ResourceStatus']}"
    reason = event.get("ResourceStatusReason")
    return f"{line}: {reason}" if reason else line


def failure_message(stack: Mapping[str, Any], events: list[Mapping[str, Any]]) -> str:
    """Why the stack failed: the first resource that failed and its reason, and what to do next."""
    name, status = stack["StackName"], stack["StackStatus"]
    causes = [event for event in events
              if event["ResourceStatus"].endswith("_FAILED")
              and event["LogicalResourceId"] != name
              and not str(event.get("ResourceStatusReason", "")).startswith(_COLLATERAL)]
    if causes:
        first = causes[0]
        reason = first.get("ResourceStatusReason") or "no reason given"
        message = (f"stack {name} ended {status}: resource {first['LogicalResourceId']} "
                   f"({first['ResourceType']}) {first['ResourceStatus']}: {reason}")
    else:
        message = f"stack {name} ended {status}: {stack.get('StackStatusReason') or 'no reason given'}"
    action = missing_action(message)
    if action:
        message += f". The deploying identity lacks {action}: grant it"
    return f"{message}. Next: {_NEXT_STEP.get(status, 'see the stack events in the CloudFormation console')}"


def wait_for_stack(cfn: Any, feed: EventFeed, want: str, progress: Progress, *, timeout_s: float,
                   poll_s: float) -> dict[str, Any]:
    """Report events until the stack reaches `want`; any other settled status raises TargetError."""
    deadline = time.monotonic() + timeout_s
    while True:
        # Status first, events second: every event that led to this status is reported before we act.
        stack = cfn.describe_stacks(StackName=feed.stack_id)["Stacks"][0]
        for event in feed.poll():
            progress(describe_event(event))
        status = stack["StackStatus"]
        if status == want:
            return stack
        if not status.endswith("_IN_PROGRESS"):
            raise TargetError(failure_message(stack, feed.history))
        if time.monotonic() >= deadline:
            raise TargetError(f"stack {stack['StackName']} is still {status} after {timeout_s:.0f}s; "
                              "CloudFormation carries on without us: watch it in the console and run "
                              "deploy again once it settles")
        time.sleep(poll_s)


def deploy_stack(cfn: Any, name: str, body: str, parameters: Mapping[str, str], progress: Progress, *,
                 timeout_s: float, poll_s: float) -> dict[str, str]:
    """Create the stack, or update it in place; returns its outputs once it is complete."""
    as_list = [{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()]
    existing = describe_stack(cfn, name)
    if existing is None:
        progress(f"creating stack {name}")
        stack_id = cfn.create_stack(StackName=name, TemplateBody=body, Parameters=as_list,
                                    Capabilities=["CAPABILITY_IAM"], OnFailure="ROLLBACK",
                                    Tags=[{"Key": "triton-fleet:target", "Value": "ecs"}])["StackId"]
        feed = EventFeed(cfn, stack_id, skip_existing=False)
        return stack_outputs(wait_for_stack(cfn, feed, "CREATE_COMPLETE", progress,
                                            timeout_s=timeout_s, poll_s=poll_s))
    status = existing["StackStatus"]
    if status.endswith("_IN_PROGRESS"):
        raise TargetError(f"stack {name} is busy ({status}): wait until it settles, then deploy again")
    if status not in _UPDATABLE:
        earlier = EventFeed(cfn, existing["StackId"], skip_existing=False)
        earlier.poll()
        raise TargetError(failure_message(existing, earlier.history))
    feed = EventFeed(cfn, existing["StackId"], skip_existing=True)
    progress(f"updating stack {name} (now {status})")
    try:
        cfn.update_stack(StackName=existing["StackId"], TemplateBody=body, Parameters=as_list,
                         Capabilities=["CAPABILITY_IAM"])
    except ClientError as error:
        if "No updates are to be performed" in error.response.get("Error", {}).get("Message", ""):
            progress(f"stack {name} is already up to date")
            return stack_outputs(existing)
        raise
    return stack_outputs(wait_for_stack(cfn, feed, "UPDATE_COMPLETE", progress,
                                        timeout_s=timeout_s, poll_s=poll_s))


def delete_stack(cfn: Any, name: str, progress: Progress, *, timeout_s: float, poll_s: float) -> None:
    """Delete the stack and wait until it is gone; a missing stack is already deleted."""
    existing = describe_stack(cfn, name)
    if existing is None:
        progress(f"stack {name} does not exist: nothing to delete")
        return
    feed = EventFeed(cfn, existing["StackId"], skip_existing=True)
    progress(f"deleting stack {name}")
    cfn.delete_stack(StackName=existing["StackId"])
    wait_for_stack(cfn, feed, "DELETE_COMPLETE", progress, timeout_s=timeout_s, poll_s=poll_s)


def release_scale_in_protection(cfn: Any, autoscaling: Any, name: str, progress: Progress) -> int:
    """Clear scale-in protection on the stack's ASG instances; returns how many were protected.

    Why before deleting: the capacity provider's managed termination protection marks every instance
    that runs a task as protected from scale-in, and CloudFormation cannot delete the capacity provider
    or shrink the group while protected instances remain: the delete stalls until it times out.
    """
    try:
        resource = cfn.describe_stack_resource(StackName=name, LogicalResourceId="AutoScalingGroup")
    except ClientError:
        return 0  # no stack or no group: nothing is protected
    group = resource["StackResourceDetail"].get("PhysicalResourceId")
    if not group:
        return 0
    groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"]
    protected = [i["InstanceId"] for g in groups for i in g.get("Instances", []) if i.get("ProtectedFromScaleIn")]
    for start in range(0, len(protected), 50):  # the API takes at most 50 instances per call
        autoscaling.set_instance_protection(InstanceIds=protected[start:start + 50], AutoScalingGroupName=group,
                                            ProtectedFromScaleIn=False)
    if protected:
        progress(f"cleared scale-in protection on {len(protected)} instances of {group}")
    return len(protected)
