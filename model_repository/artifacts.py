"""Canonical artifact bytes (TorchScript and torch.export), so that the same model always hashes the same.

`torch.jit.save` is almost deterministic: it embeds debug tables that carry the absolute path of the
source file, and a serialisation id that differs between processes. We drop the debug tables (TorchScript
loads without them) and derive the id from the content, with fixed zip timestamps.

TorchScript also names every compiled type after the process's history: the first `Linear` a process
compiles is `__torch__.torch.nn.modules.linear.Linear`, later ones are `...linear.___torch_mangle_<n>.Linear`
with `n` counted over every type the process compiled before (one global CompilationUnit). So the same model
saved after other models (or tests) were traced or scripted in that process would get other names and other
bytes. `canonicalize_zip` renames them as a fresh process would have: for each type name, the first type in
the archive's own order keeps the plain name, the next ones are mangled with numbers counted in the archive.

`torch.export.save` has the same serialisation id, and every graph node's metadata carries a stack trace
with the absolute path of the module's source: `write_canonical_export` drops the stack traces before
saving (they are debugging aids; `torch.export.load` does not need them) and fixes the id the same way.

The writers stream file to file (a 420 MB model is never held twice in memory) and return the sha256 and
size of what they wrote.
"""
from __future__ import annotations

import hashlib
import io
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

_FIXED_DATE = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1 << 20


def _keep(name: str) -> bool:
    return not name.endswith(".debug_pkl")


_MANGLE = re.compile(r"\.___torch_mangle_\d+(?=\.|$)")
_QUALIFIED = re.compile(r"__torch__(?:\.[A-Za-z_]\w*)+")
_PICKLE_GLOBAL = re.compile(rb"c(__torch__[\w.]*)\n(\w+)\n")
_DEFINITION = re.compile(r"^(?:class|def) ([A-Za-z_]\w*)\b", re.MULTILINE)


def _code_qualifier(name: str) -> str | None:
    """`archive/code/__torch__/a/b.py` -> `__torch__.a.b` (None for any other record)."""
    parts = name.split("/")
    if len(parts) < 4 or parts[1] != "code" or parts[2] != "__torch__" or not name.endswith(".py"):
        return None
    return ".".join(parts[2:])[: -len(".py")]


def _split_definitions(text: str, qualifier: str) -> list[tuple[str, str]]:
    """A TorchScript code file -> [(qualified name, source)] of its top-level classes and functions."""
    starts = [m.start() for m in _DEFINITION.finditer(text)]
    if not starts or starts[0] != 0:
        raise ValueError(f"unexpected TorchScript source layout in {qualifier}")
    ends = [*starts[1:], len(text)]
    return [(f"{qualifier}.{_DEFINITION.match(text, a).group(1)}", text[a:b])
            for a, b in zip(starts, ends, strict=True)]


def _replace_qualified(text: str, renames: dict[str, str]) -> str:
    def one(match: re.Match) -> str:
        parts = match.group(0).split(".")
        for end in range(len(parts), 1, -1):
            head = ".".join(parts[:end])
            if head in renames:
                return ".".join([renames[head], *parts[end:]])
        return match.group(0)
    return _QUALIFIED.sub(one, text)


def _demangle(texts: dict[str, bytes]) -> dict[str, bytes]:
    """Rename a TorchScript archive's types and functions independently of the saving process's history.

    `texts`: the archive's code files and pickles by record name. Returns the records to write instead:
    code files regrouped under the new names (one file per qualifier, as torch lays them out), pickles
    with their references rewritten. Definitions are ordered by first reference, walking from data.pkl.
    """
    definitions: dict[str, str] = {}
    for name, data in texts.items():
        qualifier = _code_qualifier(name)
        if qualifier is not None:
            definitions.update(_split_definitions(data.decode(), qualifier))
    if not definitions:
        return texts
    order: list[str] = []

    def visit(names: list[str]) -> None:
        for qualified in names:
            if qualified in definitions and qualified not in order:
                order.append(qualified)

    pickles = sorted(name for name in texts if name.endswith(".pkl"))
    for name in sorted(pickles, key=lambda n: not n.endswith("/data.pkl")):
        visit([f"{m.group(1).decode()}.{m.group(2).decode()}" for m in _PICKLE_GLOBAL.finditer(texts[name])])
    position = 0
    while position < len(order):  # breadth-first over the references in each definition's source
        source = definitions[order[position]]
        candidates = []
        for match in _QUALIFIED.finditer(source):
            parts = match.group(0).split(".")
            candidates.extend(".".join(parts[:end]) for end in range(len(parts), 1, -1))
        visit(candidates)
        position += 1
    visit(sorted(definitions, key=lambda q: (_MANGLE.sub("", q), definitions[q])))  # unreferenced, if any

    renames, seen, counter = {}, set(), 0
    for qualified in order:
        plain = _MANGLE.sub("", qualified)
        if plain not in seen:
            seen.add(plain)
            renames[qualified] = plain
        else:
            qualifier, short = plain.rsplit(".", 1)
            renames[qualified] = f"{qualifier}.___torch_mangle_{counter}.{short}"
            counter += 1

    prefix = next(name for name in texts if _code_qualifier(name) is not None).split("/code/")[0]
    files: dict[str, list[str]] = {}
    for qualified in order:
        qualifier = renames[qualified].rsplit(".", 1)[0]
        path = f"{prefix}/code/{qualifier.replace('.', '/')}.py"
        files.setdefault(path, []).append(_replace_qualified(definitions[qualified], renames))
    result = {path: "".join(blocks).encode() for path, blocks in files.items()}

    def global_ref(match: re.Match) -> bytes:
        qualified = f"{match.group(1).decode()}.{match.group(2).decode()}"
        qualifier, short = renames.get(qualified, qualified).rsplit(".", 1)
        return b"c" + qualifier.encode() + b"\n" + short.encode() + b"\n"

    for name in pickles:
        result[name] = _PICKLE_GLOBAL.sub(global_ref, texts[name])
    stale = {m.group(0) for data in result.values() for m in re.finditer(rb"___torch_mangle_\d+", data)}
    wanted = {m.group(0).encode() for new in renames.values() for m in re.finditer(r"___torch_mangle_\d+", new)}
    if not stale <= wanted:
        raise ValueError(f"TorchScript archive keeps references to renamed types: {sorted(stale - wanted)}")
    return result


def _is_text(name: str) -> bool:
    return _code_qualifier(name) is not None or name.endswith(".pkl")


def canonicalize_zip(raw: Path | io.BytesIO, target: Path | io.BytesIO) -> None:
    """Rewrite a torch archive with fixed timestamps, no debug tables, process-independent TorchScript
    type names and a content-derived id.

    Code files and pickles are small and rewritten in memory; tensor records are streamed.
    """
    with zipfile.ZipFile(raw) as source:
        kept = [info for info in source.infolist() if _keep(info.filename)]
        texts = _demangle({info.filename: source.read(info) for info in kept if _is_text(info.filename)})
        code = sorted(name for name in texts if _code_qualifier(name) is not None)
        records: list[tuple[str, zipfile.ZipInfo | None]] = []
        for info in kept:
            if _code_qualifier(info.filename) is not None:
                if code:  # all code files, in name order, where the first one was
                    records.extend((name, None) for name in code)
                    code = []
            else:
                records.append((info.filename, info))
        digest = hashlib.sha256()
        for name, info in records:
            if name.endswith("serialization_id"):
                continue
            digest.update(name.encode() + b"\0")
            if name in texts:
                digest.update(texts[name])
            else:
                with source.open(info) as member:
                    while chunk := member.read(_CHUNK):
                        digest.update(chunk)
        serialization_id = str(int(digest.hexdigest(), 16))[:40].zfill(40).encode()
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
            for name, info in records:
                record = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
                if name.endswith("serialization_id"):
                    out.writestr(record, serialization_id)
                elif name in texts:
                    out.writestr(record, texts[name])
                else:
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
