"""Lambda in the emulated account: the real handlers run in-process where moto would invoke a function,
and what they emit as EMF reaches moto's CloudWatch as it reaches CloudWatch on AWS.

moto runs no Lambda code without Docker; its Docker-free backend sends every invoke through one
method, which ``lambda_dispatch`` replaces with a call to the handler module named for the function.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import json
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from functions.common.errors import SlimserveError
from functions.common.routing import set_metric_sink

from .apigw import LambdaContext

Handler = Callable[[dict[str, Any], Any], Any]


def _handler(target: str | Handler) -> Handler:
    if callable(target):
        return target
    module = importlib.import_module(target)
    return module.lambda_handler  # type: ignore[no-any-return]


def function_name_of(name_or_arn: str) -> str:
    """'slimserve-release', or the name inside a function ARN (a qualifier after it dropped)."""
    if name_or_arn.startswith("arn:"):
        return name_or_arn.split(":")[6]
    return name_or_arn.split(":")[0]


def error_payload(exc: BaseException) -> dict[str, Any]:
    """What Lambda answers for an unhandled exception: Step Functions catches it by errorType."""
    message = exc.message if isinstance(exc, SlimserveError) else str(exc)
    return {"errorType": type(exc).__name__, "errorMessage": message,
            "stackTrace": traceback.format_exception(exc)[-3:]}


class Dispatcher:
    """Function name -> handler; each call answers as Lambda's Invoke does (payload, function error)."""

    def __init__(self, handlers: Mapping[str, str | Handler]) -> None:
        self.targets = dict(handlers)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def invoke(self, name_or_arn: str, event: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        name = function_name_of(name_or_arn)
        if name not in self.targets:
            raise KeyError(f"no local handler for function {name!r}: known {sorted(self.targets)}")
        self.calls.append((name, event))
        try:
            return _handler(self.targets[name])(event, LambdaContext(function_name=name)), None
        except Exception as exc:  # Lambda turns any exception into a function error
            return error_payload(exc), "Unhandled"


@contextlib.contextmanager
def lambda_dispatch(handlers: Mapping[str, str | Handler]) -> Iterator[Dispatcher]:
    """Within this block, moto's Lambda invoke (Docker-free backend) runs the named real handlers."""
    from moto.awslambda_simple.models import LambdaSimpleBackend

    dispatcher = Dispatcher(handlers)
    original = LambdaSimpleBackend.invoke

    def invoke(self: Any, function_name: str, qualifier: str | None, body: Any, headers: Any,
               response_headers: Any) -> bytes:
        event = json.loads(body) if body else {}
        payload, function_error = dispatcher.invoke(function_name, event)
        if function_error:
            response_headers["x-amz-function-error"] = function_error
        return json.dumps(payload).encode()

    LambdaSimpleBackend.invoke = invoke  # type: ignore[method-assign]
    try:
        yield dispatcher
    finally:
        LambdaSimpleBackend.invoke = original  # type: ignore[method-assign]


def emf_to_metric_data(record: dict[str, Any], timestamp: dt.datetime | None = None
                       ) -> tuple[str, list[dict[str, Any]]]:
    """One EMF record as put_metric_data arguments: its namespace and one datum per metric.

    Only the record's most specific dimension set is sent: moto matches a query's dimensions as a
    subset, so the other sets would count every request twice; on AWS each set is its own metric."""
    directive = record["_aws"]["CloudWatchMetrics"][0]
    dimensions = max(directive["Dimensions"], key=len)
    timestamp = timestamp or dt.datetime.fromtimestamp(record["_aws"]["Timestamp"] / 1000, dt.UTC)
    data = [{"MetricName": m["Name"], "Value": float(record[m["Name"]]), "Unit": m.get("Unit", "None"),
             "Timestamp": timestamp, "Dimensions": [{"Name": d, "Value": str(record[d])} for d in dimensions]}
            for m in directive["Metrics"]]
    return directive["Namespace"], data


@contextlib.contextmanager
def forward_emf(cloudwatch: Any, clock: Callable[[], dt.datetime] | None = None
                ) -> Iterator[list[dict[str, Any]]]:
    """Within this block, every EMF record the handlers emit is put into (moto's) CloudWatch, stamped
    with ``clock`` when given (a test spreads requests over minutes without waiting for them)."""
    records: list[dict[str, Any]] = []

    def put(record: dict[str, Any]) -> None:
        records.append(record)
        namespace, data = emf_to_metric_data(record, clock() if clock else None)
        for start in range(0, len(data), 1000):
            cloudwatch.put_metric_data(Namespace=namespace, MetricData=data[start:start + 1000])

    previous = set_metric_sink(put)
    try:
        yield records
    finally:
        set_metric_sink(previous)
