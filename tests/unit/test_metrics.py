"""numpy metrics agree with scikit-learn's to 1e-9 on random data."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from functions.common import metrics as m
from tests.conftest import examples


@st.composite
def classification_case(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    k = draw(st.integers(2, 5))
    n = draw(st.integers(k * 2, 120))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    classes = list(range(k))
    y = rng.integers(0, k, n)
    y[:k] = classes  # every class present
    proba = rng.dirichlet(np.ones(k), n)
    if draw(st.booleans()):
        proba = np.round(proba, 1)  # ties
        proba = np.where(proba.sum(axis=1, keepdims=True) == 0, 1 / k, proba)
    labels = rng.integers(0, k, n)
    return y, labels, proba, classes


@settings(max_examples=examples(150))
@given(classification_case())
def test_classification_metrics_match_scikit_learn(case: tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]) -> None:
    y, labels, proba, classes = case
    assert abs(m.accuracy(y, labels) - skm.accuracy_score(y, labels)) < 1e-9
    assert abs(m.macro_f1(y, labels) - skm.f1_score(y, labels, average="macro", zero_division=0)) < 1e-9
    normalised = proba / proba.sum(axis=1, keepdims=True)
    assert abs(m.log_loss(y, normalised, classes) - skm.log_loss(y, normalised, labels=classes)) < 1e-9
    expected_auc = (skm.roc_auc_score(y, proba[:, 1]) if len(classes) == 2
                    else skm.roc_auc_score(y, normalised, multi_class="ovr", average="macro", labels=classes))
    got = m.roc_auc(y, proba if len(classes) == 2 else normalised, classes)
    assert abs(got - expected_auc) < 1e-9


@settings(max_examples=examples(150))
@given(st.integers(2, 200), st.integers(0, 2**31 - 1), st.booleans())
def test_regression_metrics_match_scikit_learn(n: int, seed: int, constant: bool) -> None:
    rng = np.random.default_rng(seed)
    y = np.full(n, 3.0) if constant else rng.normal(size=n) * 10
    pred = y + rng.normal(size=n)
    assert abs(m.rmse(y, pred) - np.sqrt(skm.mean_squared_error(y, pred))) < 1e-9
    assert abs(m.mae(y, pred) - skm.mean_absolute_error(y, pred)) < 1e-9
    assert abs(m.r2(y, pred) - skm.r2_score(y, pred)) < 1e-9


def test_string_labels() -> None:
    y = np.array(["no", "yes", "yes", "no"], dtype=object)
    proba = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.5, 0.5]])
    assert abs(m.roc_auc(y, proba, ["no", "yes"]) - skm.roc_auc_score(y == "yes", proba[:, 1])) < 1e-12
    assert abs(m.log_loss(y, proba, ["no", "yes"]) - skm.log_loss(y, proba, labels=["no", "yes"])) < 1e-12
