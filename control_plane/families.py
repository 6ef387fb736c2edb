"""The registry's side of architecture families: what a validator's split becomes in S3 and in the database.

The sandboxed validator splits an artifact into a program and a weights file (model_repository/families.py)
and says so in its verdict. Here the web process, which trusts nothing the child says:
- recomputes the architecture id from the program file's bytes and the tensor table, and checks that the
  weights file's safetensors header (plain JSON, no code) lists exactly that table;
- stores the program once per architecture, content-addressed (a HEAD first: the thousandth member of an
  architecture uploads only its weights), and the member's weights next to its artifact. Both keys come from
  the registry's one key function (`Registry.object_key`), so every object moves together if that changes;
- records the architecture (a row shared by its members) and, on the member's version, its weights; or,
  when the artifact could not be split, why.

A member can also be registered as a weights file against an existing architecture (`check_weights`):
its table must match the architecture's exactly, or the registration is refused with what differs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.orm import Session

from control_plane.db import Architecture
from control_plane.errors import ApiError
from control_plane.staging import sha256_of
from model_repository.families import PROGRAM_SUFFIX, WEIGHTS_SUFFIX, architecture_id, runtime_module

PROGRAMS_OWNER = "_architectures"  # not a valid model name (those start with a letter or digit)


@dataclass
class FamilyFacts:
    """What a model version records about its split."""

    architecture: str | None = None
    weights_key: str | None = None
    weights_sha256: str | None = None
    weights_bytes: int | None = None
    split_reason: str | None = None
    row: dict = field(default_factory=dict)  # the Architecture row's values, when new to this registry
    written: list[str] = field(default_factory=list)  # keys this registration wrote (removed if it fails)

    def version_fields(self) -> dict:
        return {"architecture": self.architecture, "weights_key": self.weights_key,
                "weights_sha256": self.weights_sha256, "weights_bytes": self.weights_bytes,
                "split_reason": self.split_reason}


def not_split(reason: str) -> FamilyFacts:
    return FamilyFacts(split_reason=reason)


def weights_problems(path: Path, spec: list[dict]) -> list[str]:
    """How a weights file's tensors differ from an architecture's table (empty: they match)."""
    pack_weights = runtime_module("pack_weights")
    try:
        return pack_weights.differences(pack_weights.table(pack_weights.read_header(path)), spec)
    except pack_weights.WeightsError as error:
        return [str(error)]


def weights_unreadable(path: Path) -> str | None:
    """Why a file is not a readable safetensors file (None: it is one); reads its header only."""
    pack_weights = runtime_module("pack_weights")
    try:
        pack_weights.table(pack_weights.read_header(path))
    except pack_weights.WeightsError as error:
        return str(error)
    return None


def file_sha256(path: Path) -> tuple[str, int]:
    return sha256_of(path), Path(path).stat().st_size


class FamilyStore:
    """Puts programs and weights into S3 through the registry's key function and bucket."""

    def __init__(self, registry) -> None:
        self.registry = registry

    def _exists(self, key: str) -> bool:
        try:
            self.registry.s3.head_object(Bucket=self.registry.settings.bucket, Key=key)
            return True
        except ClientError as error:
            if error.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise ApiError(503, "object_store_unavailable", f"cannot read s3://{self.registry.settings.bucket}/"
                           f"{key}: {error}; nothing was registered") from None
        except BotoCoreError as error:
            raise ApiError(503, "object_store_unavailable", f"cannot reach the object store ({error}); nothing "
                           "was registered") from None

    def store(self, name: str, fmt: str, split: dict | None, directory: Path) -> FamilyFacts:
        """The split's program and weights in S3 (program once per architecture); a split that did not
        happen or cannot be trusted leaves the member on the whole-artifact path, with the reason."""
        if not split:
            return not_split("not split (splitting is off for this registration)")
        if not split.get("ok"):
            return not_split(split.get("reason") or "the validator did not split the artifact")
        spec = split["spec"]
        program, weights = Path(directory) / split["program"], Path(directory) / split["weights"]
        problems = weights_problems(weights, spec)
        if problems:
            return not_split("the validator's weights file did not match its own tensor table: " + "; ".join(problems))
        program_sha, program_bytes = file_sha256(program)
        ident = architecture_id(fmt, program_sha, spec)
        facts = FamilyFacts(architecture=ident)
        program_key = self.registry.object_key(PROGRAMS_OWNER, ident, PROGRAM_SUFFIX[fmt])
        if not self._exists(program_key):
            self.registry.put_file(program_key, program, program_sha, {"architecture": ident, "format": fmt})
        facts.weights_sha256, facts.weights_bytes = file_sha256(weights)
        facts.weights_key = self.registry.object_key(name, facts.weights_sha256, WEIGHTS_SUFFIX)
        self.registry.put_file(facts.weights_key, weights, facts.weights_sha256, {"architecture": ident})
        facts.written.append(facts.weights_key)
        facts.row = {"id": ident, "format": fmt, "program_key": program_key, "program_sha256": program_sha,
                     "program_bytes": program_bytes, "tensors": spec,
                     "parameter_bytes": runtime_module("pack_weights").tensor_bytes_of(spec)}
        return facts

    @staticmethod
    def record(session: Session, facts: FamilyFacts) -> None:
        """The architecture's row, inside the registration's transaction (a concurrent insert of the same
        row fails the flush with an IntegrityError, and the registration is retried: it then exists)."""
        if facts.architecture and facts.row and session.get(Architecture, facts.architecture) is None:
            session.add(Architecture(**facts.row))
            session.flush()
