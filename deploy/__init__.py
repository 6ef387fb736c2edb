"""Deployment tooling that runs here: image builds (podman), the ECS task and EKS pods started as containers,
and the runbook rehearsal. Nothing here talks to AWS."""
