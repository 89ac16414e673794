"""Labels for prediction ids: checked against the id's own proof and the model's classes, stored once per
id (a conditional put), and each stored label moves the live accuracy (classifiers) or MAE (regressors).

No lookup of the prediction is needed: the id carries the model, version, request, row and prediction.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..common import aws
from ..common.bundle import read_manifest, s3_reader
from ..common.errors import DuplicateLabel, InvalidPredictionId, LabelNotInClasses, WriteConflict, echo
from ..common.layout import model_prefix
from ..common.manifest import Manifest
from ..common.prediction_ids import PredictionRef, verify
from ..common.routing import emit_metric_record
from ..common.settings import METRICS_NAMESPACE

Label = bool | int | float | str
LIVE_DIMENSIONS = (["model_name"], ["model_name", "model_version"])
DAY_SECONDS = 86_400


def class_text(value: Label) -> str:
    """A class as a CSV cell writes it: 'true'/'false' for booleans, str() otherwise."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def checked_label(manifest: Manifest, label: Any) -> Label:
    """The label as the model's own value: one of its classes (a CSV cell's text matches too), or a finite
    number for a regressor. LabelNotInClasses otherwise."""
    if manifest.classes:
        for c in manifest.classes:
            if (label == c and type(label) is type(c)) or (isinstance(label, str) and label == class_text(c)):
                return c
        classes = ", ".join(class_text(c) for c in manifest.classes[:20])
        raise LabelNotInClasses(f"label {echo(label)} is not a class of {manifest.name}: {classes}", field="label")
    try:
        value = float(label) if isinstance(label, (int, float, str)) and not isinstance(label, bool) else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise LabelNotInClasses(f"label {echo(label)} is not a finite number (the model is a regressor)",
                                code="label_not_a_number", field="label")
    return value


def live_metric(manifest: Manifest, prediction: Label, label: Label) -> tuple[str, float]:
    """LiveAccuracy (1 right, 0 wrong: its average is the accuracy) or LiveMae (the absolute error)."""
    if manifest.classes:
        return "LiveAccuracy", float(class_text(prediction) == class_text(label))
    return "LiveMae", abs(float(prediction) - float(label))


def live_record(model: str, version: str, name: str, value: float, now_ms: int) -> dict[str, Any]:
    """The EMF record of one label: per model (what the alarm watches) and per model version."""
    return {"_aws": {"Timestamp": now_ms, "CloudWatchMetrics": [{
        "Namespace": METRICS_NAMESPACE, "Dimensions": [list(d) for d in LIVE_DIMENSIONS],
        "Metrics": [{"Name": name, "Unit": "None"}, {"Name": "FeedbackLabels", "Unit": "Count"}]}]},
        "model_name": model, "model_version": version, name: value, "FeedbackLabels": 1}


@dataclass(frozen=True)
class Stored:
    prediction_id: str
    model: str
    version: str
    label: Label
    metric: str
    value: float

    def as_dict(self) -> dict[str, Any]:
        return {"prediction_id": self.prediction_id, "model": self.model, "version": self.version,
                "label": self.label, self.metric: self.value}


class Feedback:
    """The labelling service of one served model."""

    def __init__(self, *, key: Callable[[], bytes | None], model_name: str, manifests: Callable[[str, str], Manifest],
                 table: str, ttl_days: int, clock: Callable[[], float] = time.time) -> None:
        self.key, self.model_name, self.manifests = key, model_name, manifests
        self.table, self.ttl_days, self.clock = table, ttl_days, clock

    def record(self, prediction_id: Any, label: Any, caller: str) -> Stored:
        """Store one label: InvalidPredictionId, LabelNotInClasses or DuplicateLabel, else the stored label."""
        key = self.key()
        if key is None:
            raise InvalidPredictionId("prediction ids are not configured here, so none can be checked",
                                      field="prediction_id")
        ref = verify(key, prediction_id)
        if ref.model != self.model_name:
            raise InvalidPredictionId(f"prediction_id names model {echo(ref.model)}; this service labels "
                                      f"{self.model_name}", field="prediction_id")
        manifest = self.manifests(ref.model, ref.version)
        value = checked_label(manifest, label)
        self._put(prediction_id, ref, value, caller)
        metric, measured = live_metric(manifest, ref.prediction, value)
        emit_metric_record(live_record(ref.model, ref.version, metric, measured, int(self.clock() * 1000)))
        return Stored(prediction_id, ref.model, ref.version, value, metric, measured)

    def _put(self, prediction_id: str, ref: PredictionRef, label: Label, caller: str) -> None:
        now = self.clock()
        item = {"prediction_id": {"S": prediction_id}, "model": {"S": ref.model}, "version": {"S": ref.version},
                "request_id": {"S": ref.request_id}, "row": {"N": str(ref.row)},
                "prediction": {"S": json.dumps(ref.prediction)}, "label": {"S": json.dumps(label)},
                "caller": {"S": caller[:512]}, "labelled_at": {"N": str(int(now))},
                "expires_at": {"N": str(int(now) + self.ttl_days * DAY_SECONDS)}}
        duplicate = DuplicateLabel("this prediction already has a label; the first one stands", field="prediction_id")
        with aws.translated(f"storing a label in {self.table}", {WriteConflict: duplicate}):
            aws.client("dynamodb").put_item(TableName=self.table, Item=item,
                                            ConditionExpression="attribute_not_exists(prediction_id)")


def bucket_manifests(bucket: str) -> Callable[[str, str], Manifest]:
    """The manifests of the model bucket's bundles, read once per version per environment."""

    @lru_cache(maxsize=16)
    def read(model: str, version: str) -> Manifest:
        return read_manifest(s3_reader(aws.client("s3"), bucket, model_prefix(model, version)))[0]

    return read
