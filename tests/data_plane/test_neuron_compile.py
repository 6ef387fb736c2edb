"""`fleet compile --family inf2`: what it records, what it skips, and a member its torch cannot load.

torch_neuronx exists only in the inf2 image, so these tests give `compile_repository` a stand-in tracer
(torch.jit.trace on CPU): the bookkeeping around the tracer is real and checked; Neuron tracing is not
(docs/eks.md says what was and was not run).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model_repository.generator import generate
from model_repository.neuron_compile import compile_repository
from model_repository.packing import build_repository


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    generate(4, tmp_path / "models", seed=3, workers=1)
    build_repository(tmp_path / "models", tmp_path / "repo", pack_size=10)
    return tmp_path / "repo"


def _members(repository: Path) -> dict[str, tuple[Path, dict]]:
    found = {}
    for members_file in repository.glob("*/1/members.json"):
        for ident, entry in json.loads(members_file.read_text())["members"].items():
            found[ident] = (members_file.parent, entry)
    return found


class CountingTrace:
    def __init__(self):
        self.calls = 0

    def __call__(self, module, example):
        self.calls += 1
        return torch.jit.trace(module, example, check_trace=False)


def test_each_member_gets_an_inf2_artifact_made_from_its_source(repository: Path):
    trace = CountingTrace()
    report = compile_repository(repository, static_batch=4, trace=trace)
    members = _members(repository)
    assert sorted(report.compiled) == sorted(members) and not report.failed and trace.calls == len(members)
    for version_dir, entry in members.values():
        artifact = entry["artifacts"]["inf2"]
        assert artifact["static_batch"] == 4 and artifact["source_sha256"] == entry["sha256"]
        assert artifact["torch"] == torch.__version__
        compiled = torch.jit.load(str(version_dir / artifact["path"]))
        source = torch.jit.load(str(version_dir / entry["file"]))
        spec = entry["inputs"][0]
        shape = [4] + [d if d > 0 else 8 for d in spec["shape"][1:]]
        x = torch.randint(0, 2, shape) if spec["dtype"] == "INT64" else torch.randn(shape)
        assert torch.allclose(compiled(x), source(x))


def test_a_second_run_skips_what_is_compiled_and_recompiles_at_a_new_batch(repository: Path):
    compile_repository(repository, static_batch=4, trace=CountingTrace())
    again = CountingTrace()
    report = compile_repository(repository, static_batch=4, trace=again)
    assert again.calls == 0 and not report.compiled and len(report.skipped) == len(_members(repository))
    report = compile_repository(repository, static_batch=8, trace=again)
    assert len(report.compiled) == len(_members(repository))


def test_a_member_this_torch_cannot_load_is_reported_and_the_rest_compile(repository: Path):
    compile_repository(repository, static_batch=4, trace=CountingTrace())
    members = _members(repository)
    broken = sorted(members)[0]
    version_dir, entry = members[broken]
    (version_dir / entry["file"]).write_bytes(b"PK\x03\x04 not an archive this torch can read")
    entry_file = version_dir / "members.json"
    document = json.loads(entry_file.read_text())
    document["members"][broken]["sha256"] = "0" * 64  # a new source: its old compiled artifact is stale
    entry_file.write_text(json.dumps(document))
    report = compile_repository(repository, static_batch=4, trace=CountingTrace())
    assert list(report.failed) == [broken]
    assert f"torch {torch.__version__} here cannot load its torchscript artifact" in report.failed[broken]
    assert "inf2" not in _members(repository)[broken][1].get("artifacts", {})  # no stale artifact is served
    assert len(report.skipped) == len(members) - 1


def test_the_cli_without_torch_neuronx_says_to_run_it_in_the_inf2_image(repository: Path):
    done = subprocess.run([sys.executable, "-m", "fleet.cli", "compile", str(repository), "--family", "inf2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "run it in the triton-fleet/server-inf2 image" in done.stderr and "Nothing was changed" in done.stderr
    assert not any("inf2" in entry.get("artifacts", {}) for _, entry in _members(repository).values())


# ---- publishing beside the control plane (real S3: SeaweedFS) ---------------------------------------
def _synced_and_compiled(repository: Path, seaweed, s3_uri: str, tmp_path: Path) -> tuple[Path, object]:
    from model_repository.s3_sync import sync, upload

    client = seaweed.client()
    upload(repository, s3_uri, client)  # stands in for the control plane's publish
    local = tmp_path / "job" / "repo"
    sync(s3_uri, local, client)  # what the compile Job does first
    compile_repository(local, static_batch=4, trace=CountingTrace())
    return local, client


def test_published_packs_reach_a_server_with_their_compiled_members(repository: Path, seaweed, s3_uri: str,
                                                                    tmp_path: Path):
    from model_repository.publish_compiled import publish_compiled
    from model_repository.s3_sync import sync

    local, client = _synced_and_compiled(repository, seaweed, s3_uri, tmp_path)
    report = publish_compiled(local, s3_uri, client)
    packs = sorted(p.name for p in repository.iterdir() if (p / "1" / "members.json").exists())
    assert sorted(report.published) == packs and not report.skipped
    server = tmp_path / "server" / "models"
    synced = sync(s3_uri, server, client)  # verifies every file against the index's sha256
    assert synced.ok and not synced.refused
    for version_dir, entry in _members(server).values():
        assert (version_dir / entry["artifacts"]["inf2"]["path"]).exists()


def test_a_pack_the_control_plane_rebuilt_meanwhile_is_left_alone(repository: Path, seaweed, s3_uri: str,
                                                                   tmp_path: Path):
    from model_repository.publish_compiled import publish_compiled
    from model_repository.s3_sync import S3Location, file_sha256

    local, client = _synced_and_compiled(repository, seaweed, s3_uri, tmp_path)
    rebuilt = sorted(p.name for p in local.iterdir() if (p / "1" / "members.json").exists())[0]
    # The control plane republishes that pack: new members.json on S3 and in the index.
    location = S3Location.parse(s3_uri)
    newer = repository / rebuilt / "1" / "members.json"
    newer.write_text(newer.read_text().replace('"architecture"', '"architecture" ', 1))
    client.upload_file(str(newer), location.bucket, location.key(f"{rebuilt}/1/members.json"))
    index = json.loads(client.get_object(Bucket=location.bucket, Key=location.key(".fleet/index.json"))["Body"].read())
    index["files"][f"{rebuilt}/1/members.json"] = {"sha256": file_sha256(newer), "size": newer.stat().st_size}
    client.put_object(Bucket=location.bucket, Key=location.key(".fleet/index.json"), Body=json.dumps(index).encode())

    report = publish_compiled(local, s3_uri, client)
    assert list(report.skipped) == [rebuilt] and rebuilt not in report.published
    remote = client.get_object(Bucket=location.bucket, Key=location.key(f"{rebuilt}/1/members.json"))["Body"].read()
    assert remote == newer.read_bytes()  # the control plane's version stands
