"""Import a trained bundle: the export job's `model.tar.gz` (artifacts bucket) becomes
`models/<model>/<version>/` in the model bucket and a candidate in the registry, for the gate to judge.

The archive holds the bundle's files in `bundle/` (the export job writes them to SM_MODEL_DIR/bundle, and
SageMaker archives SM_MODEL_DIR) or at its root. Every file
is checked against the manifest's sha256 before anything is written, and the manifest is written last,
so a half-imported bundle never looks complete. Importing the same bundle twice changes nothing.
"""

from __future__ import annotations

import tarfile
from typing import Any
from urllib.parse import urlparse

from ..common import aws
from ..common.bundle import read_manifest, verified_files
from ..common.errors import BundleError, RegistryConflict
from ..common.layout import model_prefix
from ..common.manifest import MANIFEST_FILE, sha256_hex
from ..common.registry import ModelEntry, Registry, UnknownVersion

MAX_ARCHIVE_BYTES = 512 * 1024 * 1024  # unpacked; a distilled student's bundle is a few MiB
BUNDLE_FOLDER = "bundle/"  # where the export job leaves the bundle in SM_MODEL_DIR


def unpack(stream: Any, where: str) -> dict[str, bytes]:
    """The archive's regular files by name (a leading `./` or `bundle/` dropped); deeper paths and links refused."""
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|gz") as archive:
            for member in archive:
                if member.isdir():
                    continue
                name = member.name.removeprefix("./").removeprefix(BUNDLE_FOLDER)
                if not member.isfile() or not name or "/" in name or name.startswith(".") or name in files:
                    raise BundleError(f"{where}: {member.name!r} is not a plain file, once, at the archive's "
                                      f"root or in {BUNDLE_FOLDER}")
                total += member.size
                if total > MAX_ARCHIVE_BYTES:
                    raise BundleError(f"{where}: unpacks to more than {MAX_ARCHIVE_BYTES} bytes")
                extracted = archive.extractfile(member)
                assert extracted is not None  # a regular file
                files[name] = extracted.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"{where} is not a gzipped tar archive: {exc}") from None
    return files


def import_bundle(registry: Registry, s3: Any, model: str, artifact_uri: str, model_bucket: str) -> dict[str, Any]:
    """Unpack `artifact_uri` into the model bucket under its manifest's version; register it as a candidate."""
    source = urlparse(artifact_uri)
    if source.scheme != "s3" or not source.netloc:
        raise BundleError(f"artifact {artifact_uri!r} is not an s3:// URI")
    with aws.translated(f"reading the trained bundle {artifact_uri}"):
        body = s3.get_object(Bucket=source.netloc, Key=source.path.lstrip("/"))["Body"]
    files = unpack(body, artifact_uri)

    def read(name: str) -> bytes:
        if name not in files:
            raise BundleError(f"{artifact_uri} has no {name}")
        return files[name]

    manifest, raw = read_manifest(read)
    verified_files(read, manifest)
    if manifest.name != model:
        raise BundleError(f"{artifact_uri} holds model {manifest.name!r}, not {model!r}")
    version, digest = manifest.version, sha256_hex(raw)
    prefix = model_prefix(model, version)
    bundle_uri = f"s3://{model_bucket}/{prefix}/"
    try:
        existing: ModelEntry | None = registry.get(model, version)
    except UnknownVersion:
        existing = None
    if existing is not None and existing.manifest_sha256 != digest:
        raise RegistryConflict(f"{model} {version} is already registered with another bundle")
    for name in [*sorted(set(files) - {MANIFEST_FILE}), MANIFEST_FILE]:  # the manifest last
        with aws.translated(f"writing s3://{model_bucket}/{prefix}/{name}"):
            s3.put_object(Bucket=model_bucket, Key=f"{prefix}/{name}", Body=files[name])
    if existing is None:
        registry.register(ModelEntry(model=model, version=version, bundle_uri=bundle_uri, manifest_sha256=digest))
    return {"version": version, "bundle_uri": bundle_uri, "manifest_sha256": digest}
