"""`slimserve train --on sagemaker`: the exact requests, built offline (sending them: tests/integration)."""

from __future__ import annotations

import io
import tarfile

import pytest

from pipeline.training.sagemaker_jobs import STEPS, SageMakerPlan, source_bundle

ROLE = "arn:aws:iam::123456789012:role/slimserve-training"


def plan() -> SageMakerPlan:
    return SageMakerPlan(data_uri="s3://data/churn/", output_uri="s3://artifacts/runs/", role_arn=ROLE,
                         region="eu-west-1", run_id="r1", source_uri="s3://artifacts/runs/r1/sourcedir.tar.gz",
                         hyperparameters={"target": "churn", "seed": "7"})


def test_teacher_request_is_a_gpu_xgboost_script_mode_job() -> None:
    request = plan().request("teacher")
    assert request == {
        "TrainingJobName": "slimserve-r1-teacher",
        "RoleArn": ROLE,
        "AlgorithmSpecification": {
            "TrainingImage": "141502667606.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-xgboost:3.0-5",
            "TrainingInputMode": "File"},
        "HyperParameters": {"sagemaker_program": "pipeline/training/teacher_job.py", "sagemaker_region": "eu-west-1",
                            "sagemaker_submit_directory": "s3://artifacts/runs/r1/sourcedir.tar.gz", "seed": "7",
                            "target": "churn", "teacher": "xgboost"},
        "InputDataConfig": [
            {"ChannelName": "train", "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": "s3://data/churn/train/", "S3DataDistributionType":
                "FullyReplicated"}}},
            {"ChannelName": "validation", "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": "s3://data/churn/validation/", "S3DataDistributionType":
                "FullyReplicated"}}}],
        "OutputDataConfig": {"S3OutputPath": "s3://artifacts/runs/r1/teacher/"},
        "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
        "StoppingCondition": {"MaxRuntimeInSeconds": 14400},
        "EnableNetworkIsolation": False,
        "Tags": [{"Key": "slimserve:run", "Value": "r1"}, {"Key": "slimserve:step", "Value": "teacher"}],
    }


def test_student_steps_run_on_cpu_and_chain_the_artifacts() -> None:
    p = plan()
    distil, export = p.request("distil"), p.request("export")
    assert distil["ResourceConfig"]["InstanceType"] == "ml.m5.xlarge"
    assert distil["AlgorithmSpecification"]["TrainingImage"].endswith("sagemaker-scikit-learn:1.4-2-cpu-py3")
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in export["InputDataConfig"]}
    assert channels == {"train": "s3://data/churn/train/", "holdout": "s3://data/churn/holdout/",
                        "teacher": "s3://artifacts/runs/r1/teacher/slimserve-r1-teacher/output/model.tar.gz",
                        "student": "s3://artifacts/runs/r1/distil/slimserve-r1-distil/output/model.tar.gz"}
    assert "teacher" not in distil["HyperParameters"]


def test_source_bundle_carries_the_code_and_pinned_requirements() -> None:
    with tarfile.open(fileobj=io.BytesIO(source_bundle())) as tar:
        names = set(tar.getnames())
        requirements = tar.extractfile("requirements.txt").read().decode()  # type: ignore[union-attr]
    assert {f"pipeline/training/{s}_job.py" for s in STEPS} <= names and "functions/common/bundle.py" in names
    assert "scikit-learn==1.9.1" in requirements and "onnxruntime==1.31.1" in requirements
    assert not any(n.startswith(("tests/", "cdk/")) for n in names)


def test_cli_refuses_sagemaker_without_s3_locations(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main as cli

    assert cli(["train", "--on", "sagemaker", "--data", "local.csv", "--target", "y", "--out", "out"]) == 2
    assert "--on sagemaker needs" in capsys.readouterr().err
