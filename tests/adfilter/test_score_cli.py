"""`fleet adfilter score` and `generate`: one verdict line per input line, in order, whatever the input."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from adfilter.features import MAX_REQUEST_BYTES
from adfilter.scoring import load_model, read_lines, verdicts
from fleet.cli import main

EDGE_CASES: list[tuple[bytes, str]] = [
    (b"", "empty line"),
    (b"   \t", "empty line"),
    (b"not json at all", "not valid JSON"),
    (b'{"id": "e1"}', "missing required field 'imp'"),
    (b'{"id": "e2", "imp": "banner"}', "imp must be an array, got string"),
    (b'{"id": "e3", "imp": [{"id": "1", "banner": {"w": "300"}}]}', "imp[0].banner.w must be an integer"),
    (b"[1, 2, 3]", "must be a JSON object, got array"),
    (b'{"id": "e4", "imp": [{"id": "1"}], "site": {"domain": "a"}, "app": {}}', "both site and app"),
    (b'"' + b"x" * (MAX_REQUEST_BYTES + 10) + b'"', f"more than the limit of {MAX_REQUEST_BYTES}"),
    (b"\xff\xfe\x00garbage", "not valid UTF-8"),
    (b"null", "got null"),
]


def run_score(model_dir: Path, stdin: bytes, *args: str) -> list[dict]:
    result = CliRunner().invoke(main, ["adfilter", "score", "--model", str(model_dir), *args], input=stdin)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_one_line_out_per_line_in_same_order_with_errors_in_place(
        trained_model: Path, request_lines: list[bytes], model_metadata: dict) -> None:
    good = request_lines[:40]
    lines = []
    for i, line in enumerate(good):
        lines.append(line)
        if i < len(EDGE_CASES):
            lines.append(EDGE_CASES[i][0])
    out = run_score(trained_model, b"\n".join(lines) + b"\n")
    assert len(out) == len(lines)
    good_out = [o for o in out if "likelihood" in o]
    assert [o["id"] for o in good_out] == [json.loads(line)["id"] for line in good]
    error_out = [o for o in out if "error" in o]
    assert len(error_out) == len(EDGE_CASES)
    for result, (_, message) in zip(error_out, EDGE_CASES, strict=True):
        assert message in result["error"]
    assert {o["id"] for o in error_out} == {None, "e1", "e2", "e3", "e4"}  # id when it could be read
    for o in good_out:
        assert 0.0 < o["likelihood"] < 1.0
        assert o["filtered"] == (o["likelihood"] < model_metadata["threshold"])


def test_threshold_option_decides_what_is_filtered(trained_model: Path, request_lines: list[bytes]) -> None:
    stdin = b"\n".join(request_lines[:50])
    assert all(o["filtered"] for o in run_score(trained_model, stdin, "--threshold", "1.0"))
    assert not any(o["filtered"] for o in run_score(trained_model, stdin, "--threshold", "0.0"))


def test_a_request_scores_the_same_alone_or_in_any_batch(trained_model: Path,
                                                          request_lines: list[bytes]) -> None:
    model = load_model(trained_model)
    batched = list(verdicts(iter(request_lines), model, 0.5, batch_size=64))
    alone = [next(verdicts(iter([line]), model, 0.5)) for line in request_lines[:20]]
    for a, b in zip(alone, batched, strict=False):
        assert a["likelihood"] == pytest.approx(b["likelihood"], abs=1e-6)


def test_read_lines_skips_an_oversize_line_without_losing_its_neighbours() -> None:
    huge = b"y" * (3 * MAX_REQUEST_BYTES)
    lines = list(read_lines(io.BytesIO(b"first\r\n" + huge + b"\nlast")))
    assert lines[0] == b"first" and lines[2] == b"last"
    assert f"request is {len(huge)} bytes" in str(lines[1])


def test_scorer_process_survives_hostile_input_on_a_real_pipe(trained_model: Path,
                                                               request_lines: list[bytes]) -> None:
    hostile = [b"\x00" * 10, b"{" * 5000, b'{"id": "h", "imp": [' + b"[" * 20000 + b"]" * 20000 + b"]}",
               b"x" * (5 * MAX_REQUEST_BYTES), b'{"id":"u\\ud800","imp":[{"id":"1"}]}']
    lines = [*request_lines[:100], *hostile, *request_lines[100:200]]
    fleet = Path(sys.executable).with_name("fleet")  # the installed console script, as users run it
    done = subprocess.run([str(fleet), "adfilter", "score", "--model", str(trained_model)],
                          input=b"\n".join(lines), capture_output=True, timeout=120, check=True)
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(out) == len(lines)
    assert all("likelihood" in o for o in out[:100] + out[105:])
    assert [("error" in o) for o in out[100:105]] == [True, True, True, True, False]
    assert out[104]["id"] == "u\ud800"


def test_generate_prints_reproducible_valid_requests(trained_model: Path) -> None:
    first = CliRunner().invoke(main, ["adfilter", "generate", "--n", "30", "--seed", "2"])
    again = CliRunner().invoke(main, ["adfilter", "generate", "--n", "30", "--seed", "2"])
    assert first.exit_code == 0 and first.stdout == again.stdout
    assert len(first.stdout.splitlines()) == 30
    scored = run_score(trained_model, first.stdout.encode())
    assert all("likelihood" in o for o in scored)
