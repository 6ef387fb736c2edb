"""Small artifacts for registration tests: good models in both formats, every dtype, and bad inputs.

Each builder writes a real file with the real torch savers (or, for the bad ones, exactly the bytes an
attacker or a broken client would send) and returns its path.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import torch

from model_repository.formats import DTYPES, INTEGER_DTYPES

DTYPE_RANGES = {"INT64": (0, 1000), "INT32": (-5, 5), "INT8": (-100, 100), "UINT8": (0, 256)}


class Linear(torch.nn.Module):
    def __init__(self, features: int = 4, classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.layer = torch.nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def linear_signature(features: int = 4, classes: int = 3) -> dict:
    return {"inputs": [{"name": "INPUT__0", "dtype": "FP32", "shape": [-1, features]}],
            "outputs": [{"name": "OUTPUT__0", "dtype": "FP32", "shape": [-1, classes]}]}


def save(module: torch.nn.Module, example: tuple, path: Path, fmt: str) -> Path:
    """Save as TorchScript (.pt) or as a torch.export program with a dynamic batch (.pt2)."""
    module = module.eval()
    if fmt == "torch_export":
        batch = torch.export.Dim("batch", max=1024)
        exported = torch.export.export(module, example, dynamic_shapes=tuple({0: batch} for _ in example))
        torch.export.save(exported, str(path))
    else:
        torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(path))
    return path


def linear(path: Path, fmt: str = "torchscript", features: int = 4, classes: int = 3, seed: int = 0) -> Path:
    return save(Linear(features, classes, seed), (torch.randn(2, features),), path, fmt)


class AllDTypes(torch.nn.Module):
    """One input and one output of every Triton dtype, each output the same dtype as its input."""

    def forward(self, x0, x1, x2, x3, x4, x5, x6, x7):
        return (x0 * 2, x1 + 1, x2 * 2, x3 + 1, x4 - 1, x5 // 2, x6 // 2, torch.logical_not(x7))


def all_dtypes_signature() -> dict:
    def spec(kind: str, k: int, dtype: str) -> dict:
        tensor = {"name": f"{kind}__{k}", "dtype": dtype, "shape": [-1, 3]}
        if kind == "INPUT" and dtype in INTEGER_DTYPES:
            tensor["value_range"] = list(DTYPE_RANGES[dtype])
        return tensor
    return {"inputs": [spec("INPUT", k, d) for k, d in enumerate(DTYPES)],
            "outputs": [spec("OUTPUT", k, d) for k, d in enumerate(DTYPES)]}


def all_dtypes(path: Path, fmt: str = "torchscript") -> Path:
    from model_repository.formats import TORCH_DTYPES

    example = []
    for dtype in DTYPES:
        torch_dtype = getattr(torch, TORCH_DTYPES[dtype])
        if dtype == "BOOL":
            example.append(torch.ones(2, 3, dtype=torch.bool))
        elif dtype in INTEGER_DTYPES:
            example.append(torch.ones(2, 3, dtype=torch_dtype))
        else:
            example.append(torch.randn(2, 3).to(torch_dtype))
    return save(AllDTypes(), tuple(example), path, fmt)


class Hang(torch.nn.Module):
    """Never returns: the counter's loop condition stays true for longer than any timeout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = 0
        while i >= 0:
            i = i + 1
        return x


class Allocate(torch.nn.Module):
    """Asks for 64 GiB per call: more than any validator's memory limit (and than this machine)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros([x.shape[0], 8589934592]).sum(1, keepdim=True).expand(x.shape[0], 3)


def scripted(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path))
    return path


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def pickle_payload(marker: Path) -> bytes:
    """A torch.save file whose unpickling runs `touch marker`."""
    buffer = io.BytesIO()
    torch.save({"weight": _RunsCode(marker)}, buffer)
    return buffer.getvalue()


def torch_save_exploit(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle_payload(marker))
    return path


def pt2_with_exploit(path: Path, marker: Path) -> Path:
    """A real .pt2 whose first weight is swapped for a pickle that runs code. torch.export.load in torch
    2.13 reads pickled weights with weights_only=False, so a plain load of this file runs the payload."""
    good = linear(path.with_name(path.stem + "-good.pt2"), "torch_export")
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        config_name = next(n for n in source.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(source.read(config_name))
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        weight_name = config_name.rsplit("/", 1)[0] + "/" + first["path_name"]
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == config_name:
                data = json.dumps(config).encode()
            elif info.filename == weight_name:
                data = pickle_payload(marker)
            target.writestr(info, data)
    return path


def zip_bomb(path: Path, uncompressed: int = 256 * 2**20) -> Path:
    """Named like a TorchScript archive, but one member inflates to `uncompressed` bytes of zeros."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("model/code/__torch__.py", "")
        archive.writestr("model/constants.pkl", b"")
        with archive.open("model/data/0", "w", force_zip64=True) as member:
            chunk = bytes(2**20)
            for _ in range(uncompressed // len(chunk)):
                member.write(chunk)
    return path


def truncated(source: Path, path: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def aoti_like(path: Path) -> Path:
    """Laid out like an AOTInductor package (torch._inductor.aoti_compile_and_package): a compiled shared
    library that would run native code when loaded. Never an accepted upload."""
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("archive_format", "archive_version", "byteorder", "data/aotinductor/model/m.wrapper.so",
                     "data/aotinductor/model/m.wrapper.cpp"):
            archive.writestr(f"m/{name}", b"pt2" if name == "archive_format" else b"\0")
    return path


def plain_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("README.txt", "not a model")
    return path
