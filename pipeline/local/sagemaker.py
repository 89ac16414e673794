"""A local SageMaker for the emulated account: CreateTrainingJob runs the job.

moto records a training job and calls it Completed at once, without running anything or writing an
artifact. Inside `local_training_jobs()`, moto's SageMaker backend runs each job it creates the way a
script-mode container would, before it answers:

- the source bundle named by `sagemaker_submit_directory` is read from the emulated S3 and unpacked (no
  bundle there: the job fails, as on AWS), and its `sagemaker_program` runs in a subprocess of this Python;
- each input channel (S3Prefix) is copied from S3 into a folder of its own (`SM_CHANNEL_<NAME>`); the
  hyperparameters other than `sagemaker_*` are passed as `--key value` and in `SM_HPS`; the job writes to
  `SM_MODEL_DIR` and `SM_OUTPUT_DATA_DIR`;
- `SM_MODEL_DIR` is packed into `<S3OutputPath><job name>/output/model.tar.gz` (and the output data folder
  into `output.tar.gz` beside it), and the job is left Completed; a job that exits non-zero, runs past its
  MaxRuntimeInSeconds, or that `fail(request)` names a reason for, is left Failed with a FailureReason.

The jobs read and write S3 through moto's own backend (not a client), so this works in-process under
`mock_aws` and in a moto server started in this process alike. Only `SageMakerModelBackend.create_training_job`
is patched, and only while the context is open.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlparse

from pipeline.training.sagemaker_jobs import source_bundle

Failure = Callable[[dict[str, Any]], "str | None"]
"""Given a job's CreateTrainingJob request, a reason to fail it (None: run it)."""
REASON_LIMIT = 1024  # SageMaker's FailureReason holds at most this many characters


class JobFailed(Exception):
    """A job that ends Failed; its message is the FailureReason."""


@contextmanager
def local_training_jobs(fail: Failure | None = None) -> Iterator[list[dict[str, Any]]]:
    """Within the context, every CreateTrainingJob of the emulated account runs its job. Yields the list of
    requests run so far (in order), each with the status and failure reason it ended with."""
    from moto.sagemaker.models import SageMakerModelBackend

    original = SageMakerModelBackend.create_training_job
    ran: list[dict[str, Any]] = []

    def create_training_job(backend: Any, *args: Any, **kwargs: Any) -> Any:
        job: Any = original(backend, *args, **kwargs)  # moto's FakeTrainingJob, given fields it lacks
        request = _request(job)
        reason = fail(request) if fail is not None else None
        try:
            if reason is not None:
                raise JobFailed(reason)
            run_job(job, backend.account_id)
        except JobFailed as failed:
            job.training_job_status = job.secondary_status = "Failed"
            job.failure_reason = str(failed)[:REASON_LIMIT]
            job.model_artifacts = None  # a failed job leaves no artifact
        ran.append({**request, "TrainingJobStatus": job.training_job_status,
                    "FailureReason": getattr(job, "failure_reason", None)})
        return job

    with mock.patch.object(SageMakerModelBackend, "create_training_job", create_training_job):
        yield ran


def put_source_bundle(s3: Any, uri: str) -> None:
    """Upload this checkout's `source_bundle()` to `uri` (what `cdk deploy` does with the stack's copy)."""
    target = urlparse(uri)
    s3.put_object(Bucket=target.netloc, Key=target.path.lstrip("/"), Body=source_bundle())


def run_job(job: Any, account_id: str) -> None:
    """Run one job to its end (raises JobFailed with the reason SageMaker would give)."""
    store = _Store(account_id)
    hyperparameters: dict[str, str] = dict(job.hyper_parameters or {})
    with tempfile.TemporaryDirectory(prefix=f"{job.training_job_name}-") as work:
        root = Path(work)
        code = root / "code"
        source = hyperparameters.get("sagemaker_submit_directory", "")
        program = hyperparameters.get("sagemaker_program", "")
        if not source or not program:
            raise JobFailed("ClientError: sagemaker_submit_directory and sagemaker_program are required")
        _unpack(store.read(source, "the source bundle (sagemaker_submit_directory)"), code)
        if not (code / program).is_file():
            raise JobFailed(f"AlgorithmError: {program} is not in {source}")
        env = {**os.environ, "PYTHONPATH": str(code), "SM_MODEL_DIR": str(root / "model"),
               "SM_OUTPUT_DATA_DIR": str(root / "output" / "data"), "SM_CHANNELS": json.dumps([]),
               "SM_HPS": json.dumps({k: v for k, v in hyperparameters.items() if not k.startswith("sagemaker_")}),
               "SM_CURRENT_HOST": "algo-1", "SM_HOSTS": json.dumps(["algo-1"]), "SM_NUM_GPUS": "0"}
        channels = []
        for channel in job.input_data_config or []:
            name = channel["ChannelName"]
            folder = root / "input" / "data" / name
            store.download_prefix(channel["DataSource"]["S3DataSource"]["S3Uri"], folder, name)
            env[f"SM_CHANNEL_{name.upper()}"] = str(folder)
            channels.append(name)
        env["SM_CHANNELS"] = json.dumps(channels)
        for folder in ("model", "output/data"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        args = [part for key, value in sorted(hyperparameters.items()) if not key.startswith("sagemaker_")
                for part in (f"--{key}", str(value))]
        limit = (job.stopping_condition or {}).get("MaxRuntimeInSeconds")
        try:
            done = subprocess.run([sys.executable, str(code / program), *args], cwd=code, env=env,
                                  capture_output=True, text=True, timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            raise JobFailed(f"MaxRuntimeExceeded: the job ran past {limit} seconds") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            raise JobFailed(f"AlgorithmError: ExecuteUserScriptError: {program} exited with code "
                            f"{done.returncode}: {last}")
        output = f"{job.output_data_config['S3OutputPath'].rstrip('/')}/{job.training_job_name}/output/"
        store.write(f"{output}model.tar.gz", _pack(root / "model"))
        store.write(f"{output}output.tar.gz", _pack(root / "output" / "data"))


class _Store:
    """The emulated account's S3, through moto's backend."""

    def __init__(self, account_id: str) -> None:
        from moto.s3.models import s3_backends

        self.backend = s3_backends[account_id]["aws"]

    def read(self, uri: str, what: str) -> bytes:
        bucket, key = _split(uri)
        try:
            found = self.backend.get_object(bucket, key)
        except Exception:  # moto raises its own S3 errors (MissingBucket, ...): all mean "not there"
            found = None
        if found is None:
            raise JobFailed(f"ClientError: cannot read {what} at {uri}: no such object")
        return bytes(found.value)

    def download_prefix(self, uri: str, folder: Path, channel: str) -> None:
        """Every object under the prefix into ``folder``, keeping the path below the prefix (S3Prefix, File)."""
        bucket, prefix = _split(uri)
        try:
            keys = [k for k in self.backend.get_bucket(bucket).keys if k.startswith(prefix)]
        except Exception:  # a missing bucket is an empty channel here, and so a failed job below
            keys = []
        if not keys:
            raise JobFailed(f"ClientError: Data download failed: channel {channel!r} found no objects at {uri}")
        for key in sorted(keys):
            relative = key[len(prefix):].lstrip("/") or key.rsplit("/", 1)[-1]
            if relative.endswith("/"):
                continue  # a "folder" marker
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read(f"s3://{bucket}/{key}", f"channel {channel!r}"))

    def write(self, uri: str, data: bytes) -> None:
        bucket, key = _split(uri)
        try:
            self.backend.put_object(bucket, key, data)
        except Exception as exc:  # moto's own S3 errors
            raise JobFailed(f"ClientError: cannot upload the job's output to {uri}: {type(exc).__name__}") from None


def _request(job: Any) -> dict[str, Any]:
    """The job as its CreateTrainingJob request named it (what `fail` is given)."""
    return {"TrainingJobName": job.training_job_name, "HyperParameters": dict(job.hyper_parameters or {}),
            "AlgorithmSpecification": job.algorithm_specification, "RoleArn": job.role_arn,
            "InputDataConfig": job.input_data_config, "OutputDataConfig": job.output_data_config,
            "ResourceConfig": job.resource_config, "StoppingCondition": job.stopping_condition, "Tags": job.tags}


def _split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise JobFailed(f"ClientError: {uri!r} is not an s3:// URI")
    return parsed.netloc, parsed.path.lstrip("/")


def _unpack(data: bytes, folder: Path) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            archive.extractall(folder, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise JobFailed(f"ClientError: the source bundle is not a gzipped tar archive: {exc}") from None


def _pack(folder: Path) -> bytes:
    """A folder as SageMaker archives SM_MODEL_DIR: its contents at the archive's root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(folder.rglob("*")):
            archive.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return buffer.getvalue()
