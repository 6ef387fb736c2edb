"""The pack runtime (triton/backends/pack/model.py) in the real tritonserver: cold loads off the request path,
one load per cold member, bounded waiting, residency budget, negative cache, Triton error codes, every
dtype and torch.export members.

Packs are written by hand to the members.json contract (docs/data-plane.md), so these tests depend only on
the runtime, not on the generator or the repository builder.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from fleet.client import infer_at
from fleet.triton_server import TritonServer
from fleet.waiting import wait_for
from model_repository.contract import PROBE_MEMBER, ErrorCode, error_code
from model_repository.packing import install_runtime

pytestmark = pytest.mark.slow
RUNTIME = Path(__file__).resolve().parents[2] / "triton" / "backends" / "pack" / "model.py"
DTYPES = ("FP32", "FP16", "BF16", "INT64", "INT32", "INT8", "UINT8", "BOOL")
TORCH = {"FP32": torch.float32, "FP16": torch.float16, "BF16": torch.bfloat16, "INT64": torch.int64,
         "INT32": torch.int32, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}
MB = 2**20
BUDGET = 64 * MB
WIDE_BYTES = (4 * 512 + 512 + 512 * 3 + 3) * 4  # tensor bytes of wide(): what the device tier charges
DEVICE_BUDGET = WIDE_BYTES * 5 // 2  # holds two wide members, not three


class Affine(torch.nn.Module):
    """x * 2 + 1 in the input's own dtype (logical not for BOOL): exact in every dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bool:
            return ~x
        return x * 2 + 1


def mlp(seed: int, width: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(width, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()


def wide(seed: int, hidden: int = 512) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3)).eval()


def slow_to_load(layers: int = 60) -> torch.nn.Module:
    """A deep, tiny MLP: as torch.export it takes ~1 s to load (graph deserialisation in Python, which
    yields the GIL), so it stands for a big member's cold load without shipping hundreds of MB."""
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh())
                                 for _ in range(layers)]).eval()


def save(module: torch.nn.Module, path: Path, fmt: str, example: torch.Tensor) -> None:
    if fmt == "torch_export":
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
    else:
        torch.jit.save(torch.jit.trace(module, example), str(path))


class PackBuilder:
    """Writes one pack to the members.json contract: config.pbtxt, 1/model.py, 1/members.json, members/."""

    def __init__(self, repository: Path, name: str, **parameters: str) -> None:
        self.name, self.version = name, repository / name / "1"
        (self.version / "members").mkdir(parents=True)
        install_runtime(self.version)
        self.parameters = {"family": "cpu", "torch_threads": "1", **parameters}
        self.members: dict[str, dict] = {}
        self.tensors: dict[str, tuple[str, str, bool]] = {}  # name -> (dtype, dims, is_input)

    def add(self, ident: str, module: torch.nn.Module | None, dtype: str = "FP32", width: int = 4,
            out_width: int = 3, fmt: str = "torchscript", raw: bytes | None = None,
            declared_bytes: int | None = None) -> None:
        suffix = ".pt2" if fmt == "torch_export" else ".pt"
        path = self.version / "members" / f"{ident}{suffix}"
        if raw is not None:
            path.write_bytes(raw)
        else:
            example = torch.ones(2, width).to(TORCH[dtype])
            save(module, path, fmt, example)
        data = path.read_bytes()
        in_name, out_name = (f"X_{dtype}", f"Y_{dtype}") if dtype != "FP32" or width != 4 else ("INPUT__0", "OUTPUT__0")
        self.tensors[in_name] = (dtype, f"[{width}]", True)
        self.tensors[out_name] = (dtype if dtype != "FP32" or width != 4 else "FP32", "[-1]", False)
        self.members[ident] = {
            "file": f"members/{ident}{suffix}", "format": fmt, "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": declared_bytes if declared_bytes is not None else len(data),
            "inputs": [{"name": in_name, "dtype": dtype, "shape": [-1, width]}],
            "outputs": [{"name": out_name, "dtype": dtype, "shape": [-1, out_width]}]}

    def write(self) -> str:
        (self.version / "members.json").write_text(json.dumps({"generation": 1, "members": self.members}))
        lines = [f'name: "{self.name}"', 'backend: "python"', "max_batch_size: 64",
                 "dynamic_batching { max_queue_delay_microseconds: 500 }",
                 "instance_group { kind: KIND_CPU count: 1 }"]
        for tensor_name, (dtype, dims, is_input) in self.tensors.items():
            kind, extra = ("input", " optional: true") if is_input else ("output", "")
            lines.append(f'{kind} {{ name: "{tensor_name}" data_type: TYPE_{dtype} dims: {dims}{extra} }}')
        for key, value in self.parameters.items():
            lines.append(f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}')
        (self.version.parent / "config.pbtxt").write_text("\n".join(lines) + "\n")
        return self.name


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server, three packs: `main` (every dtype, export, a slow and a broken member, a tight budget
    for one big member), `bounded` (at most 2 requests wait per member), `impatient` (0.3 s load timeout)."""
    root = tmp_path_factory.mktemp("pack-runtime")
    repository = root / "repo"
    main = PackBuilder(repository, "main", max_resident_bytes=str(BUDGET), preload="hot")
    main.add("hot", mlp(1))
    main.add("cold", mlp(2))
    main.add("http_cold", mlp(5))
    main.add("slow", slow_to_load(), fmt="torch_export", out_width=4)
    main.add("exported", mlp(3), fmt="torch_export")
    main.add("broken", None, raw=b"PK\x03\x04 not really a model" * 10)
    main.add("huge", mlp(4))
    for dtype in DTYPES:
        main.add(f"dtype_{dtype}", Affine(), dtype=dtype, width=3, out_width=3)
    # `huge` stands for a member bigger than the budget: its file is extended (sparse, so it costs no
    # disk) to 72 MB and members.json declares that size, which the runtime checks before any load.
    huge = main.version / "members" / "huge.pt"
    with huge.open("r+b") as handle:
        handle.truncate(72 * MB)
    main.members["huge"]["bytes"] = huge.stat().st_size
    bounded = PackBuilder(repository, "bounded", max_waiting_per_member="2")
    bounded.add("slow", slow_to_load(), fmt="torch_export", out_width=4)
    impatient = PackBuilder(repository, "impatient", load_timeout_s="0.3")
    impatient.add("slow", slow_to_load(), fmt="torch_export", out_width=4)
    # `tiered` runs the GPU tier's code with the CPU standing in for the GPU (device_tier_device=cpu): no GPU
    # here. Its device budget holds two `wide` members; `too_wide` is larger than the whole device budget.
    tiered = PackBuilder(repository, "tiered", device_tier_device="cpu", max_device_bytes=str(DEVICE_BUDGET))
    for k in range(3):
        tiered.add(f"w{k}", wide(10 + k))
    tiered.add("too_wide", wide(20, hidden=2048))
    names = [pack.write() for pack in (main, bounded, impatient, tiered)]
    with TritonServer(repository, load_models=tuple(names)) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        yield {"server": server, "client": client, "root": root, "main": main, "tiered": tiered}
        client.close()


def request(served, pack: str, member: str | None, array: np.ndarray, name: str = "INPUT__0",
            dtype: str = "FP32"):
    return infer_at(served["server"].grpc_url, pack, {name: array}, member, datatypes={name: dtype},
                    client=served["client"])


def infer(served, pack: str, member: str, array: np.ndarray) -> np.ndarray:
    return request(served, pack, member, array).as_numpy("OUTPUT__0")


def eager(served, member: str, array: np.ndarray, pack: str = "main") -> np.ndarray:
    entry = served[pack].members[member]
    path = served[pack].version / entry["file"]
    module = torch.export.load(str(path)).module() if entry["format"] == "torch_export" else torch.jit.load(str(path))
    with torch.inference_mode():
        return module(torch.from_numpy(array)).numpy()


def metric(served, family: str, **labels: str) -> float | None:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in served["server"].metrics().splitlines():
        if line.startswith(family + "{") and all(w in line for w in wanted):
            return float(line.rsplit(" ", 1)[1])
    return None


def status(error: InferenceServerException) -> str:
    return str(error.status()).rsplit(".", 1)[-1]


X = np.arange(8, dtype=np.float32).reshape(2, 4) / 8


def test_a_cold_load_does_not_hold_up_a_resident_neighbour(served):
    """While `slow` loads (~1 s), requests to the preloaded `hot` member keep being answered."""
    infer(served, "main", "hot", X)
    cold = concurrent.futures.ThreadPoolExecutor(1).submit(infer, served, "main", "slow", X)
    answered_while_loading = 0
    while not cold.done():
        np.testing.assert_allclose(infer(served, "main", "hot", X), eager(served, "hot", X), rtol=1e-6)
        answered_while_loading += 0 if cold.done() else 1
    np.testing.assert_allclose(cold.result(), eager(served, "slow", X), rtol=1e-5, atol=1e-6)
    assert answered_while_loading >= 3, "the neighbour should have been answered during the cold load"


def test_concurrent_requests_for_one_cold_member_share_one_load(served):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: infer(served, "main", "cold", X), range(8)))
    for answer in answers:
        np.testing.assert_allclose(answer, eager(served, "cold", X), rtol=1e-6)
    loads = wait_for(lambda: metric(served, "fleet_member_loads_total", pack="main", member="cold"),
                     what="the load counter of `cold`")
    assert loads == 1


def test_requests_beyond_the_wait_bound_are_refused_unavailable(served):
    def call(_):
        try:
            return request(served, "bounded", "slow", X).as_numpy("OUTPUT__0")
        except InferenceServerException as error:
            return error

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(call, range(8)))
    refused = [o for o in outcomes if isinstance(o, InferenceServerException)]
    assert refused, "8 concurrent requests against a bound of 2 waiting must shed some"
    assert all(status(e) == "UNAVAILABLE" and "load queue is full" in e.message() for e in refused)
    assert any(isinstance(o, np.ndarray) for o in outcomes), "the admitted requests are served"


def test_a_request_that_waits_past_the_load_timeout_gets_unavailable(served):
    with pytest.raises(InferenceServerException) as caught:
        request(served, "impatient", "slow", X)
    assert status(caught.value) == "UNAVAILABLE"
    assert "model 'slow' is still loading" in caught.value.message()
    # The load went on in the background: once it is done, the member serves.
    outputs = wait_for(lambda: _try(lambda: request(served, "impatient", "slow", X).as_numpy("OUTPUT__0")),
                       what="`slow` to serve after its load")
    assert outputs.shape == (2, 4)


def _try(call):
    try:
        return call()
    except InferenceServerException as error:
        if status(error) == "UNAVAILABLE":
            return None
        raise


def test_a_member_over_the_budget_is_refused_and_neighbours_keep_serving(served):
    with pytest.raises(InferenceServerException) as caught:
        infer(served, "main", "huge", X)
    assert status(caught.value) == "UNAVAILABLE"
    assert "model 'huge' needs 72 MB" in caught.value.message()
    assert "the pack's budget is 64 MB" in caught.value.message()
    np.testing.assert_allclose(infer(served, "main", "hot", X), eager(served, "hot", X), rtol=1e-6)


def test_a_member_that_fails_to_load_is_not_retried_on_every_request(served):
    messages = []
    for _ in range(5):
        with pytest.raises(InferenceServerException) as caught:
            infer(served, "main", "broken", X)
        messages.append(caught.value.message())
    assert len(set(messages)) == 1 and "not a loadable TorchScript module" in messages[0]
    failures = wait_for(lambda: metric(served, "fleet_member_load_failures_total", pack="main", member="broken"),
                        what="the load failure counter of `broken`")
    assert failures == 1, "within the back-off the error comes from the negative cache, not a new load"


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_round_trips_exactly_against_eager_torch(served, dtype):
    source = torch.arange(-3, 3, dtype=torch.float32).reshape(2, 3)
    value = source.to(TORCH[dtype]) if dtype not in ("UINT8", "BOOL") else (source.abs().to(TORCH[dtype]))
    expected = Affine()(value)
    # numpy has no bfloat16 of its own: tritonclient sends and returns BF16 as ml_dtypes.bfloat16 arrays.
    array = value.float().numpy().astype(ml_dtypes.bfloat16) if dtype == "BF16" else value.numpy()
    answer = request(served, "main", f"dtype_{dtype}", array, f"X_{dtype}", dtype).as_numpy(f"Y_{dtype}")
    got = torch.from_numpy(answer.astype(np.float32)).to(torch.bfloat16) if dtype == "BF16" \
        else torch.from_numpy(answer)
    assert got.dtype == expected.dtype
    assert torch.equal(got, expected)


def test_a_torch_export_member_serves_like_eager(served):
    np.testing.assert_allclose(infer(served, "main", "exported", X), eager(served, "exported", X), rtol=1e-6)


def test_errors_carry_triton_status_codes(served):
    cases = {
        "NOT_FOUND": lambda: infer(served, "main", "__fleet_probe__", X),
        "INVALID_ARGUMENT": lambda: infer(served, "main", "hot", np.zeros((2, 4), np.float32) * np.nan),
    }
    for code, call in cases.items():
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert status(caught.value) == code, caught.value.message()
    with pytest.raises(InferenceServerException, match="model '__fleet_probe__' is not in pack"):
        infer(served, "main", "__fleet_probe__", X)
    with pytest.raises(InferenceServerException) as caught:
        request(served, "main", "dtype_INT32", np.zeros((1, 4), np.int32), "X_INT32", "INT32")
    assert status(caught.value) == "INVALID_ARGUMENT"  # Triton's own shape check, before the runtime


def test_plain_http_clients_get_cold_answers_and_error_codes_unchanged(served):
    """KServe v2 over HTTP: a cold member's answer (sent later from the loader thread) arrives as one
    ordinary response; the control plane's probe member gets 404 with the message it looks for."""
    triton = served["server"].admin
    inputs = [{"name": "INPUT__0", "datatype": "FP32", "shape": list(X.shape), "data": X.ravel().tolist()}]
    answer = triton.infer("main", inputs, member="http_cold", timeout_s=60)
    assert answer.status_code == 200, answer.text
    output = np.array(answer.json()["outputs"][0]["data"], np.float32).reshape(2, 3)
    np.testing.assert_allclose(output, eager(served, "http_cold", X), rtol=1e-6)
    probe = triton.infer("main", inputs, member=PROBE_MEMBER, timeout_s=60)
    assert probe.status_code == 404 and error_code(probe.text) is ErrorCode.UNKNOWN_MEMBER
    assert "'__fleet_probe__' is not in pack" in probe.text


def test_pack_metrics_report_budget_residency_and_memory(served):
    infer(served, "main", "hot", X)
    assert metric(served, "fleet_pack_budget_bytes", pack="main") == BUDGET
    assert wait_for(lambda: metric(served, "fleet_pack_stub_rss_bytes", pack="main"), what="stub RSS") > 50 * MB
    assert metric(served, "fleet_pack_resident_bytes", pack="main") <= BUDGET
    assert metric(served, "fleet_pack_hits_total", pack="main") is not None


def test_a_member_pushed_off_the_device_comes_back_from_host_ram_without_a_disk_load(served):
    for ident in ("w0", "w1", "w2"):  # the device holds two: w0, the least recently used, leaves it
        np.testing.assert_allclose(infer(served, "tiered", ident, X), eager(served, ident, X, "tiered"), rtol=1e-6)
    wait_for(lambda: metric(served, "fleet_member_loads_total", pack="tiered", member="w2"), what="w2's load")
    disk_loads = metric(served, "fleet_member_loads_total", pack="tiered", member="w0")
    promotions = metric(served, "fleet_tier_loads_total", pack="tiered", tier="gpu")
    assert disk_loads >= 1 and promotions >= 3

    np.testing.assert_allclose(infer(served, "tiered", "w0", X), eager(served, "w0", X, "tiered"), rtol=1e-6)
    wait_for(lambda: metric(served, "fleet_tier_loads_total", pack="tiered", tier="gpu") == promotions + 1,
             what="w0's promotion back onto the device")
    assert metric(served, "fleet_member_loads_total", pack="tiered", member="w0") == disk_loads  # no disk
    assert metric(served, "fleet_tier_evictions_total", pack="tiered", tier="gpu") >= 2
    assert metric(served, "fleet_tier_budget_bytes", pack="tiered", tier="gpu") == DEVICE_BUDGET
    assert metric(served, "fleet_tier_resident_bytes", pack="tiered", tier="gpu") <= DEVICE_BUDGET
    assert metric(served, "fleet_tier_resident_members", pack="tiered", tier="gpu") == 2
    assert metric(served, "fleet_tier_resident_members", pack="tiered", tier="host") >= 3  # all stayed in RAM
    assert metric(served, "fleet_tier_misses_total", pack="tiered", tier="gpu") >= 4
    assert metric(served, "fleet_tier_budget_bytes", pack="tiered", tier="host") == 512 * MB  # the default
    # The pack-level metrics the dashboards read are the host tier's, as before.
    assert metric(served, "fleet_pack_resident_members", pack="tiered") == metric(
        served, "fleet_tier_resident_members", pack="tiered", tier="host")


def test_a_member_larger_than_the_device_budget_is_refused_and_neighbours_keep_the_device(served):
    infer(served, "tiered", "w1", X)
    for _ in range(2):  # the second refusal comes from the record of the first, without a new attempt
        with pytest.raises(InferenceServerException) as refused:
            infer(served, "tiered", "too_wide", X)
        assert status(refused.value) == "UNAVAILABLE"
        assert "on the gpu" in str(refused.value) and "larger max_device_bytes" in str(refused.value)
    np.testing.assert_allclose(infer(served, "tiered", "w1", X), eager(served, "w1", X, "tiered"), rtol=1e-6)
