"""Does another torch load the artifacts this torch saved, and compute the same outputs?

Why: TorchScript and torch.export archives are not promised to load in an older torch, and the inf2 image
runs the torch that torch-neuronx pins (triton/docker/Dockerfile.inf2), older than the torch that saves the
artifacts (pyproject's [torch] extra). `fleet compile --family inf2` loads each source artifact with the
image's torch before tracing it, so this is the question that decides whether it can. Two steps, each run
with the torch in question (this file imports nothing but torch and numpy, so any venv with those runs it):

    python -m model_repository.torch_compat record MODELS_DIR reference.npz   # the torch that saved them
    python -m model_repository.torch_compat check  MODELS_DIR reference.npz   # e.g. the inf2 image's torch

MODELS_DIR holds manifest.json (`fleet generate`). `record` loads every model, runs it on seeded inputs and
stores inputs and outputs; `check` loads every model with its own torch, runs the stored inputs and compares.
Each prints one JSON line per model and a summary; `check` exits 1 if any model fails to load or differs.
Results measured here are in docs/eks.md ("Inferentia2: which torch saves, which loads").
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

TORCH_DTYPES = {"FP32": torch.float32, "FP16": torch.float16, "BF16": torch.bfloat16, "INT64": torch.int64,
                "INT32": torch.int32, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
BATCH = 2


def load(path: Path, fmt: str):
    """The module, loaded as the pack runtime and `fleet compile` load it."""
    if fmt == "torch_export":
        return torch.export.load(str(path)).module()
    return torch.jit.load(str(path), map_location="cpu").eval()


def example_inputs(spec: list[dict], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for item in spec:
        shape = [BATCH] + [d if d > 0 else 8 for d in item["shape"][1:]]
        dtype = TORCH_DTYPES[item["dtype"]]
        if item["dtype"] == "BOOL":
            tensors.append(torch.randint(0, 2, shape, generator=generator).to(torch.bool))
        elif not dtype.is_floating_point:
            low, high = item.get("value_range") or (0, 2)
            tensors.append(torch.randint(int(low), int(high), shape, generator=generator, dtype=dtype))
        else:
            tensors.append(torch.randn(shape, generator=generator).to(dtype))
    return tensors


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    # numpy has no bfloat16; float32 holds every bfloat16 value exactly
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).detach().numpy()


def _outputs(module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.inference_mode():
        result = module(*inputs)
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:400]


def _models(models_dir: Path) -> list[dict]:
    return json.loads((models_dir / "manifest.json").read_text())["models"]


def record(models_dir: Path, reference: Path) -> int:
    arrays: dict[str, np.ndarray] = {}
    for index, model in enumerate(_models(models_dir)):
        inputs = example_inputs(model["inputs"], seed=index)
        outputs = _outputs(load(models_dir / model["file"], model["format"]), inputs)
        for i, tensor in enumerate(inputs):
            arrays[f"{model['id']}/in/{i}"] = _as_numpy(tensor)
        for i, tensor in enumerate(outputs):
            arrays[f"{model['id']}/out/{i}"] = _as_numpy(tensor)
        print(json.dumps({"model": model["id"], "format": model["format"], "recorded": True}))
    np.savez(reference, torch_version=np.array(torch.__version__), **arrays)
    print(json.dumps({"summary": "recorded", "torch": torch.__version__, "models": len(_models(models_dir))}))
    return 0


def check(models_dir: Path, reference: Path) -> int:
    stored = np.load(reference)
    saved_by = str(stored["torch_version"])
    failures = 0
    for model in _models(models_dir):
        row = {"model": model["id"], "format": model["format"], "saved_by": saved_by, "loaded_by": torch.__version__}
        try:
            module = load(models_dir / model["file"], model["format"])
        except Exception as error:  # noqa: BLE001 - the point is to report any failure to load
            failures += 1
            print(json.dumps({**row, "loads": False, "error": _first_line(error)}))
            continue
        inputs = []
        for i, item in enumerate(model["inputs"]):
            inputs.append(torch.from_numpy(stored[f"{model['id']}/in/{i}"]).to(TORCH_DTYPES[item["dtype"]]))
        try:
            outputs = _outputs(module, inputs)
        except Exception as error:  # noqa: BLE001
            failures += 1
            print(json.dumps({**row, "loads": True, "runs": False, "error": _first_line(error)}))
            continue
        worst = 0.0
        same = True
        for i, tensor in enumerate(outputs):
            expected = stored[f"{model['id']}/out/{i}"]
            actual = _as_numpy(tensor)
            worst = max(worst, float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)))))
            same &= bool(np.allclose(actual, expected, atol=TOLERANCE.get(tensor.dtype, 0), rtol=1e-3))
        failures += not same
        print(json.dumps({**row, "loads": True, "runs": True, "same_outputs": same, "max_abs_diff": worst}))
    print(json.dumps({"summary": "checked", "saved_by": saved_by, "loaded_by": torch.__version__,
                      "models": len(_models(models_dir)), "failures": failures}))
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["record", "check"])
    parser.add_argument("models_dir", type=Path, help="folder with manifest.json (fleet generate)")
    parser.add_argument("reference", type=Path, help="the .npz that `record` writes and `check` reads")
    args = parser.parse_args(argv)
    return (record if args.step == "record" else check)(args.models_dir, args.reference)


if __name__ == "__main__":
    sys.exit(main())
