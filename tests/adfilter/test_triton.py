"""The `adfilter` model in the real tritonserver: same likelihoods as offline, errors only where due."""
from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from adfilter.benchmark import run_triton_benchmark
from adfilter.scoring import load_model, verdicts
from adfilter.triton_repo import MODEL_NAME, TritonSettings, build_triton_model
from fleet.triton_server import TritonServer

pytestmark = pytest.mark.slow

MALFORMED = [
    (b"not json", "not valid JSON"),
    (b'{"id": "m1", "imp": []}', "imp must contain at least one impression"),
    (b'{"id": "m2", "imp": [{"id": "1", "banner": {"w": "300"}}]}', "imp[0].banner.w must be an integer"),
    (b'{"imp": [{"id": "1"}]}', "missing required field 'id'"),
]


@pytest.fixture(scope="module")
def server(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repository = tmp_path_factory.mktemp("adfilter-repo") / "models"
    # A long queue delay makes the server gather concurrent requests into shared batches, so the
    # mixed-batch test really mixes good and malformed requests in one execute() call.
    build_triton_model(trained_model, repository, TritonSettings(max_queue_delay_us=20_000))
    with TritonServer(repository, load_models=(MODEL_NAME,)) as running:
        yield running


def bid_request_input(raw: bytes) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("BID_REQUEST", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[raw]], dtype=object))
    return tensor


def infer_concurrently(client: grpcclient.InferenceServerClient, raws: list[bytes]) -> list:
    """Fire every request before waiting for any, so dynamic batching can group them."""
    results: queue.Queue = queue.Queue()
    for index, raw in enumerate(raws):
        client.async_infer(MODEL_NAME, [bid_request_input(raw)],
                           callback=lambda result, error, i=index: results.put((i, result, error)))
    ordered: list = [None] * len(raws)
    for _ in raws:
        index, result, error = results.get(timeout=60)
        ordered[index] = error if error is not None else result
    return ordered


def test_server_likelihoods_match_the_offline_scorer(server: TritonServer, trained_model: Path,
                                                     request_lines: list[bytes]) -> None:
    # Requests without ext.ts take their hour from the arrival clock, which differs between the two runs.
    lines = [line for line in request_lines if b'"ts":' in line][:200]
    model = load_model(trained_model)
    offline = list(verdicts(iter(lines), model, model.threshold))
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        served = infer_concurrently(client, lines)
    for expected, result in zip(offline, served, strict=True):
        likelihood = float(result.as_numpy("LIKELIHOOD")[0, 0])
        assert likelihood == pytest.approx(expected["likelihood"], abs=1e-5)
        assert bool(result.as_numpy("FILTERED")[0, 0]) == expected["filtered"]


def test_malformed_requests_fail_alone_inside_a_shared_batch(server: TritonServer,
                                                             request_lines: list[bytes]) -> None:
    good = request_lines[:60]
    raws: list[bytes] = []
    for i, line in enumerate(good):
        raws.append(line)
        if i % 15 == 0:
            raws.append(MALFORMED[i // 15][0])
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        before = client.get_inference_statistics(MODEL_NAME).model_stats[0]
        results = infer_concurrently(client, raws)
        after = client.get_inference_statistics(MODEL_NAME).model_stats[0]

    errors = [r for r in results if isinstance(r, InferenceServerException)]
    assert len(errors) == len(MALFORMED)
    for error, (_, message) in zip(errors, MALFORMED, strict=True):
        assert message in error.message()
        assert error.status() == "StatusCode.INVALID_ARGUMENT"
    scored = [r for r in results if not isinstance(r, InferenceServerException)]
    assert len(scored) == len(good)
    assert all(0.0 < float(r.as_numpy("LIKELIHOOD")[0, 0]) < 1.0 for r in scored)
    # Fewer executions than requests: the malformed ones shared batches with valid ones.
    executions = after.execution_count - before.execution_count
    assert executions < len(raws) / 4


def test_a_multi_row_request_fails_as_a_whole_naming_the_bad_row(server: TritonServer,
                                                                  request_lines: list[bytes]) -> None:
    rows = np.array([[request_lines[0]], [b'{"id": "x"}'], [request_lines[1]]], dtype=object)
    tensor = grpcclient.InferInput("BID_REQUEST", list(rows.shape), "BYTES")
    tensor.set_data_from_numpy(rows)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        with pytest.raises(InferenceServerException, match=r"BID_REQUEST\[1\]: missing required field 'imp'"):
            client.infer(MODEL_NAME, [tensor])
        valid = np.array([[request_lines[0]], [request_lines[1]]], dtype=object)
        tensor = grpcclient.InferInput("BID_REQUEST", list(valid.shape), "BYTES")
        tensor.set_data_from_numpy(valid)
        result = client.infer(MODEL_NAME, [tensor])
    assert result.as_numpy("LIKELIHOOD").shape == (2, 1)
    assert result.as_numpy("FILTERED").dtype == np.bool_


def test_served_config_is_the_documented_interface(server: TritonServer) -> None:
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        config = client.get_model_config(MODEL_NAME, as_json=True)["config"]
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("BID_REQUEST", "TYPE_STRING", ["1"])]
    assert [(o["name"], o["data_type"]) for o in config["output"]] == [
        ("LIKELIHOOD", "TYPE_FP32"), ("FILTERED", "TYPE_BOOL")]
    assert config["max_batch_size"] == 256
    threshold = json.loads((Path(server.repository) / MODEL_NAME / "1" / "metadata.json").read_text())["threshold"]
    assert float(config["parameters"]["threshold"]["string_value"]) == threshold


def test_triton_benchmark_measures_the_running_model(server: TritonServer) -> None:
    report = run_triton_benchmark(server.grpc_url, n=300, seed=3, concurrency=8)
    assert report["requests_per_s"] > 0
    assert 0 < report["latency_ms_p50"] <= report["latency_ms_p99"]
