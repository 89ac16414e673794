"""Missing-value markers: text that pandas read as missing when the bundle was built (``NA``, ``n/a``,
``NULL``...) is null when batch scoring reads CSV and JSON Lines, so CSV, JSON Lines and Parquet
copies of the same rows get the same answers: a null where the model handles one is scored, a null
elsewhere is refused ``null_value``."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from functions.batch.scoring import Source, score_file
from functions.batch.stores import LocalStore
from functions.common.bundle import Model, directory_reader, load_model
from functions.common.manifest import MODEL_FILE, PANDAS_MISSING_MARKERS, Feature
from functions.common.tabular import cells_from_text, markers_set
from tests import realdata

NUMBER = Feature(name="x", type="number", nullable=True)
CATEGORY = Feature(name="c", type="category", categories=["a", "b"])


def test_text_cells_read_the_markers_as_null() -> None:
    pandas = markers_set(PANDAS_MISSING_MARKERS)
    for marker in ("NA", "n/a", "NULL", "#N/A", "nan", " NA "):
        assert cells_from_text([NUMBER, CATEGORY], [marker, marker], pandas) == ([None, None], None)
    assert cells_from_text([NUMBER, CATEGORY], ["1.5", "a"], pandas) == ([1.5, "a"], None)
    cells, error = cells_from_text([NUMBER], ["NA"])  # no markers given: only the empty cell is missing
    assert cells is None and error is not None and error.startswith("wrong_type")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Model, Any, Path]:
    """Imputes ``age`` (a null there is scored); reads ``income`` as it is (a null there is refused)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline.bundler import build_bundle

    frame = realdata.string_labels(800, 3).dropna(subset=["income"])
    pre = ColumnTransformer([("age", make_pipeline(SimpleImputer(), StandardScaler()), ["age"]),
                             ("income", StandardScaler(), ["income"])])
    fitted = make_pipeline(pre, LogisticRegression(max_iter=500)).fit(frame[["age", "income"]], frame["segment"])
    out = tmp_path_factory.mktemp("markers") / "bundle"
    build_bundle(fitted, frame[["age", "income", "segment"]], out, name="segment", version="v1", target="segment")
    loaded = load_model(directory_reader(out), max_rows=100_000)
    assert {f.name: f.nullable for f in loaded.manifest.features} == {"age": True, "income": False}
    return loaded, fitted, out


def holdout() -> pd.DataFrame:
    frame = realdata.features(60, 4, missing=0.0)[["customer_id", "age", "income", "plan"]].copy()
    frame.loc[frame.index[[2, 7, 11]], "age"] = np.nan  # scored: the pipeline imputes age
    frame.loc[frame.index[[5, 11, 30]], "income"] = np.nan  # refused null_value
    return frame


def score(model: Model, tmp_path: Path, key: str, data: bytes) -> dict[int, str]:
    """Row index (0-based, in file order) -> the rejection code, after scoring ``data``."""
    source = Source("local", f"incoming/{key}", size=len(data), etag=hashlib.md5(data).hexdigest())
    manifest = score_file(model, LocalStore(tmp_path), source, io.BytesIO(data)).manifest
    assert manifest["status"] == "complete", manifest
    rejected = (tmp_path / manifest["outputs"]["rejected"]["key"]).read_text()
    if key.endswith(".csv"):
        rows = [(int(r["line"]) - 2, r["reason"]) for r in csv.DictReader(io.StringIO(rejected))]  # line 1: header
    else:
        rows = [(r["line"] - 1, r["reason"]) for r in map(json.loads, rejected.splitlines())]
    assert manifest["rows"]["rejected"] == len(rows)
    return {i: reason.split(":", 1)[0] for i, reason in rows}


def jsonl_with(frame: pd.DataFrame, marker: str) -> bytes:
    records = json.loads(frame.to_json(orient="records"))
    return "".join(json.dumps({k: marker if v is None else v for k, v in r.items()}) + "\n"
                   for r in records).encode()


def test_csv_jsonl_and_parquet_copies_of_the_same_rows_are_treated_alike(model: tuple[Model, Any, Path],
                                                                          tmp_path: Path) -> None:
    frame = holdout()
    parquet = io.BytesIO()
    frame.to_parquet(parquet, index=False)
    copies = {
        "empty.csv": frame.to_csv(index=False).encode(),
        "r.csv": realdata.na_csv(frame, "NA"),
        "slash.csv": realdata.na_csv(frame, "n/a"),
        "sql.csv": realdata.na_csv(frame, "NULL"),
        "nan.csv": realdata.na_csv(frame, "nan"),
        "nulls.jsonl": frame.to_json(orient="records", lines=True).encode(),
        "strings.jsonl": jsonl_with(frame, "NA"),
        "rows.parquet": parquet.getvalue(),
    }
    answers = {key: score(model[0], tmp_path / key.replace(".", "_"), key, data) for key, data in copies.items()}
    expected = {5: "null_value", 11: "null_value", 30: "null_value"}
    assert all(found == expected for found in answers.values()), answers


def test_scored_rows_with_a_missing_marker_equal_scikit_learn(model: tuple[Model, Any, Path], tmp_path: Path) -> None:
    loaded, fitted, _ = model
    frame = holdout()
    key = "r.csv"
    data = realdata.na_csv(frame, "NA")
    source = Source("local", f"incoming/{key}", size=len(data), etag=hashlib.md5(data).hexdigest())
    manifest = score_file(loaded, LocalStore(tmp_path), source, io.BytesIO(data)).manifest
    scored = pd.read_csv(tmp_path / manifest["outputs"]["scored"]["key"], keep_default_na=False)
    kept = frame.drop(index=frame.index[[5, 11, 30]])
    assert scored["customer_id"].tolist() == kept["customer_id"].tolist()
    assert scored["prediction"].tolist() == fitted.predict(kept[["age", "income"]]).tolist()
    assert (scored.loc[kept["age"].isna().to_numpy(), "age"] == "NA").all()  # the row's own text, untouched


def test_the_markers_come_from_the_bundle(model: tuple[Model, Any, Path], tmp_path: Path) -> None:
    """A bundle built to read only empty cells as missing reads ``NA`` as text: a number feature refuses it."""
    loaded, _, bundle = model
    strict = loaded.manifest.model_copy(update={"missing_markers": [""]})
    only_empty = Model(strict, (bundle / MODEL_FILE).read_bytes())
    found = score(only_empty, tmp_path, "r.csv", realdata.na_csv(holdout(), "NA"))
    assert set(found.values()) == {"wrong_type"} and {2, 5, 7, 11, 30} == set(found)
