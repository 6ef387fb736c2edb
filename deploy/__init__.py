"""Deployment tooling that runs here: image builds (podman), the ECS task and EKS pods started as containers,
and the runbook rehearsal. Nothing here talks to AWS."""
from model_repository.checkout import keep_checkout_root_off_path

keep_checkout_root_off_path()  # `python -m` in the repository root: see model_repository/checkout.py
