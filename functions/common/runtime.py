"""The Powertools kit of one function: Logger, Metrics and Tracer built once per service, the
handler decorators in one order, and the model version bound to every log line and metric.

A handler module starts with ``rt = Runtime.for_settings(XSettings)`` and decorates its entry
point with ``@rt.handler()``; a model-serving one builds its holder with ``rt.model_holder``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from aws_lambda_powertools import Logger, Metrics, Tracer

from .bundle import Model
from .holder import ModelHolder, ModelSource
from .routing import RoutingSource
from .settings import METRICS_NAMESPACE, ModelSettings, Settings

Handler = TypeVar("Handler", bound=Callable[..., Any])
TRACED_MODULES = ("botocore",)
NOT_TRACED: AbstractContextManager[None] = contextlib.nullcontext()


class Runtime:
    def __init__(self, service: str) -> None:
        self.service = service
        self.logger = Logger(service=service)
        self.metrics = Metrics(namespace=METRICS_NAMESPACE, service=service)
        # X-Ray patches the one client library the functions call (the SDK), not every library it knows.
        self.tracer = Tracer(service=service, patch_modules=TRACED_MODULES)
        if not self.tracer.disabled:
            parse_trace_header_once(self.tracer.provider)
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
            @functools.wraps(fn)
            def with_bound_keys(event: Any, context: Any) -> Any:
                if self._bound:  # inject_lambda_context(clear_state=True) dropped them
                    self.logger.append_keys(**self._bound)
                if correlation_id is not None:
                    self.logger.set_correlation_id(correlation_id(event))
                return fn(event, context)

            traced: Any = self.tracer.capture_lambda_handler(with_bound_keys) if trace else with_bound_keys

            @functools.wraps(fn)
            def with_metrics(event: Any, context: Any) -> Any:
                # log_metrics, less its warning and work on every call that added no metric of its own
                try:
                    response = traced(event, context)
                    if cold_start_metric and self._cold_start:
                        self.metrics.provider.add_cold_start_metric(context=context)
                    return response
                finally:
                    self._cold_start = False
                    if metrics and self.metrics.metric_set:
                        self.metrics.flush_metrics()

            wrapped = self.logger.inject_lambda_context(clear_state=True)(with_metrics)
            return functools.wraps(fn)(wrapped)  # type: ignore[return-value]

        return decorate

    def sampled(self) -> bool:
        """Whether X-Ray records this invocation: the Tracer is on and the runtime's trace header says so."""
        return not self.tracer.disabled and "Sampled=1" in os.environ.get("_X_AMZN_TRACE_ID", "")

    def subsegment(self, name: str, **annotations: str) -> AbstractContextManager[Any]:
        """A subsegment with annotations (and ColdStart, Service) on sampled invocations; nothing at all
        otherwise, where the X-Ray SDK would still parse the trace header several times to discard it."""
        if not self.sampled():
            return NOT_TRACED
        return self._subsegment(name, annotations)

    @contextlib.contextmanager
    def _subsegment(self, name: str, annotations: dict[str, str]) -> Iterator[Any]:
        with self.tracer.provider.in_subsegment(name=name) as subsegment:
            subsegment.put_annotation(key="ColdStart", value=self._cold_start)
            subsegment.put_annotation(key="Service", value=self.service)
            for key, value in annotations.items():
                subsegment.put_annotation(key=key, value=value)
            yield subsegment


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


def parse_trace_header_once(recorder: Any) -> None:
    """X-Ray's Lambda context parses the runtime's trace header on every call (six times for one
    subsegment); this one parses it again only when it changes, once per invocation."""
    from aws_xray_sdk.core.lambda_launcher import LAMBDA_TRACE_HEADER_KEY, LambdaContext

    if type(recorder.context) is not LambdaContext:
        return

    class OncePerInvocation(LambdaContext):  # type: ignore[misc]
        def _refresh_context(self) -> None:
            header, local = os.environ.get(LAMBDA_TRACE_HEADER_KEY), self._local
            if header is not None and header == getattr(local, "trace_header", None) and \
                    getattr(local, "segment", None) is not None:
                return  # the same invocation: the segment it made stands
            super()._refresh_context()
            local.trace_header = header

    recorder.configure(context=OncePerInvocation())
