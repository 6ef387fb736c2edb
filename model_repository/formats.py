"""Artifact formats and tensor types: the one vocabulary the generator, packs, validator and API share.

Why a module of its own: the control plane (validation, registry), the repository builder and the
generator must agree on what a format is called, which file suffix it gets in a pack and which Triton
dtypes exist; the pack runtime (triton/backends/pack/model.py) keeps its own copy of the dtype table
because it is copied verbatim into every pack and may import only torch, numpy and Triton's utils.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal

ArtifactFormat = Literal["torchscript", "torch_export"]
FORMATS: tuple[ArtifactFormat, ...] = ("torchscript", "torch_export")
# File name suffix of a member artifact in a pack, by format.
SUFFIX: dict[ArtifactFormat, str] = {"torchscript": ".pt", "torch_export": ".pt2"}

# Triton's dtype names (KServe v2 datatypes) that signatures, configs and the pack runtime accept.
TritonDType = Literal["FP32", "FP16", "BF16", "INT64", "INT32", "INT8", "UINT8", "BOOL"]
DTYPES: tuple[TritonDType, ...] = ("FP32", "FP16", "BF16", "INT64", "INT32", "INT8", "UINT8", "BOOL")
# torch dtype attribute names; BF16 has no numpy dtype (the runtime moves it through DLPack).
TORCH_DTYPES: dict[str, str] = {"FP32": "float32", "FP16": "float16", "BF16": "bfloat16", "INT64": "int64",
                                "INT32": "int32", "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}
INTEGER_DTYPES = frozenset({"INT64", "INT32", "INT8", "UINT8"})
FLOAT_DTYPES = frozenset({"FP32", "FP16", "BF16"})

HOW_TO_PRODUCE = ("accepted formats: TorchScript (torch.jit.save(torch.jit.trace(model, example), path)) or a "
                  "torch.export ExportedProgram (torch.export.save(torch.export.export(model, example, "
                  "dynamic_shapes=...), 'model.pt2'))")


class UnknownFormat(ValueError):
    """The file is not an archive of an accepted format; the message says which formats are accepted."""


def detect_format(path: Path) -> ArtifactFormat:
    """Tell the format from the archive's member names without loading (or unpickling) anything.

    Both formats are zip archives under one top-level folder: torch.export.save writes `archive_format`
    and `models/`; torch.jit.save writes `code/` and `constants.pkl`. A plain torch.save state dict has
    neither and is refused (a state dict is weights without the program that runs them).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise UnknownFormat(f"the artifact is not a zip archive ({error}); {HOW_TO_PRODUCE}") from None
    tails = {name.split("/", 1)[1] if "/" in name else name for name in names}
    if "archive_format" in tails and any(t.startswith("models/") for t in tails):
        return "torch_export"
    if "constants.pkl" in tails and any(t.startswith("code/") for t in tails):
        return "torchscript"
    if "data.pkl" in tails:
        raise UnknownFormat("the artifact is a torch.save checkpoint (weights without a program); "
                            + HOW_TO_PRODUCE)
    raise UnknownFormat("the artifact is a zip archive but neither TorchScript nor torch.export; "
                        + HOW_TO_PRODUCE)
