"""The Powertools kit of one function: Logger, Metrics and Tracer built once per service, the
handler decorators in one order, and the model version bound to every log line and metric.

A handler module starts with ``rt = Runtime.for_settings(XSettings)`` and decorates its entry
point with ``@rt.handler()``; a model-serving one builds its holder with ``rt.model_holder``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from aws_lambda_powertools import Logger, Metrics, Tracer

from .bundle import Model
from .holder import ModelHolder, ModelSource
from .routing import RoutingSource
from .settings import METRICS_NAMESPACE, ModelSettings, Settings

Handler = TypeVar("Handler", bound=Callable[..., Any])
TRACED_MODULES = ("botocore",)


class Runtime:
    def __init__(self, service: str) -> None:
        self.service = service
        self.logger = Logger(service=service)
        self.metrics = Metrics(namespace=METRICS_NAMESPACE, service=service)
        # X-Ray patches the one client library the functions call (the SDK), not every library it knows.
        self.tracer = Tracer(service=service, patch_modules=TRACED_MODULES)
        self._bound: dict[str, str] = {}  # keys every log line carries, kept across invocations

    @classmethod
    def for_settings(cls, settings: type[Settings]) -> Runtime:
        return cls(settings.service)

    def bind_model(self, model: Model) -> None:
        """From now on every log line and every metric carries ``model_version``."""
        self._bound["model_version"] = model.version
        self.logger.append_keys(model_version=model.version)
        self.metrics.set_default_dimensions(model_version=model.version)

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
                cold_start_metric: bool = False) -> Callable[[Handler], Handler]:
        """Logging context (fresh per invocation, bound keys kept), metrics flushed, traced."""

        def decorate(fn: Handler) -> Handler:
            @functools.wraps(fn)
            def with_bound_keys(event: Any, context: Any) -> Any:
                if self._bound:  # inject_lambda_context(clear_state=True) dropped them
                    self.logger.append_keys(**self._bound)
                return fn(event, context)

            wrapped: Any = self.tracer.capture_lambda_handler(with_bound_keys)
            if metrics:
                wrapped = self.metrics.log_metrics(capture_cold_start_metric=cold_start_metric)(wrapped)
            wrapped = self.logger.inject_lambda_context(correlation_id_path=correlation_id_path,
                                                        clear_state=True)(wrapped)
            return functools.wraps(fn)(wrapped)  # type: ignore[return-value]

        return decorate
