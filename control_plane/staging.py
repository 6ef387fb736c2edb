"""Staging an artifact on local disk: hashed while it streams in, inspected before anything loads it.

Why: a model may be gigabytes. The web process never holds one whole: an upload is written to a
temporary file in chunks while its sha256 is computed, an S3 source is downloaded to one with boto3's
managed transfer, and both leave as a multipart upload read from that file. Only the archive's central
directory is read here (its member names and declared sizes); loading happens in the sandboxed validator.
"""
from __future__ import annotations

import hashlib
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from boto3.s3.transfer import TransferConfig

from control_plane.errors import ApiError
from model_repository.formats import ArtifactFormat, UnknownFormat, detect_format

# Parts of 16 MiB, four at a time: S3 needs >= 5 MiB parts, and s3transfer reads each part lazily from
# the file, so the web process's memory stays bounded whatever the artifact's size.
TRANSFER = TransferConfig(multipart_threshold=16 * 2**20, multipart_chunksize=16 * 2**20, max_concurrency=4,
                          io_chunksize=2**20)
CHUNK = 2**20
# torch.jit.save and torch.export.save store members uncompressed; a declared uncompressed size far above
# the archive's own size is a zip bomb, not a model.
MAX_COMPRESSION_RATIO = 10


@dataclass(frozen=True)
class StagedArtifact:
    """An artifact on local disk, with what the registry records about it."""

    path: Path
    sha256: str
    bytes: int
    format: ArtifactFormat


class HashingTempFile:
    """A named temporary file that hashes and counts what is written to it.

    werkzeug's multipart parser writes each uploaded file into the object `_get_file_stream` returns,
    chunk by chunk, then seeks to 0; doing the hash here means the upload is read exactly once. The file
    is deleted when closed (werkzeug closes request files at the end of the request).
    """

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self._file = tempfile.NamedTemporaryFile(dir=directory, prefix="upload-", suffix=".part")
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._file.write(data)

    def __getattr__(self, name: str):
        return getattr(self._file, name)

    def __iter__(self):
        return iter(self._file)


def copy_to_staging(stream, directory: Path) -> HashingTempFile:
    """Copy any readable stream (a FileStorage that werkzeug did not stage itself) to a hashed temp file."""
    staged = HashingTempFile(directory)
    while chunk := stream.read(CHUNK):
        staged.write(chunk)
    staged.flush()
    return staged


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_size(size: int, limit: int, what: str = "the artifact") -> None:
    if size > limit:
        raise ApiError(413, "payload_too_large",
                       f"{what} is {size} bytes; the limit is {limit} bytes: raise the setting max_upload_bytes "
                       "(FLEET_MAX_UPLOAD_BYTES) or upload a smaller model")


def inspect_archive(path: Path, size: int, limit: int) -> ArtifactFormat:
    """The artifact's format, after refusing empty, truncated, non-model and zip-bomb files with a 4xx.

    Reads only the zip's central directory: nothing is decompressed or unpickled.
    """
    if size == 0:
        raise ApiError(422, "invalid_artifact", "the artifact is empty; upload the file torch.jit.save or "
                                                "torch.export.save wrote")
    try:
        fmt = detect_format(path)
    except UnknownFormat as error:
        with open(path, "rb") as head:
            starts_like_zip = head.read(4) == b"PK\x03\x04"
        if starts_like_zip and "not a zip archive" in str(error):
            raise ApiError(422, "invalid_artifact",
                           "the artifact starts like a zip archive but its central directory is unreadable: it "
                           "is truncated or corrupt; upload the whole file again") from None
        raise ApiError(422, "invalid_artifact", str(error)) from None
    with zipfile.ZipFile(path) as archive:
        declared = sum(info.file_size for info in archive.infolist())
    if declared > size * MAX_COMPRESSION_RATIO:
        raise ApiError(422, "invalid_artifact",
                       f"the archive declares {declared} bytes uncompressed from {size} bytes on disk, more than "
                       f"{MAX_COMPRESSION_RATIO}x (a zip bomb is refused before loading); save the model with "
                       "torch.jit.save or torch.export.save, which store members uncompressed")
    check_size(declared, limit, "the artifact's uncompressed content")
    return fmt
