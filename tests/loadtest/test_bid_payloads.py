"""The load generator's copy of the adfilter contract matches the model builder's, and requests vary."""
from __future__ import annotations

import json

import numpy as np

from adfilter import triton_repo
from loadtest import bid_payloads


def test_tensor_names_match_the_triton_model() -> None:
    assert bid_payloads.MODEL_NAME == triton_repo.MODEL_NAME
    assert bid_payloads.INPUT_NAME == triton_repo.INPUT_NAME
    assert bid_payloads.LIKELIHOOD_NAME == triton_repo.LIKELIHOOD_NAME
    assert bid_payloads.FILTERED_NAME == triton_repo.FILTERED_NAME


def test_bodies_are_varied_openrtb_json_sent_as_one_bytes_row() -> None:
    bodies = bid_payloads.bid_request_bodies(200, seed=4)
    assert bodies == bid_payloads.bid_request_bodies(200, seed=4)
    requests = [json.loads(b) for b in bodies]
    assert len({r["id"] for r in requests}) == 200
    assert {"site", "app"} <= {k for r in requests for k in r}
    assert len({len(b) for b in bodies}) > 50
    tensor = bid_payloads.bid_input(bodies[0])
    assert tensor.shape() == [1, 1] and tensor.datatype() == "BYTES"
    # BYTES tensors are length-prefixed (4 bytes, little endian) then raw.
    content = tensor._get_content()
    assert int(np.frombuffer(content[:4], dtype="<u4")[0]) == len(bodies[0]) and content[4:] == bodies[0]
