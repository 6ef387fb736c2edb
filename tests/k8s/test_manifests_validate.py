"""Every overlay renders with kustomize and is valid Kubernetes, strictly, for 1.30 and 1.33 (the server
pods use native sidecars, on by default from 1.29; 1.27's schema rejects them).

kubernetes-validate checks each object against the official OpenAPI schema of that version; --strict
also rejects unknown fields, so a misspelt key fails here rather than being silently dropped by a
cluster. No CRDs are used (autoscaling uses the built-in HPA), so nothing needs to be skipped.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from control_plane.targets.eks.manifests import K8S_ROOT

OVERLAYS = ("graviton", "g4dn", "inf2", "control-plane", "locust", "all")
VALIDATOR = Path(sys.executable).parent / "kubernetes-validate"


@pytest.fixture(scope="module")
def rendered_overlays(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("overlays")
    paths = {}
    for overlay in OVERLAYS:
        done = subprocess.run(["kubectl", "kustomize", str(K8S_ROOT / "overlays" / overlay)],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{overlay} does not render: {done.stderr}"
        paths[overlay] = out / f"{overlay}.yaml"
        paths[overlay].write_text(done.stdout)
    return paths


@pytest.mark.parametrize("version", ["1.30.0", "1.33.0"])
def test_every_overlay_is_strictly_valid(rendered_overlays: dict[str, Path], version: str) -> None:
    done = subprocess.run([str(VALIDATOR), "-k", version, "--strict", *map(str, rendered_overlays.values())],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    for overlay, path in rendered_overlays.items():
        objects = path.read_text().count("\nkind: ") + path.read_text().startswith("kind: ")
        passed = done.stdout.count(f"{path} passed")
        assert passed == objects > 0, f"{overlay}: {passed} of {objects} objects validated"


def test_the_validator_rejects_a_misspelt_field(rendered_overlays: dict[str, Path], tmp_path: Path) -> None:
    """Guards the test above: strict mode really fails on an unknown field."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(rendered_overlays["graviton"].read_text().replace("readinessProbe", "readynessProbe"))
    done = subprocess.run([str(VALIDATOR), "-k", "1.30.0", "--strict", str(broken)],
                          capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "readynessProbe" in done.stdout + done.stderr
