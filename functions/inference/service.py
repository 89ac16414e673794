"""Inference logic behind the handler: model lifecycle (load once, fail closed) and prediction."""

from __future__ import annotations

import threading
import time

from ..common.bundle import Model, load_model, reader_for_uri
from ..common.errors import ModelUnavailable, SlimserveError
from ..common.settings import InferenceSettings


class ModelHolder:
    """Holds the one model of this execution environment.

    A load failure is remembered and answered with 503 (never a guess); a new attempt is made
    at most every ``retry_load_seconds`` so that a transient S3 error does not brick the
    environment while a tampered bundle keeps failing closed.
    """

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self._model: Model | None = None
        self._error: SlimserveError | None = None
        self._failed_at = 0.0
        self._lock = threading.Lock()

    def load(self) -> Model:
        model = self._model
        if model is not None:
            return model
        with self._lock:
            if self._model is not None:
                return self._model
            settings = self.settings
            if self._error is not None and time.monotonic() - self._failed_at < settings.retry_load_seconds:
                raise ModelUnavailable(f"model unavailable: {self._error.message}")
            try:
                self._model = load_model(reader_for_uri(settings.model_uri),
                                         expected_manifest_sha256=settings.model_manifest_sha256,
                                         max_rows=settings.max_rows, threads=settings.ort_threads)
            except SlimserveError as exc:
                self._error, self._failed_at = exc, time.monotonic()
                raise ModelUnavailable(f"model unavailable: {exc.message}") from None
            self._error = None
            return self._model

    @property
    def last_error(self) -> SlimserveError | None:
        return self._error
