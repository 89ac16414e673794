"""Which model scores a batch file.

A whole file is scored by the champion the registry's routing item names when the file starts
(one read per file); a Distributed Map run is scored by the bundle its execution input names, the
champion when the run started, so a promotion during the run cannot mix versions. A pinned bundle
(MODEL_URI: `slimserve score`, tests) scores everything and is recorded as role "pinned".
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..common.bundle import Model, load_model, reader_for_uri
from ..common.errors import ModelUnavailable
from ..common.holder import ModelHolder
from ..common.routing import RoutingSource
from ..common.settings import ModelSettings

PINNED, CHAMPION = "pinned", "champion"
KEPT_BUNDLES = 2  # the champion and the one it replaced: a run started before a promotion still finishes


@dataclass(frozen=True)
class Scorer:
    """The model that scores one file or one run, and where it came from."""

    model: Model
    role: str
    uri: str
    manifest_sha256: str

    def describe(self) -> dict[str, Any]:
        """What a manifest records of the model."""
        return {"name": self.model.manifest.name, "version": self.model.version, "role": self.role}

    def run_input(self) -> dict[str, str]:
        """What a Distributed Map run carries so each chunk loads exactly this bundle."""
        return {"model_uri": self.uri, "model_manifest_sha256": self.manifest_sha256, "model_role": self.role}


class BatchModels:
    """The bundles of one execution environment, cached by (bundle URI, manifest sha256)."""

    def __init__(self, serving: ModelHolder | RoutingSource, load_bundle: Callable[[str, str], Model], *,
                 pinned_uri: str | None = None, pinned_sha256: str | None = None) -> None:
        self.serving, self.load_bundle = serving, load_bundle
        self.pinned_uri, self.pinned_sha256 = pinned_uri, pinned_sha256 or ""
        self._bundles: dict[tuple[str, str], Model] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: ModelSettings, serving: ModelHolder | RoutingSource) -> BatchModels:
        def load_bundle(uri: str, manifest_sha256: str) -> Model:
            return load_model(reader_for_uri(uri), expected_manifest_sha256=manifest_sha256 or None,
                              max_rows=settings.max_rows, threads=settings.ort_threads)

        return cls(serving, load_bundle, pinned_uri=settings.model_uri, pinned_sha256=settings.model_manifest_sha256)

    def current(self) -> Scorer:
        """The champion now (one read of the routing item), or the pinned bundle; ModelUnavailable if none."""
        if isinstance(self.serving, RoutingSource):
            routing = self.serving.routing()
            if routing.champion_version is None or not routing.champion_uri:
                raise ModelUnavailable(f"model {routing.model} has no champion yet: release one first")
            uri, sha = routing.champion_uri, routing.champion_sha256
            return Scorer(self.bundle(uri, sha), CHAMPION, uri, sha)
        return Scorer(self.serving.load(), PINNED, self.pinned_uri or "", self.pinned_sha256)

    def for_run(self, uri: str | None, manifest_sha256: str | None, role: str | None) -> Scorer:
        """The bundle a Distributed Map run was started with; never the routing item."""
        if uri:
            sha = manifest_sha256 or ""
            return Scorer(self.bundle(uri, sha), role or CHAMPION, uri, sha)
        if isinstance(self.serving, RoutingSource):
            raise ModelUnavailable("the run's input names no model bundle")
        return self.current()  # a run started before runs carried their bundle, under a pinned bundle

    def bundle(self, uri: str, manifest_sha256: str) -> Model:
        key = (uri, manifest_sha256)
        with self._lock:
            model = self._bundles.get(key)
            if model is None:
                model = self.load_bundle(uri, manifest_sha256)
                self._bundles[key] = model
                for stale in list(self._bundles)[:-KEPT_BUNDLES]:
                    del self._bundles[stale]
            return model
