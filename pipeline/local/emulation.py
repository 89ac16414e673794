"""An embedded AWS account: moto in-process, fake credentials, and the resources slimserve uses."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from functions.common.manifest import MANIFEST_FILE, Manifest

REGION = "us-east-1"
MODEL_BUCKET = "slimserve-models-local"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}


@contextmanager
def emulated_account() -> Iterator[None]:
    """Fake credentials first, then moto: no request can reach a real account."""
    saved = {k: os.environ.get(k) for k in FAKE_CREDENTIALS}
    os.environ.update(FAKE_CREDENTIALS)
    from moto import mock_aws

    try:
        with mock_aws():
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def model_prefix(manifest: Manifest) -> str:
    return f"models/{manifest.name}/{manifest.version}"


def upload_bundle(s3: Any, bundle_dir: str | Path, bucket: str = MODEL_BUCKET) -> str:
    """Create the (private, encrypted, versioned) model bucket if needed and upload a bundle.

    Returns the bundle's ``s3://`` URI.
    """
    root = Path(bundle_dir)
    manifest = Manifest.model_validate_json((root / MANIFEST_FILE).read_bytes())
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
        s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True})
    prefix = model_prefix(manifest)
    for name in [MANIFEST_FILE, *manifest.files]:
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=(root / name).read_bytes())
    return f"s3://{bucket}/{prefix}/"
