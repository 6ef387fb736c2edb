"""The manifest: the one description of every user model that packs, servers and clients share."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from model_repository.formats import ArtifactFormat, TritonDType

Architecture = Literal["mlp", "cnn", "text"]
TensorDType = TritonDType
MANIFEST_NAME = "manifest.json"

# The numpy dtype a client builds for each Triton dtype. numpy has no bfloat16: tritonclient sends BF16
# tensors from float32 arrays (it truncates them to bfloat16 on the wire), so BF16 maps to float32 here.
NUMPY_DTYPES = {"FP32": "float32", "FP16": "float16", "BF16": "float32", "INT64": "int64", "INT32": "int32",
                "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


class TensorSpec(BaseModel):
    """A named tensor; shape includes the batch dimension as -1."""

    model_config = ConfigDict(extra="forbid")
    name: str
    dtype: TensorDType
    shape: list[int]
    value_range: tuple[int, int] | None = Field(
        default=None, description="half-open [low, high) for integer inputs such as token ids")


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    architecture: Architecture | Literal["bert", "resnet", "custom"]
    file: str = Field(description="artifact path relative to the manifest's directory")
    format: ArtifactFormat = Field("torchscript", description="torchscript (.pt) or torch_export (.pt2)")
    sha256: str
    bytes: int
    parameters: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal[1] = 1
    seed: int
    models: list[ModelEntry]

    def by_id(self) -> dict[str, ModelEntry]:
        return {m.id: m for m in self.models}

    def dumps(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=True) + "\n"

    def write(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.dumps())
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        return cls.model_validate_json((Path(directory) / MANIFEST_NAME).read_text())
