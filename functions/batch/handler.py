"""Batch scoring Lambdas.

- ``lambda_handler``: SQS (S3 ObjectCreated under incoming/) -> score the file, reporting partial
  batch failures; files past the threshold start the Distributed Map state machine instead.
- ``score_items_handler``: one Distributed Map batch of CSV rows -> a scored and a rejected part.
- ``finalize_handler``: after the map, sums the parts into the single run manifest.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from ..common import aws, layout
from ..common.bundle import Model
from ..common.errors import ObjectChanged, ObjectMissing, SlimserveError
from ..common.runtime import Runtime
from ..common.settings import BatchSettings
from ..common.tabular import FileFormat, WholeFileRejected
from . import distributed
from .models import BatchModels
from .scoring import Source, score_file
from .stores import S3Body, S3Store

rt = Runtime.for_settings(BatchSettings)
logger, metrics = rt.logger, rt.metrics
processor = BatchProcessor(event_type=EventType.SQS)

settings = BatchSettings.from_env()
# Nothing is read at cold start (the S3 test event needs no model): each file reads the routing item
# once when it starts (ROUTING_TTL_SECONDS is 0 for batch); map chunks load the bundle their run names.
holder = rt.serving_models(settings)
models = BatchModels.from_settings(settings, holder)
_bound_version: list[str] = []  # the version logs and metrics carry now


def bind(model: Model) -> None:
    """Logs and metrics carry the version that scores; bound again only when it changes. Metrics carry the
    model's name too, in the same one dimension set (service, model_version, model_name): the dashboard
    selects a model's batch figures by it, as it does serving's."""
    if _bound_version != [model.version]:
        rt.bind_model(model)
        metrics.set_default_dimensions(model_name=settings.model_name or model.manifest.name)
        _bound_version[:] = [model.version]


class PoisonMessage(SlimserveError):
    """A queue message that is not an S3 event: retried, then parked in the DLQ."""

    code = "poison_message"


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
    store = S3Store(aws.client("s3"), source.bucket)
    scorer = models.current()  # the champion when this file starts; none yet: the message is retried
    bind(scorer.model)
    if _goes_to_distributed_map(source):
        return distributed.start(aws.client("stepfunctions"), settings.state_machine_arn or "", store, source,
                                 scorer)
    body = _open_source(source)  # score_file finds a redelivery's manifest before reading any of it
    if body is None:
        return {"status": "superseded"}
    result = score_file(scorer.model, store, source, body, chunk_rows=settings.chunk_rows,
                        max_file_bytes=settings.max_file_bytes, logger=logger, model_role=scorer.role)
    manifest = result.manifest
    if not result.skipped:
        rows = manifest["rows"]
        metrics.add_metric(name="RowsScored", unit=MetricUnit.Count, value=rows["scored"])
        metrics.add_metric(name="RowsRejected", unit=MetricUnit.Count, value=rows["rejected"])
        metrics.add_metric(name="FilesRejected", unit=MetricUnit.Count, value=int(manifest["status"] == "rejected"))
        internal = manifest["status"] == "rejected" and manifest["reason"]["code"] == "internal_error"
        metrics.add_metric(name="FilesFailedInternally", unit=MetricUnit.Count, value=int(internal))
    logger.info("file processed", extra={"key": source.key, "status": manifest["status"], "rows": manifest["rows"],
                                         "run_id": manifest["run_id"], "skipped": result.skipped})
    return {"status": manifest["status"], "skipped": result.skipped}


def _open_source(source: Source) -> Any:
    """The announced version's bytes: by version id, or (unversioned) only while the ETag still
    matches, so a newer upload under the same key is never scored under the old event's name."""
    args: dict[str, Any] = {"Bucket": source.bucket, "Key": source.key}
    if source.version_id:
        args["VersionId"] = source.version_id
    elif source.etag:
        args["IfMatch"] = source.etag
    try:
        with aws.translated(f"reading s3://{source.bucket}/{source.key}"):
            return S3Body(aws.client("s3").get_object(**args)["Body"], f"s3://{source.bucket}/{source.key}")
    except (ObjectMissing, ObjectChanged) as exc:
        logger.warning("announced object is gone or replaced; its own event covers the new one",
                       extra={"key": source.key, "code": exc.code})
        return None


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
    """One message; any error leaves it on the queue (a batch item failure), to be delivered again
    and, after the queue's receive limit, parked in the DLQ."""
    try:
        for source in sources_from_message(record.body):
            process_source(source)
    except Exception as exc:
        metrics.add_metric(name="MessagesFailed", unit=MetricUnit.Count, value=1)
        logger.warning("message failed; it will be delivered again", extra={"message_id": record.message_id,
                                                                           "error": type(exc).__name__,
                                                                           "code": getattr(exc, "code", None)})
        raise


@rt.handler()
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return dict(process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                         context=context))


@rt.handler(metrics=False)
def score_items_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    batch = distributed.ItemBatch.model_validate(event)
    run = batch.batch_input
    scorer = models.for_run(run.model_uri, run.model_manifest_sha256, None)
    bind(scorer.model)
    return distributed.score_items(scorer.model, S3Store(aws.client("s3"), run.bucket), batch)


@rt.handler(metrics=False)
def finalize_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    run = distributed.RunInput.model_validate(event)
    scorer = models.for_run(run.model_uri, run.model_manifest_sha256, run.model_role)
    bind(scorer.model)
    manifest = distributed.finalize(S3Store(aws.client("s3"), run.bucket), run, scorer)
    return {"status": manifest["status"], "rows": manifest["rows"], "run_id": manifest["run_id"]}
