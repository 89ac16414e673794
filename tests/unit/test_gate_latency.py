"""The gate's latency measurement: candidate and champion timed in the same run, calls interleaved,
so load that rises while the gate runs falls on both alike. A fake clock stands in for time."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from functions.validation.gate import GateConfig, Holdout, Latency, interleaved_p99_ms, latency_check


class RisingLoad:
    """A clock whose every call costs more the later it happens (a machine getting busier)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def spend(self, cost: float) -> None:
        self.now += cost * (1.0 + self.now)


class Stub:
    def __init__(self, names: list[str], cost: float, clock: RisingLoad) -> None:
        self.manifest = SimpleNamespace(feature_names=names)
        self.schema = SimpleNamespace(to_feeds=self._feeds)
        self.cost, self.clock, self.widths = cost, clock, set()

    def _feeds(self, rows: list[list[Any]]) -> list[list[Any]]:
        self.widths.update(len(r) for r in rows)
        return rows

    def score(self, feeds: Any) -> None:
        self.clock.spend(self.cost)


def holdout() -> Holdout:
    rows = [[float(i), float(i) * 2] for i in range(60)]
    return Holdout(rows=rows, labels=np.zeros(60), columns=["a", "b"])


def test_equal_models_measure_equal_under_rising_load() -> None:
    clock = RisingLoad()
    candidate, champion = Stub(["a"], 1e-3, clock), Stub(["a", "b"], 1e-3, clock)
    latency = interleaved_p99_ms(candidate, champion, holdout(), 300, clock=clock)  # type: ignore[arg-type]
    assert latency.champion_p99_ms is not None
    assert abs(latency.candidate_p99_ms / latency.champion_p99_ms - 1) < 0.01
    assert candidate.widths == {1} and champion.widths == {2}  # each reads its own columns


def test_a_slower_candidate_is_seen_as_slower_whatever_the_load() -> None:
    clock = RisingLoad()
    latency = interleaved_p99_ms(Stub(["a"], 2e-3, clock), Stub(["a"], 1e-3, clock), holdout(), 300,  # type: ignore[arg-type]
                                 clock=clock)
    assert latency.champion_p99_ms is not None
    assert 1.9 < latency.candidate_p99_ms / latency.champion_p99_ms < 2.1


def test_the_rule_is_relative_with_a_champion_and_absolute_without() -> None:
    config = GateConfig()
    assert latency_check(Latency(16.0, 18.0), config).passed  # a loaded machine slows both
    assert not latency_check(Latency(2.0, 0.25), config).passed
    assert latency_check(Latency(0.6, 0.1), config).passed  # within 1.5 x 0.1 + 0.5 ms: sub-millisecond noise
    assert latency_check(Latency(16.0), config).passed and not latency_check(Latency(101.0), config).passed
    assert not latency_check(Latency(150.0, 120.0), config).passed  # the absolute budget still holds
