"""Stores for batch scoring: a local folder (the CLI) and an S3 bucket (the Lambda), same contract.

A sink publishes nothing until ``commit``: locally a temporary file renamed into place, on S3 a
single PUT or a multipart upload completed at the end (aborted on failure).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..common import aws
from ..common.errors import AwsError, ObjectMissing
from .scoring import HashingBuffer

PART_BYTES = 8 * 1024 * 1024  # S3 multipart parts must be >= 5 MiB (all but the last)


class LocalSink:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._file = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False)  # noqa: SIM115 - closed in commit/abort
        self._hash = HashingBuffer()

    def write(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        self._file.write(data)

    def commit(self) -> dict[str, Any]:
        self._file.close()
        os.replace(self._file.name, self._path)
        return self._hash.summary()

    def abort(self) -> None:
        self._file.close()
        Path(self._file.name).unlink(missing_ok=True)


class LocalStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def sink(self, key: str) -> LocalSink:
        return LocalSink(self.root / key)

    def read_json(self, key: str) -> dict[str, Any] | None:
        path = self.root / key
        return json.loads(path.read_text()) if path.is_file() else None

    def put_json(self, key: str, body: dict[str, Any]) -> None:
        sink = self.sink(key)
        sink.write((json.dumps(body, indent=2) + "\n").encode())
        sink.commit()

    def list_keys(self, prefix: str) -> list[str]:
        base = self.root / prefix
        return sorted(str(p.relative_to(self.root)) for p in base.glob("*") if p.is_file()) if base.is_dir() else []


class S3Sink:
    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self._client, self._bucket, self._key = client, bucket, key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._hash = HashingBuffer()

    def write(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        self._buffer += data
        if len(self._buffer) >= PART_BYTES:
            self._flush_part()

    def _flush_part(self) -> None:
        with aws.translated(f"writing s3://{self._bucket}/{self._key}"):
            if self._upload_id is None:
                self._upload_id = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)["UploadId"]
            number = len(self._parts) + 1
            etag = self._client.upload_part(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                                            PartNumber=number, Body=bytes(self._buffer))["ETag"]
        self._parts.append({"PartNumber": number, "ETag": etag})
        self._buffer.clear()

    def commit(self) -> dict[str, Any]:
        if self._upload_id is not None and self._buffer:
            self._flush_part()
        with aws.translated(f"writing s3://{self._bucket}/{self._key}"):
            if self._upload_id is None:
                self._client.put_object(Bucket=self._bucket, Key=self._key, Body=bytes(self._buffer))
            else:
                self._client.complete_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                                                       MultipartUpload={"Parts": self._parts})
        return self._hash.summary()

    def abort(self) -> None:
        """Drop an unfinished upload; if S3 refuses, its lifecycle rule removes the parts later."""
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            with contextlib.suppress(AwsError), aws.translated(f"aborting the upload of s3://{self._bucket}/{self._key}"):
                self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=upload_id)


class S3Store:
    def __init__(self, client: Any, bucket: str) -> None:
        self.client, self.bucket = client, bucket

    def sink(self, key: str) -> S3Sink:
        return S3Sink(self.client, self.bucket, key)

    def read_json(self, key: str) -> dict[str, Any] | None:
        try:
            with aws.translated(f"reading s3://{self.bucket}/{key}"):
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ObjectMissing:
            return None
        return json.loads(body)

    def put_json(self, key: str, body: dict[str, Any]) -> None:
        with aws.translated(f"writing s3://{self.bucket}/{key}"):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=(json.dumps(body, indent=2) + "\n").encode(),
                                   ContentType="application/json")

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        with aws.translated(f"listing s3://{self.bucket}/{prefix}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(keys)


class S3Body:
    """An S3 object's body whose read errors (a connection cut mid-stream) arrive as AwsError: a
    retry of the message, not a verdict on the file."""

    def __init__(self, body: Any, what: str) -> None:
        self._body, self._what = body, what

    def read(self, size: int = -1, /) -> bytes:
        with aws.translated(f"reading {self._what}"):
            data: bytes = self._body.read(size)
        return data
