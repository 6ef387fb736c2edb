"""Architecture families through the real control plane (waitress, SeaweedFS, SQLite and PostgreSQL, the
sandboxed validator) and a real tritonserver: each artifact is split at registration into its
architecture's program (stored once, content-addressed) and its weights; the API shows architectures;
members of one architecture share a pack; they answer bit-identically to the uploaded files; a program that
differs in anything but weights is another architecture; a weights file that does not match its
architecture is refused with what differs."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import requests
import torch
from safetensors.torch import save_file

from control_plane.registry import artifacts_prefix
from fleet.client import infer_at
from fleet.client import register as fleet_register
from fleet.stack import ControlPlane
from fleet.waiting import wait_for
from model_repository.contract import MODEL_ID_PARAMETER

from .conftest import TOKEN, stack_on

pytestmark = pytest.mark.slow
WIDTH, OUT = 8, 4
SIGNATURE = {"inputs": [{"name": "INPUT__0", "dtype": "FP32", "shape": [-1, WIDTH]}],
             "outputs": [{"name": "OUTPUT__0", "dtype": "FP32", "shape": [-1, OUT]}]}


class Scaled(torch.nn.Module):
    """An MLP whose output is multiplied by a constant baked into the code."""

    def __init__(self, seed: int, scale: float) -> None:
        super().__init__()
        self.body, self.scale = mlp(seed), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.scale


class Tied(torch.nn.Module):
    """Two layers sharing one weight tensor (tied weights): not split, served whole."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.first = torch.nn.Linear(WIDTH, WIDTH)
        self.second = torch.nn.Linear(WIDTH, WIDTH)
        self.second.weight = self.first.weight
        self.head = torch.nn.Linear(WIDTH, OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.second(torch.tanh(self.first(x)))))


def mlp(seed: int, hidden: int = 32, activation=torch.nn.GELU) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(WIDTH, hidden), activation(), torch.nn.Linear(hidden, OUT)).eval()


def artifact(module: torch.nn.Module, fmt: str = "torchscript") -> bytes:
    example, buffer = torch.randn(2, WIDTH), io.BytesIO()
    if fmt == "torch_export":
        batch = torch.export.Dim("batch", min=1, max=256)
        torch.export.save(torch.export.export(module.eval(), (example,), dynamic_shapes=({0: batch},)), buffer)
    else:
        torch.jit.save(torch.jit.trace(module.eval(), example), buffer)
    return buffer.getvalue()


MODELS = {  # name -> (module, format)
    "gelu-a": (mlp(1), "torchscript"), "gelu-b": (mlp(2), "torchscript"), "gelu-c": (mlp(3), "torchscript"),
    "exported-a": (mlp(4), "torch_export"), "exported-b": (mlp(5), "torch_export"),
    "relu": (mlp(6, activation=torch.nn.ReLU), "torchscript"),  # same shapes, other code
    "wider": (mlp(7, hidden=48), "torchscript"),  # same code, other shapes
    "scaled-2": (Scaled(8, 2.0), "torchscript"), "scaled-3": (Scaled(8, 3.0), "torchscript"),  # other constant
    "tied": (Tied(9), "torchscript"),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, seaweed, database_url):
    """SeaweedFS, one tritonserver and the control plane; every model in MODELS registered by upload."""
    root = tmp_path_factory.mktemp("families")
    # split_min_bytes 0: these models are a few KiB; split them all the same
    built = stack_on(root, seaweed, "fam", servers=("triton",), database=database_url, server_dead_after_s=5,
                     split_min_bytes=0)
    with built.start():
        built.register_servers(capacity_bytes=4 * 2**30, metrics=True)
        cp = built.control_plane
        uploaded = {}
        for name, (module, fmt) in MODELS.items():
            uploaded[name] = artifact(module, fmt)
            response = register(cp, name, uploaded[name])
            assert response.status_code == 201, response.text
        folder = artifacts_prefix(built.settings)  # the registry's objects
        yield {"cp": cp, "server": built.servers["triton"], "uploaded": uploaded, "seaweed": seaweed,
               "folder": folder}


def register(cp: ControlPlane, name: str, data: bytes, architecture: str | None = None) -> requests.Response:
    return fleet_register(cp.url, name, data, SIGNATURE, token=TOKEN, architecture=architecture, filename="model",
                          timeout_s=300)


def model(stack, name: str) -> dict:
    response = stack["cp"].api().get(f"{stack['cp'].url}/api/v1/models/{name}")
    assert response.status_code == 200, response.text
    return response.json()


def architecture_of(stack, name: str) -> str | None:
    found = model(stack, name)["architecture"]
    return found["id"] if found else None


def infer(record: dict, x: np.ndarray) -> np.ndarray:
    return infer_at(record["endpoints"][0]["grpc_url"], record["pack"], {"INPUT__0": x},
                    record["request_parameters"][MODEL_ID_PARAMETER]).as_numpy("OUTPUT__0")


def reference(data: bytes, x: np.ndarray) -> np.ndarray:
    """The uploaded file itself, loaded as a user would load it."""
    try:
        module = torch.jit.load(io.BytesIO(data))
    except RuntimeError:
        module = torch.export.load(io.BytesIO(data)).module()
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


def servable(stack, name: str) -> dict | None:
    record = model(stack, name)
    return record if record["status"] == "servable" else None


X = np.random.default_rng(1).standard_normal((3, WIDTH)).astype(np.float32)


def test_members_of_one_architecture_share_its_id_and_a_pack_and_the_api_lists_it(stack):
    records = {name: model(stack, name) for name in ("gelu-a", "gelu-b", "gelu-c")}
    ids = {r["architecture"]["id"] for r in records.values()}
    assert len(ids) == 1, "three fine-tunes of one architecture"
    (ident,) = ids
    assert all(r["architecture"]["members"] == 3 and r["whole_artifact_reason"] is None for r in records.values())
    assert records["gelu-a"]["architecture"]["parameter_bytes"] == (WIDTH * 32 + 32 + 32 * OUT + OUT) * 4
    assert len({r["pack"] for r in records.values()}) == 1, "members of one architecture share a pack"
    listed = stack["cp"].api().get(f"{stack['cp'].url}/api/v1/architectures").json()["items"]
    entry = next(a for a in listed if a["id"] == ident)
    assert entry["members"] == 3 and entry["packs"] == [records["gelu-a"]["pack"]] and entry["tensors"] == 4
    detail = stack["cp"].api().get(f"{stack['cp'].url}/api/v1/architectures/{ident}").json()
    assert detail["member_names"] == ["gelu-a", "gelu-b", "gelu-c"]
    assert [t["name"] for t in detail["table"]] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    spec = stack["cp"].api().get(f"{stack['cp'].url}/openapi.json").json()
    assert "/api/v1/architectures" in spec["paths"] and "ArchitectureRef" in json.dumps(spec["components"])


def test_a_program_that_differs_in_anything_but_weights_is_another_architecture(stack):
    ids = {name: architecture_of(stack, name) for name in ("gelu-a", "relu", "wider", "scaled-2", "scaled-3",
                                                          "exported-a")}
    assert None not in ids.values(), ids
    assert len(set(ids.values())) == len(ids), f"code, shapes, a constant or the format differ: {ids}"
    assert architecture_of(stack, "exported-a") == architecture_of(stack, "exported-b")


def test_the_program_is_stored_once_per_architecture_and_each_member_as_its_weights(stack):
    client, folder = stack["seaweed"].client(), stack["folder"]
    keys = [o["Key"].removeprefix(folder) for page in client.get_paginator("list_objects_v2").paginate(
        Bucket="models", Prefix=folder) for o in page.get("Contents", [])]
    programs = [k for k in keys if k.startswith("_architectures/")]
    architectures = {architecture_of(stack, name) for name in MODELS} - {None}
    assert sorted(programs) == sorted({f"_architectures/{a}{'.pt2' if 'exported' in n else '.pt'}"
                                       for n in MODELS if (a := architecture_of(stack, n))})
    assert len(programs) == len(architectures)
    for name in ("gelu-a", "exported-b"):
        assert any(k.startswith(f"{name}/") and k.endswith(".safetensors") for k in keys), name


def test_members_answer_bit_identically_to_the_files_that_were_uploaded(stack):
    for name in ("gelu-a", "gelu-c", "exported-b", "scaled-3", "tied"):
        record = wait_for(lambda n=name: servable(stack, n), timeout_s=240, what=f"{name} servable")
        for rows in (1, 3):
            assert np.array_equal(infer(record, X[:rows]), reference(stack["uploaded"][name], X[:rows])), name


def test_an_artifact_that_cannot_be_split_is_served_whole_and_says_why(stack):
    record = model(stack, "tied")
    assert record["architecture"] is None
    assert "share memory" in record["whole_artifact_reason"], record["whole_artifact_reason"]


def test_a_weights_file_for_an_architecture_registers_and_serves_as_its_member(stack):
    ident = architecture_of(stack, "gelu-a")
    fine_tune = mlp(20)
    buffer_path = stack["cp"].log.parent / "fine-tune.safetensors"
    save_file({k: v.contiguous() for k, v in fine_tune.state_dict().items()}, str(buffer_path))
    response = register(stack["cp"], "gelu-weights", buffer_path.read_bytes(), architecture=ident)
    assert response.status_code == 201, response.text
    assert response.json()["architecture"]["id"] == ident and response.json()["architecture"]["members"] == 4
    record = wait_for(lambda: servable(stack, "gelu-weights"), timeout_s=240, what="the weights-only member servable")
    with torch.inference_mode():
        expected = torch.jit.trace(fine_tune, torch.randn(2, WIDTH))(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(infer(record, X), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("change, words", [
    ("shape", "'0.weight' has shape [16, 8], the architecture has [32, 8]"),
    ("dtype", "'2.bias' is float16, the architecture has float32"),
    ("missing", "missing 1 tensor(s): 2.bias"),
    ("extra", "1 tensor(s) the architecture does not have: extra"),
])
def test_a_weights_file_that_does_not_match_its_architecture_is_refused_with_what_differs(stack, change, words):
    ident = architecture_of(stack, "gelu-a")
    tensors = {k: v.clone().contiguous() for k, v in mlp(21).state_dict().items()}
    if change == "shape":
        tensors["0.weight"] = torch.zeros(16, WIDTH)
    elif change == "dtype":
        tensors["2.bias"] = tensors["2.bias"].half()
    elif change == "missing":
        del tensors["2.bias"]
    else:
        tensors["extra"] = torch.zeros(2)
    path = stack["cp"].log.parent / f"bad-{change}.safetensors"
    save_file(tensors, str(path))
    response = register(stack["cp"], f"bad-{change}", path.read_bytes(), architecture=ident)
    assert response.status_code == 422, response.text
    body = response.json()["error"]
    assert body["code"] == "weights_mismatch" and words in body["message"], body
    assert words in " ".join(body["details"]["differences"])
    assert stack["cp"].api().get(f"{stack['cp'].url}/api/v1/models/bad-{change}").status_code == 404


def test_weights_for_an_unknown_architecture_or_a_file_that_is_not_safetensors_are_refused(stack):
    path = stack["cp"].log.parent / "orphan.safetensors"
    save_file({k: v.contiguous() for k, v in mlp(22).state_dict().items()}, str(path))
    unknown = register(stack["cp"], "orphan", path.read_bytes(), architecture="0" * 64)
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "unknown_architecture"
    garbage = register(stack["cp"], "garbage", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ",
                       architecture=architecture_of(stack, "gelu-a"))
    assert garbage.status_code == 422 and garbage.json()["error"]["code"] == "invalid_weights", garbage.text


def test_metrics_and_the_status_page_show_architectures(stack):
    text = stack["cp"].api().get(f"{stack['cp'].url}/metrics", timeout=10).text
    lines = [line for line in text.splitlines() if line.startswith(("fleet_architectures ", "fleet_models_by_path"))]
    assert any(line.startswith("fleet_architectures ") and float(line.split()[-1]) >= 6 for line in lines), lines
    assert any('path="whole"' in line and float(line.split()[-1]) >= 1 for line in lines), lines
    page = requests.get(f"{stack['cp'].url}/", timeout=10).text  # loopback sees the page without a token
    assert "Architecture families" in page and architecture_of(stack, "gelu-a")[:12] in page


def test_the_server_disk_holds_one_program_per_architecture_and_weights_not_whole_artifacts(stack):
    wait_for(lambda: servable(stack, "gelu-b"), timeout_s=240, what="gelu-b servable")
    pack = model(stack, "gelu-b")["pack"]
    version = stack["server"].repository / pack / "1"
    document = json.loads((version / "members.json").read_text())
    members = {name: entry for name, entry in document["members"].items()}
    split = [name for name in members if model(stack, name)["architecture"]]
    assert split and all(members[name]["file"] == f"members/{name}.safetensors" for name in split)
    assert all((version / members[name]["file"]).stat().st_size == members[name]["bytes"] for name in split)
    programs = sorted(p.name for p in (version / "programs").iterdir())
    architectures = sorted({members[name]["architecture"] for name in split})
    assert [p.split(".")[0] for p in programs] == architectures, "one program per architecture in the pack"
    assert not any(p.suffix in (".pt", ".pt2") for p in (version / "members").iterdir()
                   if p.stem in split), "split members travel without their whole artifact"
