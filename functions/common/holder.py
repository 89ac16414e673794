"""The model of an execution environment: where bundles come from (a ModelSource) and the holder
that loads one once, fails closed and retries later.

Handlers only ever call ``holder.load()``. Today the one source is the pinned URI of the
settings; a source that routes between registry versions plugs in here without touching them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .bundle import Model, load_model, reader_for_uri
from .errors import ConfigurationError, ModelUnavailable, SlimserveError
from .settings import ModelSettings

# What a caller of a function that has no model is told; the reason goes to the log only.
UNAVAILABLE_MESSAGE = "no verified model is loaded; try again later"


class Log(Protocol):
    """A logger: the standard library's or Powertools' (structured JSON on Lambda)."""

    def error(self, msg: str, *args: Any, **kwargs: Any) -> Any: ...


class ModelSource(Protocol):
    """Where the bundles of an execution environment come from."""

    def describe(self) -> str:
        """Where this source reads from, for operators' logs (never for callers)."""
        ...

    def load(self) -> Model:
        """A verified model; raises a SlimserveError (BundleError, AwsError) when none can be had."""
        ...


class PinnedSource:
    """The bundle at the settings' MODEL_URI, checked against MODEL_MANIFEST_SHA256 when it is set."""

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings

    def describe(self) -> str:
        return self.settings.model_uri or ""

    def load(self) -> Model:
        s = self.settings
        if s.model_uri is None:
            raise ConfigurationError("no MODEL_URI: this environment routes through the registry")
        return load_model(reader_for_uri(s.model_uri), expected_manifest_sha256=s.model_manifest_sha256,
                          max_rows=s.max_rows, threads=s.ort_threads, defer_explanations=True)


class ModelHolder:
    """Holds the one model of this execution environment.

    A load failure is remembered and answered with 503 (never a guess); a new attempt is made
    at most every ``retry_load_seconds`` so that a transient S3 error does not brick the
    environment while a tampered bundle keeps failing closed. Callers see a fixed message; the
    reason (bucket, key, onnxruntime's words) is logged.
    """

    def __init__(self, source: ModelSource, *, retry_load_seconds: float = 30.0,
                 on_load: Callable[[Model], None] | None = None, logger: Log | None = None) -> None:
        self.source = source
        self.log: Log = logger or logging.getLogger("slimserve.model")
        self.retry_load_seconds = retry_load_seconds
        self._on_load = on_load
        self._model: Model | None = None
        self._error: SlimserveError | None = None
        self._failed_at = 0.0
        self._lock = threading.Lock()

    @classmethod
    def pinned(cls, settings: ModelSettings, *, on_load: Callable[[Model], None] | None = None,
               logger: Log | None = None) -> ModelHolder:
        return cls(PinnedSource(settings), retry_load_seconds=settings.retry_load_seconds, on_load=on_load,
                   logger=logger)

    def load(self) -> Model:
        model = self._model
        if model is not None:
            return model
        with self._lock:
            if self._model is not None:
                return self._model
            if self._error is not None and time.monotonic() - self._failed_at < self.retry_load_seconds:
                raise ModelUnavailable(UNAVAILABLE_MESSAGE)
            try:
                model = self.source.load()
            except SlimserveError as exc:
                self._error, self._failed_at = exc, time.monotonic()
                self.log.error("model failed to load; answering 503 until it loads",
                          extra={"reason": exc.message, "code": exc.code, "model_source": self.source.describe()})
                raise ModelUnavailable(UNAVAILABLE_MESSAGE) from None
            self._model, self._error = model, None
            if self._on_load is not None:
                self._on_load(model)
            return model

    def preload(self) -> None:
        """Load at cold start (Lambda's init phase); a failure is remembered and logged, not raised."""
        with contextlib.suppress(ModelUnavailable):
            self.load()

    @property
    def last_error(self) -> SlimserveError | None:
        return self._error
