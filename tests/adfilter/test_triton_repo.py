"""`fleet adfilter build-triton`: the model folder Triton loads, checked without starting a server."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.cli import main
from model_repository.triton_config import parse_config


def test_build_writes_config_code_and_artifacts(trained_model: Path, model_metadata: dict,
                                                tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["adfilter", "build-triton", "--model", str(trained_model),
                                       "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    model = tmp_path / "adfilter"
    assert sorted(p.name for p in (model / "1").iterdir()) == ["metadata.json", "model.pt", "model.py"]
    assert "import triton_python_backend_utils" in (model / "1" / "model.py").read_text()
    config = parse_config((model / "config.pbtxt").read_text())
    assert config.backend == "python"
    assert config.max_batch_size == 256
    assert 200 <= config.dynamic_batching.max_queue_delay_microseconds <= 500
    assert [(i.name, list(i.dims)) for i in config.input] == [("BID_REQUEST", [1])]
    assert [o.name for o in config.output] == ["LIKELIHOOD", "FILTERED"]
    assert float(config.parameters["threshold"].string_value) == model_metadata["threshold"]


def test_threshold_option_overrides_the_trained_threshold(trained_model: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["adfilter", "build-triton", "--model", str(trained_model),
                                       "--out", str(tmp_path), "--threshold", "0.25"])
    assert result.exit_code == 0, result.output
    config = parse_config((tmp_path / "adfilter" / "config.pbtxt").read_text())
    assert config.parameters["threshold"].string_value == "0.25"


def test_artifacts_for_another_feature_spec_are_refused(trained_model: Path, tmp_path: Path) -> None:
    stale = tmp_path / "stale"
    shutil.copytree(trained_model, stale)
    metadata = json.loads((stale / "metadata.json").read_text())
    (stale / "metadata.json").write_text(json.dumps({**metadata, "feature_spec_version": "adfilter-features/0"}))
    result = CliRunner().invoke(main, ["adfilter", "build-triton", "--model", str(stale),
                                       "--out", str(tmp_path / "repo")])
    assert result.exit_code != 0
    assert "retrain the model" in str(result.exception)
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("threshold", ["-0.1", "1.5"])
def test_thresholds_outside_zero_one_are_refused(trained_model: Path, tmp_path: Path, threshold: str) -> None:
    result = CliRunner().invoke(main, ["adfilter", "build-triton", "--model", str(trained_model),
                                       "--out", str(tmp_path), "--threshold", threshold])
    assert result.exit_code == 2
