"""Drift statistics against the feature profile: shifts are seen, unshifted traffic is not flagged, and KS
from the profile's quantiles agrees with KS on the raw training rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import ks_2samp

from cdk.constructs.alarms import DRIFT_KS_MAX, DRIFT_PSI_MAX
from functions.common.manifest import PROFILE_QUANTILES, Feature, FeatureProfile
from functions.common.psi import EPSILON, psi, psi_by_name
from functions.common.settings import DriftSettings
from functions.drift.service import compare
from functions.drift.stats import NULL, UNSEEN, compare_categories, compare_numeric, ks_statistic, profile_cdf
from pipeline.bundling.profile import profile_features, quantiles
from tests import realdata

MIN_SAMPLES = DriftSettings.model_fields["min_samples"].default
KS_BOUND = 1 / (PROFILE_QUANTILES - 1)  # + 1/n_train: the profile CDF against the training rows' own CDF
FEATURES = ([Feature(name=n, type="number", nullable=True, nullable_reason="an imputer") for n in realdata.NUMERIC]
            + [Feature(name="plan", type="category", categories=realdata.PLANS),
               Feature(name="city", type="category", categories=realdata.CITIES)])
NAMES = [f.name for f in FEATURES]
TRAIN = realdata.features(5000, seed=0)
PROFILE = profile_features(FEATURES, TRAIN)
SAMPLERS = {
    "normal": lambda rng, n: rng.normal(0.0, 1.0, n),
    "lognormal": lambda rng, n: rng.lognormal(10.5, 0.5, n),
    "poisson": lambda rng, n: rng.poisson(4, n).astype(float),
    "integers": lambda rng, n: rng.integers(18, 90, n).astype(float),
}


def rows_of(frame: pd.DataFrame) -> list[dict[str, object]]:
    """Captured rows as the inference handler writes them: JSON values, null for a missing cell."""
    part = frame[NAMES].astype(object)
    return part.where(part.notna(), None).to_dict("records")  # type: ignore[no-any-return]


def flagged(profile: FeatureProfile, frame: pd.DataFrame) -> bool:
    found, _ = compare(profile, rows_of(frame), frozenset())
    return (max(c.psi for c in found.values()) > DRIFT_PSI_MAX.threshold
            or max(c.ks for c in found.values() if c.ks is not None) > DRIFT_KS_MAX.threshold)


@pytest.mark.parametrize("kind", sorted(SAMPLERS))
def test_ks_from_the_quantile_cdf_agrees_with_ks_2samp_on_the_raw_rows(kind: str) -> None:
    worst = 0.0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        train, live = SAMPLERS[kind](rng, 2000), SAMPLERS[kind](rng, 500)
        if seed % 2:
            live = live * 1.1 + np.std(train) * 0.2  # shifted as well: agreement must hold away from zero too
        ours = ks_statistic(quantiles(train), live)
        worst = max(worst, abs(ours - ks_2samp(train, live).statistic))
    assert worst <= KS_BOUND + 1 / 2000


def test_unshifted_real_shaped_traffic_is_rarely_flagged_over_200_seeds() -> None:
    alarms = sum(flagged(PROFILE, realdata.features(MIN_SAMPLES, seed=1000 + seed)) for seed in range(200))
    assert alarms / 200 <= 0.005  # measured: 0 of 200 at 1000 rows (docs/MONITORING.md)


@pytest.mark.parametrize("shift", ["age +8 years", "income x1.3", "plan mix", "new city", "nulls in visits"])
def test_a_synthetic_shift_is_detected_in_every_seed(shift: str) -> None:
    for seed in range(20):
        live = realdata.features(MIN_SAMPLES, seed=2000 + seed)
        rng = np.random.default_rng(seed)
        if shift == "age +8 years":
            live["age"] = live["age"] + 8
        elif shift == "income x1.3":
            live["income"] = live["income"] * 1.3
        elif shift == "plan mix":
            live["plan"] = rng.choice(realdata.PLANS, len(live), p=[0.1, 0.2, 0.3, 0.4])
        elif shift == "new city":
            live.loc[rng.random(len(live)) < 0.1, "city"] = "Bergen"
        else:
            live.loc[rng.random(len(live)) < 0.3, "visits"] = np.nan
        assert flagged(PROFILE, live), f"{shift} missed at seed {seed}"


def test_an_unseen_category_has_its_own_bin_and_a_null_spike_shows_in_the_null_rate() -> None:
    found = compare_categories({"a": 0.5, "b": 0.5}, 0.0, ["a"] * 450 + ["zzz"] * 50, nulls=0)
    assert found.labels == ("a", "b", UNSEEN, NULL) and found.actual[2] == pytest.approx(0.1)
    assert found.psi > DRIFT_PSI_MAX.threshold
    q = quantiles(np.random.default_rng(0).normal(size=5000))
    live = np.random.default_rng(1).normal(size=700)
    spike = compare_numeric(q, 0.05, live, nulls=300)
    assert spike.null_rate_delta == pytest.approx(0.25) and spike.psi > DRIFT_PSI_MAX.threshold
    assert spike.ks is not None and spike.ks < DRIFT_KS_MAX.threshold  # the values themselves did not move


def test_the_profile_cdf_keeps_the_steps_of_a_discrete_feature() -> None:
    q = quantiles(np.repeat([1.0, 2.0, 3.0], [20, 50, 30]))
    assert profile_cdf(q, np.array([2.0]))[0] == pytest.approx(0.7, abs=KS_BOUND)  # 70% are 2 or less
    assert profile_cdf(q, np.array([2.0]), left=True)[0] == pytest.approx(0.2, abs=KS_BOUND)
    assert profile_cdf(q, np.array([0.5, 3.0, 9.0])).tolist() == [0.0, 1.0, 1.0]
    assert ks_statistic(q, np.repeat([1.0, 2.0, 3.0], [20, 50, 30])) == pytest.approx(0.0, abs=0.011)


def test_an_empty_bin_costs_a_bounded_amount() -> None:
    assert psi([0.1, 0.9], [0.0, 1.0]) == pytest.approx(0.1 * np.log(0.1 / EPSILON) + 0.1 * np.log(1 / 0.9), rel=0.01)


shares = st.lists(st.floats(0, 1), min_size=2, max_size=12).filter(lambda v: sum(v) > 0)
samples = st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200)


@given(shares)
def test_psi_is_zero_on_itself(expected: list[float]) -> None:
    assert psi(expected, expected) == pytest.approx(0.0, abs=1e-12)


@given(shares)
def test_psi_is_never_negative(expected: list[float]) -> None:
    assert psi(expected, expected[::-1]) >= -1e-12


def test_named_bins_only_one_side_holds_are_empty_bins_on_the_other() -> None:
    """The release comparison's form (counts per class) is the same PSI over the union of names."""
    champion, canary = {"a": 60, "b": 40}, {"a": 30, "b": 50, "c": 20}
    assert psi_by_name(champion, canary) == pytest.approx(psi([60, 40, 0], [30, 50, 20]))
    assert psi_by_name(champion, {"b": 40, "a": 60}) == pytest.approx(0.0, abs=1e-12)
    assert psi_by_name(champion, {}) == 0.0 and psi_by_name({}, canary) == 0.0  # nothing counted: nothing to judge


@given(samples, samples)
def test_ks_lies_in_0_1_and_is_small_on_the_profiled_values_themselves(train: list[float], live: list[float]) -> None:
    q = quantiles(np.asarray(train))
    assert 0.0 <= ks_statistic(q, np.asarray(live)) <= 1.0
    assert ks_statistic(q, np.asarray(train)) <= KS_BOUND + 1 / len(train) + 1e-9
