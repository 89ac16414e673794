"""``slimserve train`` -> serve -> score -> validate on real-shaped data: missing strings and numbers
written as ``NA``, an ID and a date column, string labels, integer classes stored as floats, a
regression. Every row the scikit-learn model can predict is served, equal to scikit-learn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest

from functions.common.bundle import directory_reader, load_model
from pipeline.cli import main as cli
from pipeline.training.local import train_locally
from tests import realdata

FAST = ["--max-iter", "40", "--student-iter", "20", "--augment", "0"]
pytestmark = pytest.mark.slow


def trained(tmp_path: Path, frame: pd.DataFrame, target: str, *extra: str) -> dict[str, Any]:
    data = tmp_path / "train.csv"
    data.write_bytes(realdata.na_csv(frame, "NA"))
    return train_locally(data, target, tmp_path / "out", seed=5, extra_args=[*FAST, *extra])


def student_of(tmp_path: Path) -> Any:
    return joblib.load(tmp_path / "out" / "work" / "student" / "student.joblib")  # this test's own artefact


@pytest.fixture(scope="module")
def segments(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("segments")
    result = trained(root, realdata.string_labels(900, 31), "segment")
    return {"root": root, "result": result, "holdout": realdata.string_labels(200, 32)}


def test_id_and_date_are_not_features_and_rows_with_nulls_are_served(segments: dict[str, Any]) -> None:
    result, holdout = segments["result"], segments["holdout"]
    assert any("'customer_id' looks like an ID" in w for w in result["report"]["warnings"])
    model = load_model(directory_reader(result["bundle"]))
    names = model.manifest.feature_names
    assert realdata.ID_COLUMN not in names and realdata.DATE_COLUMN not in names
    X = holdout[names]
    assert X["plan"].isna().any() and X["age"].isna().any()  # missing strings and numbers both served
    served = model.predict(json.loads(X.to_json(orient="records")))
    assert served.predictions == student_of(segments["root"]).predict(X).tolist()


def test_batch_scoring_an_na_csv_scores_every_row_like_scikit_learn(segments: dict[str, Any],
                                                                   tmp_path: Path) -> None:
    holdout = segments["holdout"].drop(columns=["segment"])
    data = tmp_path / "incoming.csv"
    data.write_bytes(realdata.na_csv(holdout, "NA"))
    assert cli(["score", "--bundle", segments["result"]["bundle"], str(data), str(tmp_path / "scored")]) == 0
    scored = pd.read_csv(tmp_path / "scored" / "scored" / "incoming.csv", keep_default_na=False)
    names = load_model(directory_reader(segments["result"]["bundle"])).manifest.feature_names
    assert len(scored) == len(holdout)
    assert scored["prediction"].tolist() == student_of(segments["root"]).predict(holdout[names]).tolist()


def test_validate_admits_the_trained_model_on_an_na_holdout(segments: dict[str, Any], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    holdout = tmp_path / "holdout.csv"
    holdout.write_bytes(realdata.na_csv(segments["holdout"], "NA"))
    code = cli(["validate", "--candidate", segments["result"]["bundle"], "--holdout", str(holdout),
                "--report", str(tmp_path / "report.json"), "--latency-budget-ms", "60000"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert json.loads((tmp_path / "report.json").read_text())["rows"] == len(segments["holdout"])


def test_integer_classes_stored_as_floats_train_and_validate(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    result = trained(tmp_path, realdata.float_coded_classes(900, 33), "quality")
    holdout = tmp_path / "holdout.csv"
    realdata.float_coded_classes(300, 34).to_csv(holdout, index=False)
    assert b",6.0\n" in holdout.read_bytes()
    code = cli(["validate", "--candidate", result["bundle"], "--holdout", str(holdout),
                "--report", str(tmp_path / "report.json"), "--latency-budget-ms", "60000"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert "holdout_mislabelled" not in report["reasons"], capsys.readouterr().out
    assert code == 0 and report["rows"] == 300


def test_regression_with_the_linear_student_is_named_ridge(tmp_path: Path) -> None:
    result = trained(tmp_path, realdata.regression(700, 35), "spend", "--student", "logreg")
    assert result["task"] == "regression" and result["student"] == "ridge"
    manifest = load_model(directory_reader(result["bundle"])).manifest
    assert manifest.lineage["student"] == "ridge"
    assert result["metrics"]["holdout_student"]["rmse"] < result["metrics"]["holdout_baseline"]["rmse"]


def test_a_teacher_that_learns_nothing_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = realdata.string_labels(600, 36)
    frame["segment"] = np.random.default_rng(36).choice(["low", "mid", "high"], len(frame))  # labels are noise
    data = tmp_path / "noise.csv"
    data.write_bytes(realdata.na_csv(frame))
    assert cli(["train", "--data", str(data), "--target", "segment", "--out", str(tmp_path / "o"),
                "--augment", "0"]) == 0
    captured = capsys.readouterr()
    assert "warning: the teacher is no better than the trivial baseline" in captured.out
    assert "[teacher] started" in captured.err and "[teacher] done in" in captured.err
    assert "warning: 'signup_date' looks like an ID" in captured.err
