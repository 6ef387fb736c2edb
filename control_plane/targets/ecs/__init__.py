"""Deploy the fleet to ECS behind a Network Load Balancer and run load tests there (`EcsTarget`).

One module per job: `target` (deploy, status, load test, teardown), `template` (the CloudFormation template),
`stack` (create/update the stack, follow its events), `tasks` (the service's tasks and their addresses),
`loadtest` (locust as a one-off task), `aws` (boto3 clients and their errors).
"""
from control_plane.targets.ecs.target import EcsConfig, EcsTarget

__all__ = ["EcsConfig", "EcsTarget"]
