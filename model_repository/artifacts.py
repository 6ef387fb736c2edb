"""Canonical artifact bytes (TorchScript and torch.export), so that the same model always hashes the same.

`torch.jit.save` is almost deterministic: it embeds debug tables that carry the absolute path of the
source file, and a serialisation id that differs between processes. We drop the debug tables (TorchScript
loads without them) and derive the id from the content, with fixed zip timestamps.

`torch.export.save` has the same serialisation id, and every graph node's metadata carries a stack trace
with the absolute path of the module's source: `write_canonical_export` drops the stack traces before
saving (they are debugging aids; `torch.export.load` does not need them) and fixes the id the same way.

The writers stream file to file (a 420 MB model is never held twice in memory) and return the sha256 and
size of what they wrote.
"""
from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

_FIXED_DATE = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1 << 20


def _keep(name: str) -> bool:
    return not name.endswith(".debug_pkl")


def _content_id(source: zipfile.ZipFile) -> bytes:
    """A 40-digit serialisation id derived from every record's name and bytes (except the id itself)."""
    digest = hashlib.sha256()
    for info in source.infolist():
        if not _keep(info.filename) or info.filename.endswith("serialization_id"):
            continue
        digest.update(info.filename.encode() + b"\0")
        with source.open(info) as member:
            while chunk := member.read(_CHUNK):
                digest.update(chunk)
    return str(int(digest.hexdigest(), 16))[:40].zfill(40).encode()


def canonicalize_zip(raw: Path | io.BytesIO, target: Path | io.BytesIO) -> None:
    """Rewrite a torch archive with fixed timestamps, no debug tables and a content-derived id."""
    with zipfile.ZipFile(raw) as source:
        serialization_id = _content_id(source)
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
            for info in source.infolist():
                if not _keep(info.filename):
                    continue
                record = zipfile.ZipInfo(info.filename, date_time=_FIXED_DATE)
                if info.filename.endswith("serialization_id"):
                    out.writestr(record, serialization_id)
                    continue
                record.file_size = info.file_size
                with source.open(info) as member, out.open(record, "w") as sink:
                    shutil.copyfileobj(member, sink, _CHUNK)


def canonical_torchscript(module: torch.jit.ScriptModule) -> bytes:
    raw, out = io.BytesIO(), io.BytesIO()
    torch.jit.save(module, raw)
    raw.seek(0)
    canonicalize_zip(raw, out)
    return out.getvalue()


def _write_via_temp(path: Path, save) -> tuple[str, int]:
    """Save through a temporary raw file next to `path`, canonicalise into `path`, return (sha256, bytes).

    The raw file is always named `archive.*`: torch names the archive's top folder after the file, and a
    random temporary name would end up in every record's name.
    """
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".raw-") as folder:
        raw = Path(folder) / ("archive" + path.suffix)
        try:
            save(raw)
            canonicalize_zip(raw, tmp)
            sha, size = file_sha256(tmp)
            tmp.replace(path)
            return sha, size
        finally:
            tmp.unlink(missing_ok=True)


def write_canonical_torchscript(module: torch.jit.ScriptModule, path: Path) -> tuple[str, int]:
    return _write_via_temp(path, lambda raw: torch.jit.save(module, str(raw)))


def write_canonical_export(program: torch.export.ExportedProgram, path: Path) -> tuple[str, int]:
    for module in program.graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                node.meta.pop("stack_trace", None)
    return _write_via_temp(path, lambda raw: torch.export.save(program, str(raw)))


def file_sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
