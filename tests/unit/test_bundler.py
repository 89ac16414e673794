"""slimserve bundle: supported estimators convert with parity; everything else is refused clearly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from functions.common.bundle import directory_reader, load_model
from functions.common.errors import BundleBuildError
from functions.common.manifest import Manifest, sha256_hex
from pipeline.bundler import build_bundle, sample_instances
from tests.conftest import SEED, breast_cancer, mixed_frame, mixed_pipeline

CLASSIFIERS = [
    LogisticRegression(max_iter=5000),
    RandomForestClassifier(n_estimators=30, random_state=SEED),
    GradientBoostingClassifier(n_estimators=30, random_state=SEED),
    HistGradientBoostingClassifier(max_iter=30, random_state=SEED),
    MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=SEED),
    KNeighborsClassifier(n_neighbors=7),
]
REGRESSORS = [
    LinearRegression(),
    Ridge(),
    RandomForestRegressor(n_estimators=20, random_state=SEED),
    GradientBoostingRegressor(n_estimators=30, random_state=SEED),
    HistGradientBoostingRegressor(max_iter=30, random_state=SEED),
    MLPRegressor(hidden_layer_sizes=(16,), max_iter=300, random_state=SEED),
]


def _served(out: Path, frame: pd.DataFrame, target: str) -> tuple[Manifest, Any]:
    model = load_model(directory_reader(out))
    rows = sample_instances(frame.drop(columns=[target])[model.manifest.feature_names])
    return model.manifest, model.predict(rows)


@pytest.mark.parametrize("final", CLASSIFIERS, ids=lambda e: type(e).__name__)
def test_classifiers_behind_a_scaler_convert_with_parity(final: Any, tmp_path: Path) -> None:
    frame = breast_cancer()
    model = make_pipeline(StandardScaler(), final).fit(frame.drop(columns=["target"]), frame["target"])
    result = build_bundle(model, frame, tmp_path, target="target")
    manifest, served = _served(tmp_path, frame, "target")
    assert manifest == result.manifest and manifest.task == "classification"
    assert manifest.parity.max_abs_diff <= 1e-4 and manifest.parity.label_agreement == 1.0
    expected = model.predict_proba(frame.drop(columns=["target"]))
    assert np.abs(np.asarray(served.probabilities) - expected).max() <= 1e-4
    assert served.predictions == model.predict(frame.drop(columns=["target"])).tolist()


@pytest.mark.parametrize("final", REGRESSORS, ids=lambda e: type(e).__name__)
def test_regressors_convert_with_parity(final: Any, tmp_path: Path) -> None:
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame
    model = make_pipeline(StandardScaler(), final).fit(frame.drop(columns=["target"]), frame["target"])
    build_bundle(model, frame, tmp_path, target="target")
    manifest, served = _served(tmp_path, frame, "target")
    assert manifest.task == "regression" and manifest.classes is None
    expected = model.predict(frame.drop(columns=["target"]))
    np.testing.assert_allclose(served.predictions, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert set(manifest.metrics["sample"]) == {"rmse", "mae", "r2"}


@pytest.mark.parametrize("final", [LogisticRegression(max_iter=2000),
                                   RandomForestClassifier(n_estimators=20, random_state=SEED),
                                   HistGradientBoostingClassifier(max_iter=30, random_state=SEED)],
                         ids=lambda e: type(e).__name__)
def test_mixed_columns_with_column_transformer(final: Any, tmp_path: Path) -> None:
    frame = mixed_frame()
    model = mixed_pipeline(final).fit(frame.drop(columns=["churn"]), frame["churn"])
    manifest = build_bundle(model, frame, tmp_path, target="churn").manifest
    assert manifest.onnx.input_mode == "columns"
    assert manifest.classes == ["no", "yes"]
    by_name = {f.name: f for f in manifest.features}
    assert by_name["plan"].type == "category" and by_name["plan"].categories == ["basic", "plus", "pro"]
    # Both numbers go through the imputer, so both take a null, whatever the sample held.
    assert by_name["income"].nullable and by_name["age"].nullable
    assert "SimpleImputer(strategy='mean')" in (by_name["age"].nullable_reason or "")
    assert by_name["region"].unknown_categories == "accept" and not by_name["region"].nullable
    _, served = _served(tmp_path, frame, "churn")
    assert served.predictions == model.predict(frame.drop(columns=["churn"])).tolist()


def test_histgradientboosting_routes_missing_values_like_scikit_learn(tmp_path: Path) -> None:
    """skl2onnx chokes on HistGradientBoosting's boolean missing_go_to_left; NaN routing must survive."""
    frame = breast_cancer()
    frame.loc[::5, "mean radius"] = np.nan
    X = frame.drop(columns=["target"])
    model = HistGradientBoostingClassifier(max_iter=40, random_state=SEED).fit(X, frame["target"])
    manifest = build_bundle(model, frame, tmp_path, target="target").manifest
    assert next(f for f in manifest.features if f.name == "mean radius").nullable
    _, served = _served(tmp_path, frame, "target")
    assert np.abs(np.asarray(served.probabilities) - model.predict_proba(X)).max() <= 1e-4


def test_random_forest_vote_ties_break_like_scikit_learn(tmp_path: Path) -> None:
    """Two stumps that disagree on every row: every vote is 50/50, and scikit-learn picks class 0."""
    rng = np.random.default_rng(SEED)
    frame = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    frame["y"] = (frame["a"] > 0).astype(int)
    model = RandomForestClassifier(n_estimators=2, max_depth=1, bootstrap=False, max_features=None, random_state=0)
    model.fit(frame[["a", "b"]], frame["y"])
    # Force the tie: the second tree predicts the opposite of the first on every row.
    inverted = model.estimators_[1]
    inverted.tree_.value[:] = model.estimators_[0].tree_.value[:, :, ::-1]
    model.estimators_[1].tree_.threshold[:] = model.estimators_[0].tree_.threshold
    model.estimators_[1].tree_.feature[:] = model.estimators_[0].tree_.feature
    assert np.all(model.predict_proba(frame[["a", "b"]]) == 0.5)
    build_bundle(model, frame, tmp_path, target="y")
    _, served = _served(tmp_path, frame, "y")
    assert served.predictions == model.predict(frame[["a", "b"]]).tolist() == [0] * 200


def test_manifest_records_hashes_sizes_and_metrics(rf_bundle: Path) -> None:
    manifest = json.loads((rf_bundle / "manifest.json").read_text())
    assert manifest["files"]["model.onnx"] == sha256_hex((rf_bundle / "model.onnx").read_bytes())
    assert manifest["sizes"]["model.onnx"] == (rf_bundle / "model.onnx").stat().st_size
    assert manifest["metrics"]["sample"]["accuracy"] > 0.9
    assert [f["name"] for f in manifest["features"]][:2] == ["mean radius", "mean texture"]
    assert all(f["minimum"] <= f["maximum"] for f in manifest["features"])


def test_unsupported_step_is_named(tmp_path: Path) -> None:
    from sklearn.preprocessing import SplineTransformer

    frame = breast_cancer()
    model = make_pipeline(SplineTransformer(), LogisticRegression(max_iter=200))
    model.fit(frame.drop(columns=["target"]), frame["target"])
    with pytest.raises(BundleBuildError) as info:
        build_bundle(model, frame, tmp_path, target="target")
    assert info.value.code == "unsupported_step"
    assert "splinetransformer" in info.value.message and "SplineTransformer" in info.value.message


def test_parity_beyond_tolerance_is_refused_with_the_difference(tmp_path: Path) -> None:
    frame = breast_cancer()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(frame.drop(columns=["target"]), frame["target"])
    with pytest.raises(BundleBuildError) as info:
        build_bundle(model, frame, tmp_path, target="target", tolerance=1e-18)
    assert info.value.code == "parity_failed"
    assert "max abs probability difference" in info.value.message
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize(("estimator", "code"), [
    (LogisticRegression(), "not_fitted"),
    ("not a model", "not_an_estimator"),
])
def test_unusable_estimators_are_refused(estimator: Any, code: str, tmp_path: Path) -> None:
    with pytest.raises(BundleBuildError) as info:
        build_bundle(estimator, breast_cancer(), tmp_path, target="target")
    assert info.value.code == code


def test_sample_without_the_model_features_is_refused(tmp_path: Path) -> None:
    frame = breast_cancer()
    model = LogisticRegression(max_iter=3000).fit(frame.drop(columns=["target"]), frame["target"])
    with pytest.raises(BundleBuildError, match="lacks the model's features"):
        build_bundle(model, frame.drop(columns=["mean area"]), tmp_path, target="target")


def test_models_fit_on_arrays_take_the_sample_columns(tmp_path: Path) -> None:
    frame = breast_cancer()
    model = LogisticRegression(max_iter=5000).fit(frame.drop(columns=["target"]).to_numpy(), frame["target"])
    manifest = build_bundle(model, frame, tmp_path, target="target").manifest
    assert manifest.feature_names == list(frame.columns[:-1])


def test_svc_label_disagreement_is_explained(tmp_path: Path) -> None:
    from sklearn.svm import SVC

    frame = breast_cancer()
    model = make_pipeline(StandardScaler(), SVC(probability=True, random_state=SEED))
    model.fit(frame.drop(columns=["target"]), frame["target"])
    with pytest.raises(BundleBuildError) as info:
        build_bundle(model, frame, tmp_path, target="target")
    assert info.value.code == "parity_failed"
    assert "although probabilities agree" in info.value.message
    assert "SVC's predict is not the most probable class" in info.value.message
    assert "CalibratedClassifierCV" in info.value.message
    assert info.value.message.count("although probabilities agree") == 1  # said once, not per dtype


@pytest.mark.parametrize(("step", "said"), [
    ("function", "runs Python code"),
    ("svc", "gives no class probabilities"),
])
def test_refused_steps_come_with_a_fix(step: str, said: str, tmp_path: Path) -> None:
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.svm import SVC

    frame = breast_cancer()
    model = (make_pipeline(FunctionTransformer(np.log1p), LogisticRegression(max_iter=3000)) if step == "function"
             else make_pipeline(StandardScaler(), SVC()))
    model.fit(frame.drop(columns=["target"]), frame["target"])
    with pytest.raises(BundleBuildError) as info:
        build_bundle(model, frame, tmp_path, target="target")
    assert said in info.value.message and "github" not in info.value.message
