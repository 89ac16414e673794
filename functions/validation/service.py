"""Run the gate end to end: load and verify bundles, read the holdout, judge, report, register."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import IO, Any

from ..common.bundle import Model, load_model, read_manifest
from ..common.errors import BundleError
from ..common.layout import REPORT_FILE
from ..common.manifest import MANIFEST_FILE, Manifest, sha256_hex
from .gate import GateConfig, GateRefusal, LatencyProbe, incompatibility, judge, read_holdout, refused


def validate(candidate_reader: Callable[[str], bytes], champion_reader: Callable[[str], bytes] | None,
             holdout: tuple[IO[bytes], str], config: GateConfig,
             measure_latency: LatencyProbe | None = None) -> dict[str, Any]:
    """The verdict as a report (a dict); never raises for a bad candidate, champion or holdout.

    `measure_latency` replaces the interleaved p99 measurement (tests pass fixed figures)."""
    started = time.perf_counter()
    manifest: Manifest | None = None
    try:
        try:
            manifest, raw = read_manifest(candidate_reader)
            candidate = load_model(candidate_reader, max_rows=10_000_000)
        except BundleError as exc:
            raise GateRefusal("bundle_invalid", f"candidate: {exc.message}") from None
        champion: Model | None = None
        if champion_reader is not None:
            try:
                champion = load_model(champion_reader, max_rows=10_000_000)
            except BundleError as exc:
                raise GateRefusal("champion_invalid", f"champion: {exc.message}") from None
        # A compatible champion may read columns the candidate dropped: the holdout rows carry them too.
        theirs = champion.manifest if champion is not None else None
        rows = read_holdout(holdout[0], holdout[1], manifest, config,
                            theirs if theirs is not None and incompatibility(manifest, theirs) is None else None)
        bundle_bytes = len(raw) + sum(manifest.sizes.values())
        report = judge(candidate, champion, rows, config, bundle_bytes, measure_latency)
        report["manifest_sha256"] = sha256_hex(raw)
    except GateRefusal as exc:
        report = refused(exc.reason, exc.detail, manifest)
    report["champion_given"] = champion_reader is not None
    report["config"] = config.model_dump()
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=float) + "\n"


__all__ = ["MANIFEST_FILE", "REPORT_FILE", "report_json", "validate"]
