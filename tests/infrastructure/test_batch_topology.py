"""The batch path's wiring is written once: the synthesized stack and the local emulation both come
from BatchTopology, so a change to one is a change to both."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from synth_helpers import Synth, resource_id

from cdk.constructs.batch_scoring import BatchScoringSettings
from cdk.constructs.topology import BatchTopology
from pipeline.local.emulation import REGION, create_scoring_resources, emulated_account

pytestmark = pytest.mark.slow  # reads the batch variant's full synth


def _queues(synth: Synth) -> tuple[dict[str, Any], dict[str, Any]]:
    queues = synth.resources("AWS::SQS::Queue")
    incoming = queues[resource_id(synth, "BatchIncomingQueue", "AWS::SQS::Queue")]["Properties"]
    dlq_id = incoming["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
    return incoming, queues[dlq_id]["Properties"]


def test_the_stack_synthesizes_the_topology(batch_synth: Synth) -> None:
    topology = BatchScoringSettings().topology
    incoming, dlq = _queues(batch_synth)
    assert incoming["VisibilityTimeout"] == topology.visibility_timeout_seconds
    assert incoming["RedrivePolicy"]["maxReceiveCount"] == topology.max_receive_count
    assert dlq["MessageRetentionPeriod"] == topology.dlq_retention_days * 86_400
    notifications = batch_synth.template["Resources"][resource_id(batch_synth, "Batch",
                                                                  "Custom::S3BucketNotifications")]
    [config] = notifications["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert config["Events"] == list(topology.events) and config["Filter"] == topology.key_filter()


def test_the_emulation_creates_the_same_topology() -> None:
    topology = BatchTopology(function_timeout_seconds=120, max_receive_count=5)
    with emulated_account():
        s3, sqs = boto3.client("s3", region_name=REGION), boto3.client("sqs", region_name=REGION)
        made = create_scoring_resources(s3, sqs, topology=topology)
        attributes = sqs.get_queue_attributes(QueueUrl=made["queue_url"], AttributeNames=["All"])["Attributes"]
        dlq = sqs.get_queue_attributes(QueueUrl=made["dlq_url"], AttributeNames=["All"])["Attributes"]
        config = s3.get_bucket_notification_configuration(Bucket=made["bucket"])["QueueConfigurations"][0]
        versioning = s3.get_bucket_versioning(Bucket=made["bucket"]).get("Status")
    assert int(attributes["VisibilityTimeout"]) == 720
    assert json.loads(attributes["RedrivePolicy"]) == topology.redrive_policy(dlq["QueueArn"])
    assert int(dlq["MessageRetentionPeriod"]) == topology.dlq_retention_days * 86_400
    assert config["Events"] == list(topology.events) and config["Filter"] == topology.key_filter()
    assert versioning == "Enabled"
