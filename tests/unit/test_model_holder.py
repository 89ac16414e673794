"""The model holder behind its ModelSource seam: load once, fail closed with a fixed message, retry later."""

from __future__ import annotations

from typing import Any

import pytest

from functions.common.errors import BundleError, ModelUnavailable
from functions.common.holder import UNAVAILABLE_MESSAGE, ModelHolder, PinnedSource
from functions.common.settings import InferenceSettings


class FakeModel:
    version = "v7"


class ScriptedSource:
    """A source that fails the first ``failures`` loads, then serves a model."""

    def __init__(self, failures: int = 0) -> None:
        self.failures, self.calls = failures, 0

    def describe(self) -> str:
        return "s3://secret-bucket/models/m/v7/"

    def load(self) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise BundleError("bundle file s3://secret-bucket/models/m/v7/manifest.json is missing")
        return FakeModel()


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.lines.append((msg, kwargs.get("extra", {})))


def test_any_source_plugs_in_and_is_loaded_once() -> None:
    source, loaded = ScriptedSource(), []
    holder = ModelHolder(source, on_load=loaded.append)
    assert holder.load() is holder.load()
    assert source.calls == 1 and [m.version for m in loaded] == ["v7"]


def test_a_failure_answers_a_fixed_message_and_logs_the_reason() -> None:
    log = Log()
    holder = ModelHolder(ScriptedSource(failures=1), retry_load_seconds=3600, logger=log)
    for _ in range(2):  # the second call is inside the retry window: no new attempt
        with pytest.raises(ModelUnavailable) as raised:
            holder.load()
        assert raised.value.message == UNAVAILABLE_MESSAGE and "secret-bucket" not in raised.value.message
    assert len(log.lines) == 1 and "secret-bucket" in log.lines[0][1]["reason"]
    assert holder.last_error is not None and holder.last_error.code == "bundle_invalid"


def test_a_failed_load_is_retried_after_the_window() -> None:
    source = ScriptedSource(failures=1)
    holder = ModelHolder(source, retry_load_seconds=0, logger=Log())
    holder.preload()  # remembered, not raised
    assert holder.load().version == "v7" and source.calls == 2 and holder.last_error is None


def test_the_pinned_source_reads_the_settings_uri() -> None:
    settings = InferenceSettings(model_uri="s3://models/m/v1/", retry_load_seconds=5)
    holder = ModelHolder.pinned(settings)
    assert isinstance(holder.source, PinnedSource) and holder.source.describe() == "s3://models/m/v1/"
    assert holder.retry_load_seconds == 5
