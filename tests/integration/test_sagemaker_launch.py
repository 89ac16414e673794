"""`slimserve train --on sagemaker` sends its four jobs, in order, to the SageMaker API (moto)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from pipeline.local.emulation import REGION, emulated_account
from pipeline.training.sagemaker_jobs import STEPS, SageMakerPlan, launch
from tests.unit.test_sagemaker_jobs import plan


def test_launch_sends_the_four_jobs_in_order_to_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    with emulated_account():
        s3, sm = boto3.client("s3", region_name=REGION), boto3.client("sagemaker", region_name=REGION)
        s3.create_bucket(Bucket="artifacts")
        sent: list[dict[str, Any]] = []
        real = sm.create_training_job
        monkeypatch.setattr(sm, "create_training_job", lambda **req: (sent.append(req), real(**req))[1])
        p = plan()
        p = SageMakerPlan(**{**p.__dict__, "region": REGION})
        launch(p, sm, s3)
        assert [r["TrainingJobName"] for r in sent] == [f"slimserve-r1-{s}" for s in STEPS]
        assert sent == [p.request(s) for s in STEPS]
        assert sm.describe_training_job(TrainingJobName="slimserve-r1-export")["TrainingJobStatus"] == "Completed"
        assert s3.head_object(Bucket="artifacts", Key="runs/r1/sourcedir.tar.gz")["ContentLength"] > 1000
