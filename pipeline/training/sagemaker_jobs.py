"""``slimserve train --on sagemaker``: the same four entry points as SageMaker training jobs.

The requests are built here, from SDK image URIs, and sent with boto3; tests assert the exact
requests offline. The teacher runs on a GPU instance with the XGBoost image; the other steps run
on CPU instances with the scikit-learn image. Script mode installs ``requirements.txt`` from the
source bundle, so every job runs the scikit-learn, skl2onnx and onnxruntime versions that the
bundle's parity was measured with, not the image's older ones.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
XGBOOST_VERSION = "3.0-5"
SKLEARN_VERSION = "1.4-2"
STEPS = ("validate", "teacher", "distil", "export")
# onnxruntime, numpy, pydantic and pyarrow exactly as the Lambda layers pin them (layers/*/requirements.txt):
# parity is measured, and the manifest written, with what serves (tests/unit/test_serving_pins.py).
JOB_REQUIREMENTS = ["scikit-learn==1.9.1", "skl2onnx==1.20.0", "onnx==1.23.2", "onnxruntime==1.31.1", "numpy==2.4.6",
                    "pandas>=2.0", "pyarrow==26.0.1", "joblib>=1.3", "pydantic==2.14.3", "xgboost>=2.0"]


@dataclass(frozen=True)
class SageMakerPlan:
    data_uri: str  # s3://bucket/prefix/ holding train/, validation/, holdout/ (one file each)
    output_uri: str  # s3://bucket/prefix/ for job outputs
    role_arn: str
    region: str
    run_id: str
    source_uri: str  # s3://.../sourcedir.tar.gz
    hyperparameters: dict[str, str] = field(default_factory=dict)
    gpu_instance: str = "ml.g5.xlarge"
    cpu_instance: str = "ml.m5.xlarge"
    max_runtime_s: int = 4 * 3600

    def image(self, step: str) -> str:
        from sagemaker.core import image_uris

        if step == "teacher":
            return str(image_uris.retrieve("xgboost", region=self.region, version=XGBOOST_VERSION,
                                           instance_type=self.gpu_instance))
        return str(image_uris.retrieve("sklearn", region=self.region, version=SKLEARN_VERSION,
                                       instance_type=self.cpu_instance))

    def job_name(self, step: str) -> str:
        return f"slimserve-{self.run_id}-{step}"[:63]

    def output(self, step: str) -> str:
        return f"{self.output_uri.rstrip('/')}/{self.run_id}/{step}/"

    def model_artifact(self, step: str) -> str:
        return f"{self.output(step)}{self.job_name(step)}/output/model.tar.gz"

    def channels(self, step: str) -> dict[str, str]:
        data = self.data_uri.rstrip("/")
        base = {"train": f"{data}/train/"}
        if step == "teacher":
            return {**base, "validation": f"{data}/validation/"}
        if step == "distil":
            return {**base, "validation": f"{data}/validation/", "teacher": self.model_artifact("teacher")}
        if step == "export":
            return {**base, "holdout": f"{data}/holdout/", "teacher": self.model_artifact("teacher"),
                    "student": self.model_artifact("distil")}
        return base

    def request(self, step: str) -> dict[str, Any]:
        """The CreateTrainingJob request for one step."""
        instance = self.gpu_instance if step == "teacher" else self.cpu_instance
        hyperparameters = {**self.hyperparameters, "sagemaker_program": f"pipeline/training/{step}_job.py",
                           "sagemaker_submit_directory": self.source_uri, "sagemaker_region": self.region}
        if step == "teacher":
            hyperparameters["teacher"] = "xgboost"
        return {
            "TrainingJobName": self.job_name(step),
            "RoleArn": self.role_arn,
            "AlgorithmSpecification": {"TrainingImage": self.image(step), "TrainingInputMode": "File"},
            "HyperParameters": {k: str(v) for k, v in sorted(hyperparameters.items())},
            "InputDataConfig": [{"ChannelName": name, "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}}}
                for name, uri in self.channels(step).items()],
            "OutputDataConfig": {"S3OutputPath": self.output(step)},
            "ResourceConfig": {"InstanceType": instance, "InstanceCount": 1, "VolumeSizeInGB": 50},
            "StoppingCondition": {"MaxRuntimeInSeconds": self.max_runtime_s},
            "EnableNetworkIsolation": False,  # script mode installs requirements.txt from PyPI
            "Tags": [{"Key": "slimserve:run", "Value": self.run_id}, {"Key": "slimserve:step", "Value": step}],
        }


def source_bundle() -> bytes:
    """sourcedir.tar.gz: the pipeline and functions packages plus the jobs' requirements. Reproducible (no
    times, owners or modes from the checkout): the same sources give the same bytes, so the stack's copy
    (an asset named by its hash) changes only when the code does."""
    files = [(str(path.relative_to(ROOT)), path.read_bytes()) for package in ("pipeline", "functions")
             for path in sorted((ROOT / package).rglob("*.py"))]
    files.append(("requirements.txt", ("\n".join(JOB_REQUIREMENTS) + "\n").encode()))
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped, \
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def run_id_for(data_uri: str) -> str:
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    return re.sub(r"[^a-z0-9-]", "-", f"{stamp}-{abs(hash(data_uri)) % 10_000:04d}")


def launch(plan: SageMakerPlan, sagemaker: Any, s3: Any, wait: bool = True) -> list[dict[str, Any]]:
    """Upload the source bundle, then run the four jobs in order (each waits for the one before)."""
    bucket, key = plan.source_uri[len("s3://"):].split("/", 1)
    s3.put_object(Bucket=bucket, Key=key, Body=source_bundle())
    sent = []
    for step in STEPS:
        request = plan.request(step)
        sagemaker.create_training_job(**request)
        sent.append(request)
        if wait:
            sagemaker.get_waiter("training_job_completed_or_stopped").wait(
                TrainingJobName=request["TrainingJobName"], WaiterConfig={"Delay": 30, "MaxAttempts": 480})
            status = sagemaker.describe_training_job(TrainingJobName=request["TrainingJobName"])
            if status["TrainingJobStatus"] != "Completed":
                raise RuntimeError(f"{step} job {request['TrainingJobName']} ended {status['TrainingJobStatus']}: "
                                   f"{status.get('FailureReason', '')}")
    return sent
