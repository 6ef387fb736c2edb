"""Images whose base cannot be pulled here (NGC) are consistent with the project on paper.

The GPU and inf2 images build on NGC Triton; the tests cannot run them, so they check the pinned tag's
documented Python against pyproject's requires-python, the torch pin against the one that saves the
artifacts (inf2: against the Neuron release it documents), and that no server image declares an ENTRYPOINT
(ECS Command would be appended to it).
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from deploy import images
from deploy.base_images import NEURON_RELEASES, dockerfile_arg, ngc_python

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "triton" / "docker"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*")) + [ROOT / "control_plane" / "Dockerfile",
                                                     ROOT / "loadtest" / "Dockerfile"]


def _torch_pin() -> str:
    """The torch that saves the artifacts: pyproject's [torch] extra (the default install has no torch)."""
    pin = next(d for d in PYPROJECT["project"]["optional-dependencies"]["torch"] if d.startswith("torch=="))
    return pin.removeprefix("torch==")


def test_documented_ngc_facts():
    assert ngc_python("24.10-py3") == (3, 10) and ngc_python("25.02-py3") == (3, 12)
    with pytest.raises(ValueError, match="no documented Python"):
        ngc_python("22.01-py3")


@pytest.mark.parametrize("family", ["gpu", "inf2"])
def test_ngc_based_images_run_a_python_the_project_supports(family: str):
    dockerfile = DOCKER / f"Dockerfile.{family}"
    tag = dockerfile_arg(dockerfile, "TRITON_IMAGE").rsplit(":", 1)[1]
    major, minor = ngc_python(tag)
    assert f"{major}.{minor}" in SpecifierSet(PYPROJECT["project"]["requires-python"]), \
        f"NGC {tag} has Python {major}.{minor}, outside requires-python"
    assert f"sys.version_info[:2] == ({major}, {minor})" in dockerfile.read_text()  # checked at build too


def test_gpu_and_base_images_install_the_torch_that_saves_the_artifacts():
    assert dockerfile_arg(DOCKER / "Dockerfile.gpu", "TORCH_VERSION") == _torch_pin()
    assert dockerfile_arg(DOCKER / "Dockerfile.base", "TORCH_VERSION") == _torch_pin()
    for family in ("cpu",):  # built FROM the base: no torch of their own
        assert "torch==" not in (DOCKER / f"Dockerfile.{family}").read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name + "/" + p.name)
def test_no_image_installs_an_old_torch_or_numpy_2(dockerfile: Path):
    text = dockerfile.read_text()
    if dockerfile.name != "Dockerfile.inf2":  # inf2 runs the torch torch-neuronx pins: the tests below
        assert not re.search(r"torch==2\.[0-9]\.", text), "an old torch may not load torch 2.13 artifacts"
        assert "ARG TORCH_VERSION=" not in text or dockerfile_arg(dockerfile, "TORCH_VERSION") == _torch_pin()
    for line in text.splitlines():
        if "pip install" in line and "numpy" in line:
            assert '"numpy<2"' in line


@pytest.mark.parametrize("family", ["cpu", "gpu", "inf2"])
def test_server_images_have_no_entrypoint(family: str):
    # ECS `Command` replaces only CMD: with an ENTRYPOINT, the sync containers' `fleet sync ...` would run
    # as arguments of it (the stack rolled back on first create).
    assert not re.search(r"^ENTRYPOINT", (DOCKER / f"Dockerfile.{family}").read_text(), re.MULTILINE)


def test_every_build_context_ignores_venvs_state_and_results():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".fleet", ".git", "generated", "results"} <= ignored


def test_the_base_takes_torch_from_the_cpu_index_unless_a_local_wheel_of_its_own_architecture_is_there():
    # PyPI's torch 2.13.0 is a CUDA build on x86_64 and aarch64 alike (GBs of CUDA libraries); a local
    # x86_64 wheel must not stop an arm64 build from using the CPU index.
    base = DOCKER / "Dockerfile.base"
    assert dockerfile_arg(base, "TORCH_INDEX_URL") == images.TORCH_CPU_INDEX
    assert "torch-${TORCH_VERSION}*_$(uname -m).whl" in base.read_text()


def test_a_local_torch_wheel_counts_only_for_its_architecture(tmp_path: Path):
    (tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").touch()
    assert images.has_local_torch("amd64", [str(tmp_path)])
    assert not images.has_local_torch("arm64", [str(tmp_path)])


def test_arm64_and_amd64_images_have_tags_of_their_own():
    spec = images.SPECS["server-cpu"]
    other = next(arch for arch in images.ARCHES if arch != images.host_arch())
    assert spec.tag == spec.tag_for(images.host_arch()) == f"localhost/triton-fleet/server-cpu:{images.version()}"
    assert spec.tag_for(other) == f"{spec.tag}-{other}"
    assert images.debian_image(other) == f"{images.DEBIAN_IMAGE}-{other}"
    with pytest.raises(ValueError, match="unknown architecture 'riscv64'"):
        spec.tag_for("riscv64")



def test_inf2_pins_one_documented_neuron_release_for_inf2():
    dockerfile = DOCKER / "Dockerfile.inf2"
    release = NEURON_RELEASES[dockerfile_arg(dockerfile, "NEURON_SDK")]
    assert "inf2" in release.instances
    assert dockerfile_arg(dockerfile, "TORCH_NEURONX_VERSION") == release.torch_neuronx
    assert dockerfile_arg(dockerfile, "NEURONX_CC_VERSION") == release.neuronx_cc
    assert dockerfile_arg(dockerfile, "NEURONX_RUNTIME_LIB_VERSION").split("-")[0] == release.runtime_lib
    # torch-neuronx X.Y.Z.<neuron version> is built for torch X.Y.Z, the torch the image installs and asserts
    assert release.torch_neuronx.startswith(release.torch + ".")
    assert dockerfile_arg(dockerfile, "TORCH_VERSION") == release.torch
    tag = dockerfile_arg(dockerfile, "TRITON_IMAGE").rsplit(":", 1)[1]
    assert ngc_python(tag) in release.pythons, "the NGC base's Python has no torch-neuronx wheel"


def test_inf2_installs_exactly_its_pins_and_fleet_without_the_projects_torch():
    text = (DOCKER / "Dockerfile.inf2").read_text()
    for arg in ("TORCH_VERSION", "TORCH_NEURONX_VERSION", "NEURONX_CC_VERSION"):
        assert f"=${{{arg}}}" in text
    assert "pip install --no-deps /opt/triton-fleet" in text  # its dependencies would bring torch 2.13
    assert "torch-neuronx neuronx-cc" not in text  # no unpinned install left


def test_every_image_that_installs_the_project_builds_the_pack_runtime_into_it():
    # setup.py puts triton/backends into the wheel as data; without the folder in the build context the
    # control plane could not build packs (model_repository/resources.py).
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        if "pip install --no-deps /opt/triton-fleet" in text:
            assert "COPY triton/backends /opt/triton-fleet/triton/backends" in text, dockerfile
            assert re.search(r"^COPY .*setup\.py.* /opt/triton-fleet/$", text, re.MULTILINE), dockerfile


def test_the_gpu_image_states_and_checks_the_cuda_of_its_torch():
    dockerfile = DOCKER / "Dockerfile.gpu"
    cuda = dockerfile_arg(dockerfile, "TORCH_CUDA")
    text = dockerfile.read_text()
    assert "torch.version.cuda == '${TORCH_CUDA}'" in text  # the build fails if the comment went stale
    assert f"is a CUDA {cuda}" in text and "CUDA 12.8 build" not in text
    assert "whl/cu128" not in text


def test_the_cpu_server_image_carries_the_tritonserver_of_the_server_extra():
    pin = next(d for d in PYPROJECT["project"]["optional-dependencies"]["server"] if d.startswith("nvidia-pytriton"))
    assert f'"{pin}"' in (DOCKER / "Dockerfile.cpu").read_text()
    assert not any(d.startswith(("torch", "nvidia-pytriton")) for d in PYPROJECT["project"]["dependencies"])
