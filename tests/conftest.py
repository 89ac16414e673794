"""Shared fixtures: fake AWS credentials before anything else, and real bundles built once."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import settings as hypothesis_settings

from pipeline.local.emulation import FAKE_CREDENTIALS

# No test may reach a real AWS account: fake credentials are set before any client exists.
os.environ.update(FAKE_CREDENTIALS)
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "SlimserveTest")

SEED = 3

# Property tests give the same answer every run: `make test` (and CI) use the derandomized profile with no
# example database; HYPOTHESIS_PROFILE=explore (`make explore`) draws new random examples, many more of them.
hypothesis_settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
hypothesis_settings.register_profile("explore", derandomize=False, deadline=None)
hypothesis_settings.load_profile(HYPOTHESIS_PROFILE)


def examples(n: int) -> int:
    """A property test's example count: n in the default run, ten times n when exploring."""
    return n if HYPOTHESIS_PROFILE == "ci" else 10 * n


@pytest.fixture(autouse=True)
def _quiet_sklearn() -> None:
    warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")


@pytest.fixture(autouse=True)
def _own_environment() -> Iterator[None]:
    """Functions read settings from the environment, as on Lambda: no test leaks its settings."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _fixed_gate_latency(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate's latency rule reads p99 single-row timings; measured on a shared, loaded test machine
    they are the scheduler's noise, and a verdict must not depend on it. So every test's gate sees
    fixed, equal figures (the rule itself is tested with chosen figures, the probe with a fake clock),
    except tests marked ``measured_latency``, which look at the real probe without judging its figure."""
    if request.node.get_closest_marker("measured_latency"):
        return
    from functions.validation import gate

    def fixed(candidate: Any, champion: Any, holdout: Any, samples: int, **_: Any) -> Any:
        return gate.Latency(0.05, None if champion is None else 0.05)

    monkeypatch.setattr(gate, "interleaved_p99_ms", fixed)


@pytest.fixture
def metric_records() -> Iterator[list[dict[str, Any]]]:
    """The EMF records the functions publish (functions.common.routing's sink), kept for the test."""
    from functions.common.routing import set_metric_sink

    records: list[dict[str, Any]] = []
    previous = set_metric_sink(records.append)
    yield records
    set_metric_sink(previous)


def breast_cancer() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(as_frame=True).frame


def mixed_frame(n: int = 400) -> pd.DataFrame:
    """Numeric, nullable numeric and categorical columns, like a user's own table."""
    rng = np.random.default_rng(SEED)
    frame = pd.DataFrame({
        "age": rng.integers(18, 90, n).astype(float),
        "plan": rng.choice(["basic", "plus", "pro"], n),
        "income": rng.normal(50_000, 12_000, n),
        "region": rng.choice(["north", "south", "east", "west"], n),
    })
    frame.loc[::7, "income"] = np.nan
    score = (frame["age"] - 50) / 20 + (frame["plan"] == "pro") * 1.5 - (frame["region"] == "south") * 0.7
    frame["churn"] = (score + rng.normal(0, 0.5, n) > 0).map({True: "yes", False: "no"})
    return frame


def mixed_pipeline(final):  # type: ignore[no-untyped-def]
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    pre = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age", "income"]),
        ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan", "region"]),
    ])
    return make_pipeline(pre, final)


@pytest.fixture(scope="session")
def rf_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 100-tree forest behind a StandardScaler on breast cancer: the demo's model."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline.bundler import build_bundle

    frame = breast_cancer()
    model = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=100, random_state=SEED))
    model.fit(frame.drop(columns=["target"]), frame["target"])
    out = tmp_path_factory.mktemp("rf") / "bundle"
    build_bundle(model, frame, out, name="cancer", version="v1", target="target")
    return out


@pytest.fixture(scope="session")
def mixed_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HistGradientBoosting over imputed, scaled and one-hot columns, string classes, a nullable feature."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from pipeline.bundler import build_bundle

    frame = mixed_frame()
    model = mixed_pipeline(HistGradientBoostingClassifier(max_iter=50, random_state=SEED))
    model.fit(frame.drop(columns=["churn"]), frame["churn"])
    out = tmp_path_factory.mktemp("mixed") / "bundle"
    build_bundle(model, frame, out, name="churn", version="v1", target="churn")
    return out


@pytest.fixture(scope="session")
def regression_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline.bundler import build_bundle

    frame = load_diabetes(as_frame=True).frame
    model = make_pipeline(StandardScaler(), Ridge()).fit(frame.drop(columns=["target"]), frame["target"])
    out = tmp_path_factory.mktemp("ridge") / "bundle"
    build_bundle(model, frame, out, name="diabetes", version="v1", target="target")
    return out
