"""Waiting for workloads to finish: StatefulSet rollouts and Jobs, with progress and early failure.

Polling (not watches) keeps this simple and robust across API-server restarts; every poll also looks at
the pods, so an unpullable image or a missing GPU ends the wait with its cause instead of a timeout.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes.client import ApiException, V1Job, V1Pod, V1StatefulSet

from control_plane.targets.base import Progress, TargetError
from control_plane.targets.eks.client import Cluster, api_error
from control_plane.targets.eks.diagnose import PodProblem, diagnose


@dataclass(frozen=True)
class Waiting:
    """How long to wait and how often to look."""

    timeout_s: float
    poll_s: float
    unschedulable_grace_s: float


def rollout_status(sts: V1StatefulSet) -> tuple[bool, str]:
    """Whether a StatefulSet's rollout is complete (kubectl's rules), and a one-line summary."""
    name = sts.metadata.name
    want = 1 if sts.spec.replicas is None else sts.spec.replicas
    status = sts.status
    generation = sts.metadata.generation
    if generation and (status is None or (status.observed_generation or 0) < generation):
        return False, f"{name}: waiting for the StatefulSet controller to pick up the new spec"
    ready = (status.ready_replicas or 0) if status else 0
    updated = (status.updated_replicas or 0) if status else 0
    revisions_match = status is None or status.current_revision == status.update_revision
    done = ready >= want and updated >= want and revisions_match
    return done, f"{name}: {ready}/{want} ready, {updated}/{want} updated"


def selector_of(sts: V1StatefulSet) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((sts.spec.selector.match_labels or {}).items()))


def pods(cluster: Cluster, selector: str) -> list[V1Pod]:
    try:
        return cluster.core.list_namespaced_pod(cluster.namespace, label_selector=selector).items
    except ApiException as error:
        raise api_error(error, f"list pods ({selector})") from None


def wait_for_statefulsets(cluster: Cluster, names: list[str], waiting: Waiting, progress: Progress) -> None:
    """Until every named StatefulSet has rolled out; TargetError on a fatal pod problem or the timeout."""
    deadline = time.monotonic() + waiting.timeout_s
    reported: dict[str, str] = {}
    while True:
        unfinished = []
        for name in names:
            try:
                sts = cluster.apps.read_namespaced_stateful_set(name, cluster.namespace)
            except ApiException as error:
                raise api_error(error, f"read StatefulSet {name}") from None
            done, summary = rollout_status(sts)
            if reported.get(name) != summary:
                progress(summary)
                reported[name] = summary
            if not done:
                unfinished.append(sts)
        if not unfinished:
            return
        problems = [p for sts in unfinished
                    for p in diagnose(cluster, pods(cluster, selector_of(sts)), waiting.unschedulable_grace_s)]
        _raise_fatal(problems, "the rollout cannot finish")
        if time.monotonic() >= deadline:
            raise TargetError(f"the rollout did not finish within {waiting.timeout_s:.0f}s: "
                              + "; ".join(reported[s.metadata.name] for s in unfinished)
                              + _listing(problems))
        time.sleep(waiting.poll_s)


def job_outcome(job: V1Job) -> str | None:
    """'Complete' or 'Failed' once a Job has finished, else None."""
    for condition in (job.status.conditions or []) if job.status else []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return condition.type
    return None


def wait_for_job(cluster: Cluster, name: str, pod_selector: str, waiting: Waiting,
                 progress: Progress) -> str:
    """Until a Job finishes; returns its outcome. Pods of `pod_selector` are checked for problems."""
    deadline = time.monotonic() + waiting.timeout_s
    reported = ""
    while True:
        try:
            job = cluster.batch.read_namespaced_job(name, cluster.namespace)
        except ApiException as error:
            raise api_error(error, f"read Job {name}") from None
        outcome = job_outcome(job)
        if outcome:
            return outcome
        active = (job.status.active or 0) if job.status else 0
        summary = f"{name}: {'running' if active else 'starting'}"
        if summary != reported:
            progress(summary)
            reported = summary
        problems = diagnose(cluster, pods(cluster, pod_selector), waiting.unschedulable_grace_s)
        _raise_fatal(problems, f"Job {name} cannot run")
        if time.monotonic() >= deadline:
            raise TargetError(f"Job {name} did not finish within {waiting.timeout_s:.0f}s" + _listing(problems))
        time.sleep(waiting.poll_s)


def wait_until_gone(read: Callable[[], object], what: str, waiting: Waiting, progress: Progress) -> None:
    """Until `read` raises 404 (deletion finished)."""
    deadline = time.monotonic() + waiting.timeout_s
    progress(f"waiting for {what} to be deleted")
    while True:
        try:
            read()
        except ApiException as error:
            if error.status == 404:
                return
            raise api_error(error, f"read {what}") from None
        if time.monotonic() >= deadline:
            raise TargetError(f"{what} was not deleted within {waiting.timeout_s:.0f}s: check its finalizers "
                              f"(`kubectl get {what} -o yaml`)")
        time.sleep(waiting.poll_s)


def _raise_fatal(problems: list[PodProblem], headline: str) -> None:
    fatal = [p.message for p in problems if p.fatal]
    if fatal:
        raise TargetError(f"{headline}:\n" + "\n".join(f"- {message}" for message in fatal))


def _listing(problems: list[PodProblem]) -> str:
    return "".join(f"\n- {p.message}" for p in problems)
