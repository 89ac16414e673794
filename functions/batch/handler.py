"""Batch scoring Lambdas.

- ``lambda_handler``: SQS (S3 ObjectCreated under incoming/) -> score the file, reporting partial
  batch failures; files past the threshold start the Distributed Map state machine instead.
- ``score_items_handler``: one Distributed Map batch of CSV rows -> a scored and a rejected part.
- ``finalize_handler``: after the map, sums the parts into the single run manifest.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from ..common import layout
from ..common.settings import BatchSettings
from ..inference.service import ModelHolder
from . import distributed
from .formats import FileFormat, WholeFileRejected
from .scoring import Source, score_file
from .stores import S3Store

logger = Logger(service="slimserve-batch")
metrics = Metrics(namespace="Slimserve", service="slimserve-batch")
tracer = Tracer(service="slimserve-batch")
processor = BatchProcessor(event_type=EventType.SQS)

settings = BatchSettings.from_env()
holder = ModelHolder(settings)


class PoisonMessage(ValueError):
    """A queue message that is not an S3 event: retried, then parked in the DLQ."""


@cache
def s3_client() -> Any:
    import boto3

    return boto3.client("s3")


@cache
def sfn_client() -> Any:
    import boto3

    return boto3.client("stepfunctions")


def sources_from_message(body: str) -> list[Source]:
    """The S3 objects an SQS message announces (none for S3's test event)."""
    try:
        message = json.loads(body)
    except ValueError:
        raise PoisonMessage("message body is not JSON") from None
    if not isinstance(message, dict):
        raise PoisonMessage("message body is not an S3 event")
    if message.get("Event") == "s3:TestEvent":
        return []
    records = message.get("Records")
    if not isinstance(records, list):
        raise PoisonMessage("message has no S3 Records")
    sources = []
    for record in records:
        try:
            if not str(record["eventName"]).startswith("ObjectCreated:"):
                continue
            obj = record["s3"]["object"]
            sources.append(Source(bucket=record["s3"]["bucket"]["name"], key=unquote_plus(obj["key"]),
                                  version_id=obj.get("versionId"), etag=obj.get("eTag"), size=obj.get("size"),
                                  sequencer=obj.get("sequencer")))
        except (KeyError, TypeError):
            raise PoisonMessage("S3 record lacks bucket, key or event name") from None
    return sources


def process_source(source: Source) -> dict[str, Any]:
    if not layout.is_incoming(source.key):
        logger.warning("object outside incoming/ ignored", extra={"key": source.key})
        return {"status": "ignored"}
    store = S3Store(s3_client(), source.bucket)
    if _goes_to_distributed_map(source):
        return distributed.start(sfn_client(), settings.state_machine_arn or "", store, source)
    model = holder.load()
    body = _open_source(source)  # score_file finds a redelivery's manifest before reading any of it
    if body is None:
        return {"status": "superseded"}
    result = score_file(model, store, source, body, chunk_rows=settings.chunk_rows,
                        max_file_bytes=settings.max_file_bytes)
    manifest = result.manifest
    if not result.skipped:
        metrics.add_dimension(name="model_version", value=model.version)
        rows = manifest["rows"]
        metrics.add_metric(name="RowsScored", unit=MetricUnit.Count, value=rows["scored"])
        metrics.add_metric(name="RowsRejected", unit=MetricUnit.Count, value=rows["rejected"])
        metrics.add_metric(name="FilesRejected", unit=MetricUnit.Count, value=int(manifest["status"] == "rejected"))
    logger.info("file processed", extra={"key": source.key, "status": manifest["status"], "rows": manifest["rows"],
                                         "run_id": manifest["run_id"], "skipped": result.skipped})
    return {"status": manifest["status"], "skipped": result.skipped}


def _open_source(source: Source) -> Any:
    """The announced version's bytes: by version id, or (unversioned) only while the ETag still
    matches, so a newer upload under the same key is never scored under the old event's name."""
    from botocore.exceptions import ClientError

    args: dict[str, Any] = {"Bucket": source.bucket, "Key": source.key}
    if source.version_id:
        args["VersionId"] = source.version_id
    elif source.etag:
        args["IfMatch"] = source.etag
    try:
        return s3_client().get_object(**args)["Body"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "NoSuchVersion", "PreconditionFailed", "412", "404"):
            logger.warning("announced object is gone or replaced; its own event covers the new one",
                           extra={"key": source.key, "code": code})
            return None
        raise


def _goes_to_distributed_map(source: Source) -> bool:
    if not settings.state_machine_arn or source.size is None or source.size <= settings.distributed_threshold_bytes:
        return False
    if settings.max_file_bytes is not None and source.size > settings.max_file_bytes:
        return False  # refused whole, with a rejected manifest, by score_file
    try:
        fmt = FileFormat.from_key(source.key)
    except WholeFileRejected:
        return False
    return fmt.kind == "csv" and not fmt.gzip  # what the Distributed Map CSV item reader can read


def record_handler(record: SQSRecord) -> None:
    for source in sources_from_message(record.body):
        process_source(source)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return dict(process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                         context=context))


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def score_items_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    batch = distributed.ItemBatch.model_validate(event)
    store = S3Store(s3_client(), batch.batch_input.bucket)
    return distributed.score_items(holder.load(), store, batch)


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
def finalize_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    run = distributed.RunInput.model_validate(event)
    manifest = distributed.finalize(S3Store(s3_client(), run.bucket), run, holder.load())
    return {"status": manifest["status"], "rows": manifest["rows"], "run_id": manifest["run_id"]}
