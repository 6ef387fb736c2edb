"""Canonical TorchScript bytes, so that the same model always hashes to the same sha256.

`torch.jit.save` is almost deterministic: it embeds debug tables that carry the absolute path of the
source file, and a serialisation id that differs between processes. We drop the debug tables (TorchScript
loads without them) and derive the id from the content, with fixed zip timestamps.
"""
from __future__ import annotations

import hashlib
import io
import zipfile

import torch

_FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def canonical_torchscript(module: torch.jit.ScriptModule) -> bytes:
    raw = io.BytesIO()
    torch.jit.save(module, raw)
    source = zipfile.ZipFile(io.BytesIO(raw.getvalue()))
    records = [(i.filename, source.read(i.filename)) for i in source.infolist()
               if not i.filename.endswith(".debug_pkl")]
    content_hash = hashlib.sha256()
    for name, data in records:
        if not name.endswith("serialization_id"):
            content_hash.update(name.encode() + b"\0" + data)
    serialization_id = str(int(content_hash.hexdigest(), 16))[:40].zfill(40).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for name, data in records:
            if name.endswith("serialization_id"):
                data = serialization_id
            target.writestr(zipfile.ZipInfo(name, date_time=_FIXED_DATE), data)
    return out.getvalue()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
