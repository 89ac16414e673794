"""What the function kit traces and writes per request: a model subsegment on sampled invocations
only, one facade segment per invocation, and one EMF record carrying every per-request metric."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import redirect_stdout
from typing import Any

import pytest
from aws_xray_sdk import global_sdk_config
from aws_xray_sdk.core.lambda_launcher import LambdaContext as XRayLambdaContext
from aws_xray_sdk.core.recorder import AWSXRayRecorder

from functions.common.routing import ROLE_DIMENSIONS, VERSION_DIMENSIONS, emit_request_metrics, set_metric_sink
from functions.common.runtime import Runtime, correlation_reader, header_per_invocation
from pipeline.local.apigw import LambdaContext

SAMPLED = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
SAMPLED_NEXT = "Root=1-5759e988-bd862e3fe1be46a994272795;Parent=53995c3f42cd8ad8;Sampled=1"
UNSAMPLED = "Root=1-5759e988-bd862e3fe1be46a994272794;Parent=53995c3f42cd8ad9;Sampled=0"


class Daemon:
    """Stands in for the UDP emitter: keeps what would be sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_entity(self, entity: Any) -> None:
        self.sent.append(json.loads(entity.serialize()))

    def set_daemon_address(self, address: str) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[AWSXRayRecorder, Daemon]]:
    enabled = global_sdk_config.sdk_enabled()
    global_sdk_config.set_sdk_enabled(True)  # a disabled Tracer elsewhere in the process turned it off
    daemon = Daemon()
    xray = AWSXRayRecorder()
    xray.configure(context=XRayLambdaContext(), emitter=daemon, streaming_threshold=0)
    try:
        yield xray, daemon
    finally:
        global_sdk_config.set_sdk_enabled(enabled)


@pytest.fixture
def traced(recorder: tuple[AWSXRayRecorder, Daemon]) -> tuple[Runtime, Daemon]:
    xray, daemon = recorder
    rt = Runtime("tracing-test")
    global_sdk_config.set_sdk_enabled(True)  # the Tracer, disabled off Lambda, turned the SDK off again
    rt.tracer.disabled, rt.tracer.provider = False, xray  # as on Lambda, with this recorder
    rt._xray_context = header_per_invocation(xray)
    return rt, daemon


def handler_with_model_subsegment(rt: Runtime) -> Any:
    @rt.handler(trace=False, metrics=False)
    def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
        with rt.subsegment("## model", model_version="v7", model_role="canary"):
            return {"statusCode": 200}

    return handle


def test_a_sampled_invocation_sends_the_model_subsegment_with_its_annotations(
        traced: tuple[Runtime, Daemon], monkeypatch: pytest.MonkeyPatch) -> None:
    rt, daemon = traced
    handle = handler_with_model_subsegment(rt)
    monkeypatch.setenv("_X_AMZN_TRACE_ID", SAMPLED)
    handle({}, LambdaContext())
    handle({}, LambdaContext())
    first, second = daemon.sent
    assert first["name"] == "## model" and first["trace_id"] == "1-5759e988-bd862e3fe1be46a994272793"
    assert first["annotations"] == {"ColdStart": True, "model_version": "v7", "model_role": "canary"}
    assert second["annotations"]["ColdStart"] is False
    assert "metadata" not in first  # no response or payload recorded


def test_a_traced_handler_keeps_its_response_out_of_the_trace(traced: tuple[Runtime, Daemon],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    rt, daemon = traced

    @rt.handler(metrics=False)
    def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"statusCode": 200, "body": "the caller's data"}

    monkeypatch.setenv("_X_AMZN_TRACE_ID", SAMPLED)
    handle({}, LambdaContext())
    (sent,) = daemon.sent
    assert sent["name"] == "## handle" and "the caller's data" not in json.dumps(sent)


def test_an_unsampled_invocation_sends_nothing(traced: tuple[Runtime, Daemon],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    rt, daemon = traced
    monkeypatch.setenv("_X_AMZN_TRACE_ID", UNSAMPLED)
    handler_with_model_subsegment(rt)({}, LambdaContext())
    assert daemon.sent == [] and not rt.sampled()


def test_each_invocation_gets_its_own_facade_segment(recorder: tuple[AWSXRayRecorder, Daemon],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    xray, _ = recorder
    context = header_per_invocation(xray)
    for header, root in ((SAMPLED, "272793"), (SAMPLED_NEXT, "272795")):
        monkeypatch.setenv("_X_AMZN_TRACE_ID", header)  # the runtime sets it, the kit hands it over
        context.header = header
        segment = xray.current_segment()
        assert segment.trace_id.endswith(root) and xray.current_segment() is segment
    context.header = None  # outside an invocation: read from the environment
    monkeypatch.setenv("_X_AMZN_TRACE_ID", SAMPLED)
    assert xray.current_segment().trace_id.endswith("272793")


def test_correlation_ids_are_read_as_jmespath_reads_them() -> None:
    event = {"requestContext": {"requestId": "r-1"}, "headers": {"x-id": "h"}, "Records": [{"id": "a"}]}
    assert correlation_reader("requestContext.requestId")(event) == "r-1"
    assert correlation_reader("requestContext.requestId")({"requestContext": None}) is None
    assert correlation_reader("requestContext.requestId")({}) is None
    assert correlation_reader('headers."x-id"')(event) == "h"
    assert correlation_reader("Records[0].id")(event) == "a"


def test_one_emf_record_carries_the_role_and_the_function_metrics() -> None:
    records: list[dict[str, Any]] = []
    previous = set_metric_sink(records.append)
    try:
        emit_request_metrics("churn", "champion", "v1", status=200, latency_ms=2.5, counts={"Predictions_yes": 1},
                             function_metrics=({"service": "inference", "model_version": "v1"},
                                               {"PredictedRows": (1, "Count"), "ModelLatency": (2.5, "Milliseconds")}))
    finally:
        set_metric_sink(previous)
    (record,) = records
    roles, function = record["_aws"]["CloudWatchMetrics"]
    assert roles["Dimensions"] == [ROLE_DIMENSIONS, VERSION_DIMENSIONS]
    assert function["Dimensions"] == [["service", "model_version"]]
    assert {m["Name"] for m in function["Metrics"]} == {"PredictedRows", "ModelLatency"}
    assert (record["service"], record["PredictedRows"], record["ModelLatency"]) == ("inference", 1, 2.5)


def test_a_handler_that_adds_no_metric_writes_no_empty_record() -> None:
    rt = Runtime("metrics-test")

    @rt.handler()
    def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"statusCode": 200}

    out = io.StringIO()
    with redirect_stdout(out), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        handle({}, LambdaContext())
    assert '"_aws"' not in out.getvalue() and not caught


def test_log_lines_carry_the_invocation_and_no_key_outlives_it() -> None:
    rt = Runtime("logging-test")
    rt._bound["model_version"] = "v3"
    lines: list[dict[str, Any]] = []
    formatter = rt.logger.registered_formatter

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(formatter.format(record)))

    @rt.handler(correlation_id_path="requestContext.requestId", metrics=False)
    def handle(event: dict[str, Any], context: Any) -> None:
        rt.logger.append_keys(model_role=event.get("role"))
        rt.logger.info("scored")

    underlying = logging.getLogger(rt.service)
    capture, level = Capture(), underlying.level
    underlying.addHandler(capture)
    underlying.setLevel(logging.INFO)
    try:
        handle({"requestContext": {"requestId": "api-1"}, "role": "canary"}, LambdaContext(aws_request_id="lambda-1"))
        handle({"requestContext": {"requestId": "api-2"}}, LambdaContext(aws_request_id="lambda-2"))
    finally:
        underlying.removeHandler(capture)
        underlying.setLevel(level)
    first, second = lines
    assert (first["function_request_id"], first["correlation_id"], first["model_version"]) == \
        ("lambda-1", "api-1", "v3")
    assert first["cold_start"] is True and second["cold_start"] is False
    assert first["model_role"] == "canary" and (second["correlation_id"], second.get("model_role")) == ("api-2", None)
    assert first["function_name"] == "slimserve-inference" and first["function_memory_size"] == 1024
