"""Real-shaped tables through the bundler: the schema is what the fitted pipeline reads.

An ID and a date the pipeline drops are not features; text imputed with most_frequent or
constant behind OneHotEncoder, OrdinalEncoder or TargetEncoder bundles and serves nulls;
unseen categories pass where the encoder takes them; odd column names ('/', spaces, unicode)
work. Served answers equal scikit-learn's for every row scikit-learn can predict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler, TargetEncoder

from functions.common.bundle import Model, directory_reader, load_model
from functions.common.errors import BundleBuildError, InvalidInput
from functions.common.manifest import FORMAT_VERSION
from pipeline.bundler import build_bundle
from tests import realdata

# Odd names a user's table arrives with: a slash, spaces and symbols, unicode.
RENAME = {"plan": "plan/tier", "city": "città d'origine", "income": "income $ (net)"}
TEXT = [RENAME["plan"], RENAME["city"]]
NUMBERS = ["age", RENAME["income"], "visits"]
DROPPED = [realdata.ID_COLUMN, realdata.DATE_COLUMN]
ENCODERS = {
    "onehot": lambda: OneHotEncoder(handle_unknown="ignore"),
    "ordinal": lambda: OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
    "target": lambda: TargetEncoder(random_state=0),
}
STRATEGIES = {"most_frequent": {"strategy": "most_frequent"},
              "constant": {"strategy": "constant", "fill_value": "(missing)"}}


def table(maker: Any = realdata.string_labels, n: int = 500, seed: int = 3) -> pd.DataFrame:
    return maker(n, seed).rename(columns=RENAME)


def churn(seed: int = 3) -> pd.DataFrame:
    """Two string classes (TargetEncoder's converter takes binary and continuous targets only)."""
    frame = table(seed=seed)
    return frame.assign(churn=np.where(frame.pop("segment") == "high", "yes", "no"))


def unseen(frame: pd.DataFrame) -> pd.DataFrame:
    """New customers: new IDs and dates (another seed), and categories no model has seen."""
    frame = frame.copy()
    frame.loc[frame.index[::6], RENAME["plan"]] = "enterprise"
    frame.loc[frame.index[1::7], RENAME["city"]] = "Atlantis"
    return frame


def pipeline(final: Any, encoder: str = "onehot", strategy: str = "most_frequent") -> Any:
    pre = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), NUMBERS),
        ("text", make_pipeline(SimpleImputer(**STRATEGIES[strategy]), ENCODERS[encoder]()), TEXT),
    ])  # remainder="drop": the ID and the date are read by no step
    return make_pipeline(pre, final)


def bundle(model: Any, frame: pd.DataFrame, target: str, out: Path) -> Model:
    model.fit(frame.drop(columns=[target]), frame[target])
    build_bundle(model, frame, out, target=target)
    return load_model(directory_reader(out))


def rows(frame: pd.DataFrame, target: str) -> list[dict[str, Any]]:
    """Keyed rows as a client sends them, ID and date included (NaN becomes null)."""
    records: list[dict[str, Any]] = json.loads(frame.drop(columns=[target]).to_json(orient="records",
                                                                                     double_precision=15))
    return records


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_imputed_text_behind_each_encoder_serves_every_row_like_scikit_learn(encoder: str, strategy: str,
                                                                            tmp_path: Path) -> None:
    model = pipeline(LogisticRegression(max_iter=2000), encoder, strategy)
    served_model = bundle(model, churn(), "churn", tmp_path)
    fresh = unseen(churn(seed=11))
    assert fresh[TEXT].isna().any().all() and fresh[NUMBERS].isna().any().all()
    served = served_model.predict(rows(fresh, "churn"))
    X = fresh.drop(columns=["churn"])
    assert served.predictions == model.predict(X).tolist()
    assert np.abs(np.asarray(served.probabilities) - model.predict_proba(X)).max() <= 1e-5


def test_the_manifest_lists_what_the_pipeline_reads_and_why(tmp_path: Path) -> None:
    frame = table()
    manifest = bundle(pipeline(LogisticRegression(max_iter=2000), "onehot", "constant"), frame, "segment",
                      tmp_path).manifest
    assert manifest.feature_names == ["age", RENAME["income"], "visits", *TEXT]
    assert manifest.ignored_columns == DROPPED
    by_name = {f.name: f for f in manifest.features}
    plan = by_name[RENAME["plan"]]
    assert plan.nullable and plan.missing_category == "(missing)" and plan.unknown_categories == "accept"
    assert "SimpleImputer(strategy='constant')" in (plan.nullable_reason or "")
    assert "handle_unknown='ignore'" in (plan.categories_reason or "")
    assert set(plan.categories or []) == {*realdata.PLANS, "(missing)"}
    assert all(by_name[n].nullable and "median" in (by_name[n].nullable_reason or "") for n in NUMBERS)
    # ONNX names are sanitized by the converter; the manifest maps each feature to its input.
    assert manifest.onnx_inputs[RENAME["plan"]] != RENAME["plan"] and "/" not in manifest.onnx_inputs[RENAME["plan"]]
    assert manifest.format_version == FORMAT_VERSION and "NA" in manifest.missing_markers


def test_ids_and_dates_are_ignored_other_unknown_keys_refused(tmp_path: Path) -> None:
    frame = table()
    model = bundle(pipeline(LogisticRegression(max_iter=2000)), frame, "segment", tmp_path)
    row = rows(table(seed=12), "segment")[0]
    without = {k: v for k, v in row.items() if k not in DROPPED}
    assert model.predict([row]).predictions == model.predict([without]).predictions
    with pytest.raises(InvalidInput) as info:
        model.predict([{**row, "colour": "red"}])
    assert info.value.code == "unknown_feature"
    with pytest.raises(InvalidInput) as info:
        model.predict([{**{k: v for k, v in row.items() if k != "visits"}, "vists": 3.0}])
    assert info.value.code == "misspelled_feature"
    schema = model.schema.json_schema()["items"]["anyOf"][0]
    assert set(DROPPED) <= set(schema["properties"]) and schema["required"] == model.manifest.feature_names


def test_closed_encoders_and_unimputed_columns_still_refuse(tmp_path: Path) -> None:
    frame = table().dropna(subset=TEXT)
    pre = ColumnTransformer([("num", make_pipeline(SimpleImputer(), StandardScaler()), NUMBERS),
                             ("text", OneHotEncoder(), TEXT)])
    model = bundle(make_pipeline(pre, LogisticRegression(max_iter=2000)), frame, "segment", tmp_path)
    plan = next(f for f in model.manifest.features if f.name == RENAME["plan"])
    assert not plan.nullable and plan.unknown_categories == "refuse"
    assert "handle_unknown='error'" in (plan.categories_reason or "")
    row = rows(frame, "segment")[0]
    for bad, code in (("enterprise", "unknown_category"), (None, "null_value")):
        with pytest.raises(InvalidInput) as info:
            model.predict([{**row, RENAME["plan"]: bad}])
        assert info.value.code == code and info.value.field == f"instances[0].{RENAME['plan']}"


def test_a_nan_aware_model_takes_nulls_without_an_imputer(tmp_path: Path) -> None:
    frame = table()
    pre = ColumnTransformer([("num", "passthrough", NUMBERS),
                             ("text", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                                    OrdinalEncoder(handle_unknown="use_encoded_value",
                                                                   unknown_value=-1)), TEXT)])
    model = make_pipeline(pre, HistGradientBoostingClassifier(max_iter=40, random_state=0))
    served_model = bundle(model, frame, "segment", tmp_path)
    age = next(f for f in served_model.manifest.features if f.name == "age")
    assert age.nullable and "HistGradientBoostingClassifier" in (age.nullable_reason or "")
    fresh = unseen(table(seed=13))
    served = served_model.predict(rows(fresh, "segment"))
    X = fresh.drop(columns=["segment"])
    assert served.predictions == model.predict(X).tolist()
    assert np.abs(np.asarray(served.probabilities) - model.predict_proba(X)).max() <= 1e-5


@pytest.mark.parametrize("final", [Ridge(), HistGradientBoostingRegressor(max_iter=40, random_state=0)],
                         ids=lambda e: type(e).__name__)
def test_regression_on_a_real_shaped_table(final: Any, tmp_path: Path) -> None:
    frame = table(realdata.regression)
    model = pipeline(final, "target", "most_frequent")
    served_model = bundle(model, frame, "spend", tmp_path)
    fresh = unseen(table(realdata.regression, seed=14))
    expected = model.predict(fresh.drop(columns=["spend"]))
    served = served_model.predict(rows(fresh, "spend"))
    np.testing.assert_allclose(served.predictions, expected, rtol=1e-4, atol=1e-3)


def test_a_slash_in_a_column_name_bundles_through_a_column_transformer(tmp_path: Path) -> None:
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame
    X = frame.drop(columns=["target"])
    model = make_pipeline(ColumnTransformer([("num", StandardScaler(), list(X.columns))]),
                          LogisticRegression(max_iter=2000))
    served_model = bundle(model, frame, "target", tmp_path)
    assert "od280/od315_of_diluted_wines" in served_model.manifest.feature_names
    assert served_model.predict(rows(frame, "target")).predictions == model.predict(X).tolist()


def test_a_text_imputer_that_also_reads_numbers_is_refused_with_a_fix(tmp_path: Path) -> None:
    frame = table()
    model = make_pipeline(ColumnTransformer([("all", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                                                   OneHotEncoder(handle_unknown="ignore")),
                                              ["age", *TEXT])]), LogisticRegression(max_iter=500))
    model.fit(frame.drop(columns=["segment"]), frame["segment"])
    with pytest.raises(BundleBuildError) as info:
        build_bundle(model, frame, tmp_path, target="segment")
    assert info.value.code == "unsupported_step" and "'age'" in info.value.message
    assert "ColumnTransformer" in info.value.message


def test_a_refused_conversion_names_the_step_and_drops_the_converter_boilerplate(tmp_path: Path) -> None:
    frame = table()  # three classes: TargetEncoder's converter takes binary or continuous targets only
    model = pipeline(LogisticRegression(max_iter=500), "target").fit(frame.drop(columns=["segment"]),
                                                                    frame["segment"])
    with pytest.raises(BundleBuildError) as info:
        build_bundle(model, frame, tmp_path, target="segment")
    assert info.value.code == "conversion_failed"
    assert "step 'columntransformer/text/targetencoder' (TargetEncoder)" in info.value.message
    assert "github" not in info.value.message and "raise an issue" not in info.value.message
