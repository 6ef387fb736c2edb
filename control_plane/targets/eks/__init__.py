"""Deploy the fleet to EKS and run load tests there (`EksTarget`, settings from FLEET_EKS_* variables).

One module per job: `target` (deploy, status, load test, teardown), `manifests` (render k8s/), `client`
(the kubernetes client and its errors), `rollout` (wait for pods, say why they are not ready), `diagnose`
(explain a pod that is stuck), `locust` (the load test's results from the master's log).
"""
from control_plane.targets.eks.target import EksSettings, EksTarget

__all__ = ["EksSettings", "EksTarget"]
