"""A member's weights as one flat, memory-mapped file (safetensors), written at registration, mapped by the
pack runtime.

Why safetensors: its header is plain JSON (names, dtypes, shapes, offsets) and its data one flat buffer, so
reading it runs no code (unlike a pickle) and `safe_open` maps it instead of copying: a member's load is a
few milliseconds of header parsing; its pages come in from the page cache as its first forward touches
them, and several stubs mapping one file share those pages.

Two details make the mapped tensors answer *bit-identically* to the artifact they came from (measured with
torch 2.13 on CPU, BERT-shaped members; docs/data-plane.md):
- every tensor starts on a 64-byte boundary (`ALIGNMENT`). The safetensors format packs tensors back to
  back, and a matmul over weights at an address that is not 64-byte aligned took another kernel path and
  differed in the last bit for some batch sizes. The format allows no holes between tensors, so the gaps
  are filled by small padding tensors named `__pad__.N`, which readers skip;
- a parameter is handed to the program as an `nn.Parameter` with the artifact's own `requires_grad`:
  TorchScript's profiling executor and some eager kernels choose their path by it, and plain tensors gave
  outputs that differed in the last bit.

This file is copied into every pack next to model.py (and imported by the registration side from here): it
imports only torch and safetensors.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

ALIGNMENT = 64
PAD_PREFIX = "__pad__."
METADATA_KEY = "__metadata__"
# torch dtype name -> safetensors dtype code
DTYPE_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64",
               "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
               "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "complex64": "C64"}
DTYPE_NAMES = {code: name for name, code in DTYPE_CODES.items()}
# Bytes per element, so that a table's size needs no torch (the control plane's web process has none).
ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4, "int16": 2,
                 "int8": 1, "uint8": 1, "bool": 1, "float8_e4m3fn": 1, "float8_e5m2": 1, "complex64": 8}
_CHUNK = 1 << 20


class WeightsError(ValueError):
    """A weights file that is unreadable, truncated or does not match its architecture; says which."""


def dtype_name(tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def write_weights(path: Path, tensors: list[tuple[str, object]], metadata: dict[str, str] | None = None
                  ) -> tuple[str, int]:
    """Write (name, tensor) pairs as a safetensors file with every tensor 64-byte aligned; returns the
    file's (sha256, bytes). Tensors must be dense and contiguous (the splitter refuses others)."""
    import torch

    header: dict[str, dict] = {}
    layout: list[object] = []  # bytes (padding) or tensors, in file order
    offset, pads = 0, 0
    for name, tensor in tensors:
        if name.startswith(PAD_PREFIX) or name == METADATA_KEY:
            raise WeightsError(f"tensor name '{name}' is reserved")
        if dtype_name(tensor) not in DTYPE_CODES:
            raise WeightsError(f"tensor '{name}' has dtype {dtype_name(tensor)}, which safetensors cannot hold")
        if offset % ALIGNMENT:
            gap = ALIGNMENT - offset % ALIGNMENT
            header[f"{PAD_PREFIX}{pads}"] = {"dtype": "U8", "shape": [gap], "data_offsets": [offset, offset + gap]}
            layout.append(bytes(gap))
            pads += 1
            offset += gap
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": DTYPE_CODES[dtype_name(tensor)], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        layout.append(tensor.detach().to("cpu").contiguous())
        offset += size
    if metadata:
        header[METADATA_KEY] = dict(metadata)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % ALIGNMENT)  # JSON may end in blanks: the data starts aligned too
    digest = hashlib.sha256()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        for block in (struct.pack("<Q", len(text)), text):
            digest.update(block)
            handle.write(block)
        for item in layout:
            if isinstance(item, bytes):
                data = memoryview(item)
            elif item.numel() == 0:
                continue
            else:  # a byte view of the tensor's own memory: no copy
                data = memoryview(item.reshape(-1).view(torch.uint8).numpy())
            for start in range(0, len(data), _CHUNK):
                block = data[start:start + _CHUNK]
                digest.update(block)
                handle.write(block)
    size = tmp.stat().st_size
    os.replace(tmp, path)
    return digest.hexdigest(), size


def read_header(path: Path) -> dict:
    """The safetensors header of a file (no tensor data read, no code run); WeightsError if malformed."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                raise WeightsError(f"{path.name} has {size} bytes: too short for a safetensors header")
            (length,) = struct.unpack("<Q", raw)
            if length > min(size - 8, 100 * 2**20):
                raise WeightsError(f"{path.name} declares a {length}-byte header in a {size}-byte file: it is not "
                                   "a safetensors file or it is truncated")
            header = json.loads(handle.read(length))
    except OSError as error:
        raise WeightsError(f"{path.name} cannot be read ({error.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"{path.name}'s safetensors header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path.name}'s safetensors header is not a JSON object")
    end = max((entry["data_offsets"][1] for key, entry in header.items() if key != METADATA_KEY
               and isinstance(entry, dict) and len(entry.get("data_offsets", ())) == 2), default=0)
    if 8 + length + end != size:
        raise WeightsError(f"{path.name} has {size} bytes but its header describes {8 + length + end}: the file is "
                           "truncated or has trailing bytes")
    return header


def table(header: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (torch dtype name, shape) of the real tensors in a header (padding and metadata left out)."""
    out = {}
    for name, entry in header.items():
        if name == METADATA_KEY or name.startswith(PAD_PREFIX):
            continue
        try:
            out[name] = (DTYPE_NAMES[entry["dtype"]], tuple(int(d) for d in entry["shape"]))
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"tensor '{name}' has an unknown dtype or a malformed entry: {entry}") from None
    return out


def differences(found: dict[str, tuple[str, tuple[int, ...]]], spec: list[dict], limit: int = 8) -> list[str]:
    """What differs between a weights file's tensors and an architecture's table (empty: they match).

    `spec` entries: {"name", "dtype", "shape", ...}, the architecture's tensors in program order.
    """
    wanted = {s["name"]: (s["dtype"], tuple(s["shape"])) for s in spec}
    problems = []
    missing = [n for n in wanted if n not in found]
    extra = [n for n in found if n not in wanted]
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:limit])}"
                        + (" ..." if len(missing) > limit else ""))
    if extra:
        problems.append(f"{len(extra)} tensor(s) the architecture does not have: {', '.join(extra[:limit])}"
                        + (" ..." if len(extra) > limit else ""))
    for name, (dtype, shape) in wanted.items():
        if name not in found:
            continue
        got_dtype, got_shape = found[name]
        if got_shape != shape:
            problems.append(f"'{name}' has shape {list(got_shape)}, the architecture has {list(shape)}")
        if got_dtype != dtype:
            problems.append(f"'{name}' is {got_dtype}, the architecture has {dtype}")
    return problems[:limit * 2]


def tensor_bytes_of(spec: list[dict]) -> int:
    """Bytes of an architecture's weights, from its table alone (no torch needed)."""
    total = 0
    for entry in spec:
        count = 1
        for d in entry["shape"]:
            count *= int(d)
        total += count * ELEMENT_BYTES[entry["dtype"]]
    return total


def map_weights(path: Path, spec: list[dict]) -> dict[str, object]:
    """The member's tensors, memory-mapped from its weights file (no copy), as its architecture names them.

    Parameters come back as `nn.Parameter` with the artifact's own `requires_grad` (see the module note);
    buffers as plain tensors. Raises WeightsError naming what is wrong (truncated, not matching).
    """
    import torch
    from safetensors import SafetensorError, safe_open

    header = read_header(path)  # checks the size first: a truncated file is named as such
    problems = differences(table(header), spec)
    if problems:
        raise WeightsError(f"{Path(path).name} does not match its architecture: " + "; ".join(problems))
    tensors = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for entry in spec:
                tensor = handle.get_tensor(entry["name"])
                if entry.get("kind", "parameter") == "parameter":
                    tensor = torch.nn.Parameter(tensor, requires_grad=bool(entry.get("requires_grad", True))
                                                and tensor.is_floating_point())
                tensors[entry["name"]] = tensor
    except (SafetensorError, OSError, RuntimeError) as error:
        raise WeightsError(f"{Path(path).name} cannot be mapped ({str(error).splitlines()[0][:200]})") from None
    return tensors


def to_device(tensors: dict[str, object], device: str) -> dict[str, object]:
    """Copies of mapped host tensors on `device`, through pinned host memory on a GPU.

    A copy from pageable (mapped) memory makes the CUDA driver stage it through a pinned bounce buffer of its
    own, one chunk at a time; copying into one pinned buffer first and from there asynchronously lets the
    host->device transfer run at full bandwidth. Runs in the loader thread: the copies release the GIL.
    """
    import torch

    if not str(device).startswith("cuda"):
        return {name: _like(tensor, tensor.to(device)) for name, tensor in tensors.items()}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    staging = torch.empty(total, dtype=torch.uint8, pin_memory=True)
    out, offset = {}, 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        window = staging[offset:offset + size].view(tensor.dtype).view(tensor.shape)
        window.copy_(tensor.detach())
        out[name] = _like(tensor, window.to(device, non_blocking=True))
        offset += size
    torch.cuda.synchronize(device)
    return out


def _like(original, moved):
    """`moved` as a Parameter (with the same requires_grad) where `original` was one."""
    import torch

    if isinstance(original, torch.nn.Parameter):
        return torch.nn.Parameter(moved.detach(), requires_grad=original.requires_grad)
    return moved
