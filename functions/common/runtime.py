"""The Powertools kit of one function: Logger, Metrics and Tracer built once per service, the
handler decorators in one order, and the model version bound to every log line and metric.

A handler module starts with ``rt = Runtime.for_settings(XSettings)`` and decorates its entry
point with ``@rt.handler()``; a model-serving one builds its holder with ``rt.model_holder``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from aws_lambda_powertools import Logger, Metrics, Tracer

from .bundle import Model
from .holder import ModelHolder, ModelSource
from .routing import RoutingSource
from .settings import METRICS_NAMESPACE, ModelSettings, Settings

Handler = TypeVar("Handler", bound=Callable[..., Any])
TRACED_MODULES = ("botocore",)
TRACE_HEADER = "_X_AMZN_TRACE_ID"  # set by the Lambda runtime before each invocation
NOT_TRACED: AbstractContextManager[None] = contextlib.nullcontext()


class Runtime:
    def __init__(self, service: str) -> None:
        self.service = service
        self.logger = Logger(service=service)
        self.metrics = Metrics(namespace=METRICS_NAMESPACE, service=service)
        # X-Ray patches the one client library the functions call (the SDK), not every library it knows.
        self.tracer = Tracer(service=service, patch_modules=TRACED_MODULES)
        self._xray_context = None if self.tracer.disabled else header_per_invocation(self.tracer.provider)
        self._bound: dict[str, str] = {}  # keys every log line carries, kept across invocations
        self._cold_start = True

    @classmethod
    def for_settings(cls, settings: type[Settings]) -> Runtime:
        return cls(settings.service)

    def bind_model(self, model: Model) -> None:
        """From now on every log line and every metric carries ``model_version``."""
        self._bound["model_version"] = model.version
        self.logger.append_keys(model_version=model.version)
        self.metrics.set_default_dimensions(model_version=model.version)

    @property
    def metric_dimensions(self) -> dict[str, str]:
        """The dimensions Powertools' Metrics gives this function's metrics: service, then the bound model version."""
        return {"service": self.service, **self._bound}

    def model_holder(self, settings: ModelSettings, source: ModelSource | None = None) -> ModelHolder:
        """The holder of this environment's model, bound to this runtime's logs and metrics."""
        if source is None:
            return ModelHolder.pinned(settings, on_load=self.bind_model, logger=self.logger)
        return ModelHolder(source, retry_load_seconds=settings.retry_load_seconds, on_load=self.bind_model,
                           logger=self.logger)

    def serving_models(self, settings: ModelSettings) -> ModelHolder | RoutingSource:
        """A pinned bundle's holder when MODEL_URI is set, else the registry's routing of MODEL_NAME."""
        if not settings.routed:
            return self.model_holder(settings)
        from . import aws
        from .registry import Registry

        assert settings.registry_table and settings.model_name  # checked by the settings
        table, name = settings.registry_table, settings.model_name
        return RoutingSource.from_settings(settings, lambda: Registry(aws.client("dynamodb"), table).routing(name),
                                           logger=self.logger)

    def handler(self, *, correlation_id_path: str | None = None, metrics: bool = True,
                cold_start_metric: bool = False, trace: bool = True) -> Callable[[Handler], Handler]:
        """Logging context (fresh per invocation, bound keys kept, the correlation id read from the
        event), metrics flushed, and a ``## <handler>`` subsegment unless ``trace=False``: a handler
        that says so opens its own with :meth:`subsegment`, and pays nothing on unsampled requests."""
        correlation_id = None if correlation_id_path is None else correlation_reader(correlation_id_path)

        def decorate(fn: Handler) -> Handler:
            # The response stays out of the trace: it can be large, and it is the caller's data.
            traced: Any = self.tracer.capture_lambda_handler(fn, capture_response=False) if trace else fn

            @functools.wraps(fn)
            def invoke(event: Any, context: Any) -> Any:
                self._begin(event, context, correlation_id)
                try:
                    response = traced(event, context)
                    if cold_start_metric and self._cold_start:
                        self.metrics.provider.add_cold_start_metric(context=context)
                    return response
                finally:
                    self._end(metrics)

            return invoke  # type: ignore[return-value]

        return decorate

    def _begin(self, event: Any, context: Any, correlation_id: Callable[[Any], Any] | None) -> None:
        # What Logger.inject_lambda_context(clear_state=True) sets, in one call: a fresh logging
        # context with the Lambda context's keys, the bound keys (model version) and the correlation id.
        keys: dict[str, Any] = {
            "cold_start": self._cold_start, "function_name": context.function_name,
            "function_memory_size": context.memory_limit_in_mb, "function_arn": context.invoked_function_arn,
            "function_request_id": context.aws_request_id, **self._bound}
        if correlation_id is not None:
            keys["correlation_id"] = correlation_id(event)
        self.logger.structure_logs(**keys)
        if self._xray_context is not None:  # the header stands still until the invocation ends
            self._xray_context.header = os.environ.get(TRACE_HEADER)

    def _end(self, metrics: bool) -> None:
        # Metrics.log_metrics, less its warning and its work on every call that added no metric.
        self._cold_start = False
        if self._xray_context is not None:
            self._xray_context.header = None
        if metrics and self.metrics.metric_set:
            self.metrics.flush_metrics()

    def sampled(self) -> bool:
        """Whether X-Ray records this invocation: the Tracer is on and the runtime's trace header says so."""
        if self._xray_context is None:
            return False
        header = self._xray_context.header or os.environ.get(TRACE_HEADER) or ""
        return "Sampled=1" in header

    def subsegment(self, name: str, **annotations: str) -> AbstractContextManager[Any]:
        """A subsegment with these annotations and ColdStart on sampled invocations; nothing at all
        otherwise, where the X-Ray SDK would still parse the trace header several times to discard it."""
        if not self.sampled():
            return NOT_TRACED
        return _Annotated(self.tracer.provider.in_subsegment(name=name), {"ColdStart": self._cold_start,
                                                                          **annotations})


class _Annotated:
    """The X-Ray SDK's subsegment context manager, its annotations put on entry."""

    def __init__(self, subsegment: Any, annotations: dict[str, Any]) -> None:
        self._subsegment, self._annotations = subsegment, annotations

    def __enter__(self) -> Any:
        subsegment = self._subsegment.__enter__()
        for key, value in self._annotations.items():
            subsegment.put_annotation(key, value)
        return subsegment

    def __exit__(self, *exc_info: Any) -> Any:
        return self._subsegment.__exit__(*exc_info)

def correlation_reader(path: str) -> Callable[[Any], Any]:
    """A Powertools correlation id path as a function of the event: a path of plain keys is walked
    directly (a JMESPath query per request cost more than the rest of the logging context)."""
    keys = path.split(".")
    if not all(key.isidentifier() for key in keys):
        from aws_lambda_powertools.utilities import jmespath_utils

        return lambda event: jmespath_utils.query(envelope=path, data=event)

    def walk(event: Any) -> Any:
        for key in keys:
            if not isinstance(event, dict):
                return None
            event = event.get(key)
        return event

    return walk


def header_per_invocation(recorder: Any) -> Any:
    """Give the X-Ray recorder a Lambda context that reads the trace header once per invocation.

    The SDK's own reads the environment and parses the header on every call (six times for one
    subsegment). This one is handed the environment's header when an invocation starts (``header``;
    None outside one: read from the environment) and makes a new facade segment only when it
    changes. Returns the context, or None where the recorder is not in Lambda mode."""
    from aws_xray_sdk.core.lambda_launcher import LAMBDA_TRACE_HEADER_KEY, LambdaContext

    if type(recorder.context) is not LambdaContext:
        return None

    class PerInvocation(LambdaContext):  # type: ignore[misc]
        header: str | None = None

        def get_trace_entity(self) -> Any:
            header, local = self.header or os.environ.get(LAMBDA_TRACE_HEADER_KEY), self._local
            if header is None or header != getattr(local, "trace_header", None) or \
                    getattr(local, "segment", None) is None:
                self._refresh_context()  # a new invocation: a new facade segment
                local.trace_header = header
            entities = getattr(local, "entities", None)
            return entities[-1] if entities else local.segment

    context = PerInvocation()
    recorder.configure(context=context)
    return context
