"""Explanations: exact linear contributions, TreeSHAP against brute-force Shapley values, and the bundle's files."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from functions.common.bundle import directory_reader, load_model
from functions.common.errors import BundleError, ExplainUnsupported
from functions.common.explain import EXPLAIN_FILE, EXPLAIN_FORMAT, Explainer
from pipeline.bundler import build_bundle, sample_instances
from pipeline.bundling.explain import _trees
from tests.conftest import SEED, mixed_frame, mixed_pipeline

# -- the reference: Shapley values of the path-dependent conditional expectation, by enumeration ----------


def _expected(tree: dict[str, Any], x: np.ndarray, known: set[int], node: int = 0) -> np.ndarray:
    """E[f(x) | x_known] as path-dependent TreeSHAP defines it (Lundberg et al. 2018, Algorithm 1)."""
    left, right = tree["left"][node], tree["right"][node]
    if left < 0:
        return np.asarray(tree["value"][node], dtype=np.float64)
    feature = tree["feature"][node]
    if feature in known:
        value = x[feature]
        goes_left = tree["missing_left"][node] if np.isnan(value) else value <= tree["threshold"][node]
        return _expected(tree, x, known, left if goes_left else right)
    cover = tree["cover"]
    below = cover[left] * _expected(tree, x, known, left) + cover[right] * _expected(tree, x, known, right)
    return below / cover[node]


def _brute_force(trees: list[dict[str, Any]], x: np.ndarray) -> np.ndarray:
    """(features, outputs): every subset enumerated with its Shapley weight."""
    n = len(x)
    x = x.astype(np.float32).astype(np.float64)  # what scikit-learn's trees compare

    def value(known: set[int]) -> np.ndarray:
        return sum((_expected(t, x, known) for t in trees), start=np.zeros(len(trees[0]["value"][0])))

    phi = np.zeros((n, len(trees[0]["value"][0])))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for subset in itertools.combinations(others, size):
                phi[i] += weight * (value({*subset, i}) - value(set(subset)))
    return phi


def _explainer(final: Any, width: int, classes: list[Any] | None, outputs: int) -> tuple[Explainer, dict[str, Any]]:
    document = {"format": EXPLAIN_FORMAT, "features": [f"f{j}" for j in range(width)], "groups": list(range(width)),
                "transform_output": None, **_trees(final, classes, outputs)}
    return Explainer(document, None, document["features"], classes), document


def _small_data(rows: int = 300, width: int = 5, missing: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    X = rng.normal(size=(rows, width))
    X[:, 1] = np.round(X[:, 1])  # ties and repeated splits on one feature
    y = X[:, 0] + 2 * (X[:, 1] > 0) * X[:, 2] + 0.3 * rng.normal(size=rows)
    if missing:
        X[::5, 0] = np.nan
    return X, y


@pytest.mark.parametrize("missing", [False, True])
def test_tree_shap_equals_brute_force_shapley_values_on_a_small_regression_tree(missing: bool) -> None:
    from sklearn.tree import DecisionTreeRegressor

    X, y = _small_data(width=6, missing=missing)
    tree = DecisionTreeRegressor(max_depth=4, random_state=SEED).fit(X, y)
    explainer, document = _explainer(tree, 6, None, 1)
    rows = X[:12]
    got = explainer.explain({"X": rows})
    for i, row in enumerate(rows):
        expected = _brute_force(document["trees"], row)[:, 0]
        np.testing.assert_allclose(got.contributions[i], expected, atol=1e-12)
    assert np.allclose(got.base_values + got.contributions.sum(axis=1), tree.predict(rows), atol=1e-12)


def test_tree_shap_equals_brute_force_for_a_classifier_tree_and_a_boosted_ensemble() -> None:
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.tree import DecisionTreeClassifier

    X, y = _small_data(width=5)
    labels = np.digitize(y, [-0.5, 0.5])  # three classes
    for final, outputs in [(DecisionTreeClassifier(max_depth=4, random_state=SEED).fit(X, labels), 3),
                           (GradientBoostingClassifier(n_estimators=4, max_depth=3, random_state=SEED)
                            .fit(X, labels > 0), 1)]:
        classes = final.classes_.tolist()
        explainer, document = _explainer(final, 5, classes, outputs)
        for row in X[:6]:
            expected = _brute_force(document["trees"], row)
            _, phi = explainer._model.contributions(row[None, :])
            np.testing.assert_allclose(phi[0], expected, atol=1e-12)


def test_contributions_of_a_forest_sum_to_its_output() -> None:
    from sklearn.ensemble import ExtraTreesRegressor, HistGradientBoostingClassifier, RandomForestClassifier

    X, y = _small_data(rows=500, width=6, missing=True)
    Xf = np.nan_to_num(X)
    forest = RandomForestClassifier(n_estimators=30, random_state=SEED).fit(Xf, y > 0)
    explainer, _ = _explainer(forest, 6, forest.classes_.tolist(), 2)
    got = explainer.explain({"X": Xf[:50]})
    np.testing.assert_allclose(got.base_values + got.contributions.sum(axis=1), forest.predict_proba(Xf[:50])[:, 1],
                               atol=1e-9)
    extra = ExtraTreesRegressor(n_estimators=20, max_depth=8, random_state=SEED).fit(Xf, y)
    explainer, _ = _explainer(extra, 6, None, 1)
    got = explainer.explain({"X": Xf[:50]})
    np.testing.assert_allclose(got.base_values + got.contributions.sum(axis=1), extra.predict(Xf[:50]), atol=1e-9)
    boosted = HistGradientBoostingClassifier(max_iter=20, random_state=SEED).fit(X, y > 0)
    explainer, document = _explainer(boosted, 6, boosted.classes_.tolist(), 1)
    raw = boosted.decision_function(X[:50])
    document["offset"] = [float(np.median(raw - explainer.raw(X[:50])[:, 0]))]
    got = Explainer(document, None, document["features"], [False, True]).explain({"X": X[:50]})
    np.testing.assert_allclose(got.base_values + got.contributions.sum(axis=1), raw, atol=1e-6)


# -- bundles ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, pd.DataFrame]:
    from sklearn.linear_model import LogisticRegression

    frame = mixed_frame()
    model = mixed_pipeline(LogisticRegression(max_iter=1000)).fit(frame.drop(columns=["churn"]), frame["churn"])
    out = tmp_path_factory.mktemp("linear") / "bundle"
    build_bundle(model, frame, out, name="churn", version="v1", target="churn")
    return model, out, frame


def test_linear_contributions_are_coefficient_times_distance_from_the_training_mean(linear: Any) -> None:
    model, bundle, frame = linear
    served = load_model(directory_reader(bundle))
    X = frame.drop(columns=["churn"])
    rows = sample_instances(X[served.manifest.feature_names].head(5))
    got = served.explain(rows)
    # By hand: the preprocessed columns, the coefficients, the training mean; one-hot columns summed per feature.
    pre, final = model[:-1], model[-1]
    Z, mean, coef = pre.transform(X.head(5)), pre.transform(X).mean(axis=0), final.coef_[0]
    names = pre.get_feature_names_out()
    for i, answer in enumerate(got):
        by_column = coef * (Z[i] - mean)
        expected = {f: float(sum(c for c, n in zip(by_column, names, strict=True) if n.split("__")[1].startswith(f)))
                    for f in served.manifest.feature_names}
        assert answer["output"] == "log_odds" and answer["class"] == "yes"
        for feature, value in expected.items():
            assert answer["contributions"][feature] == pytest.approx(value, abs=1e-5)
        assert answer["base_value"] == pytest.approx(float(coef @ mean + final.intercept_[0]), abs=1e-9)
        margin = final.decision_function(pre.transform(X.iloc[[i]]))[0]
        assert answer["base_value"] + sum(answer["contributions"].values()) == pytest.approx(margin, abs=1e-5)


def test_a_forest_bundle_explains_the_served_probability(rf_bundle: Path) -> None:
    served = load_model(directory_reader(rf_bundle))
    rows = [[float(v) for v in np.linspace(-1, 30, len(served.manifest.features)) * k] for k in (0.5, 1.0, 2.0)]
    result = served.predict(rows)
    for answer, probabilities in zip(served.explain(rows, result.predictions), result.probabilities or [],
                                     strict=True):
        assert answer["output"] == "probability" and answer["class"] == served.manifest.classes[1]  # type: ignore[index]
        assert answer["base_value"] + sum(answer["contributions"].values()) == pytest.approx(probabilities[1], abs=1e-6)


def test_a_tampered_explanation_file_refuses_the_bundle(rf_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(rf_bundle, copy)
    document = json.loads((copy / EXPLAIN_FILE).read_text())
    document["trees"][0]["value"][1] = [0.0, 1.0]
    (copy / EXPLAIN_FILE).write_text(json.dumps(document))
    with pytest.raises(BundleError, match=r"explain\.json does not match its sha256"):
        load_model(directory_reader(copy))


def test_a_model_with_no_exact_explanation_answers_explain_unsupported(tmp_path: Path) -> None:
    from sklearn.neural_network import MLPClassifier

    X, y = _small_data(rows=200, width=4)
    frame = pd.DataFrame(X, columns=list("abcd")).assign(target=(y > 0).astype(int))
    model = MLPClassifier(hidden_layer_sizes=(4,), max_iter=300, random_state=SEED)
    model.fit(frame[list("abcd")], frame["target"])
    result = build_bundle(model, frame, tmp_path / "mlp", name="mlp", version="v1", target="target")
    assert set(result.manifest.files) == {"model.onnx"} and "MLPClassifier" in result.explanations
    served = load_model(directory_reader(tmp_path / "mlp"))
    with pytest.raises(ExplainUnsupported) as refused:
        served.explain([[0.0, 0.0, 0.0, 0.0]])
    assert refused.value.status == 400 and refused.value.code == "explain_unsupported"
