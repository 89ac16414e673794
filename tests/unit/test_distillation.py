"""Distillation on synthetic rows: the MUNGE sampler, tuning on the validation split, and the chain
still exporting a bundle with parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from functions.common.bundle import directory_reader, load_model
from pipeline.training.local import train_locally
from pipeline.training.models import make_student, make_teacher, munge, teacher_targets, tuned_student
from tests import realdata
from tests.conftest import mixed_frame

FEATURES = [*realdata.NUMERIC, *realdata.CATEGORICAL]


def _table(n: int = 300) -> pd.DataFrame:
    frame = realdata.string_labels(n, 4)[FEATURES]
    return frame.assign(member=np.arange(n) % 3 == 0)  # a flag column too


def test_munge_gives_the_rows_asked_for_deterministically() -> None:
    frame = _table()
    fake = munge(frame, 1000, seed=5)
    assert fake.shape == (1000, frame.shape[1]) and list(fake.columns) == list(frame.columns)
    assert (fake.dtypes == frame.dtypes).all()
    pd.testing.assert_frame_equal(fake, munge(frame, 1000, seed=5))
    assert not fake.equals(munge(frame, 1000, seed=6))
    assert munge(frame, 0).empty


def test_munge_categories_stay_in_their_vocabulary_and_numbers_near_the_data() -> None:
    frame = _table()
    fake = munge(frame, 2000, seed=1)
    for name in [*realdata.CATEGORICAL, "member"]:
        assert set(fake[name].dropna()) <= set(frame[name].dropna())
    for name in realdata.NUMERIC:
        values, seen = fake[name].dropna(), frame[name].dropna()
        spread = seen.max() - seen.min()
        assert values.between(seen.min() - spread, seen.max() + spread).all()
        assert not values.isin(seen).all()  # some values are new points between neighbours


def test_munge_without_swaps_copies_training_rows() -> None:
    frame = _table()
    fake = munge(frame, 500, p=0.0, seed=2)
    known = set(frame.astype(str).itertuples(index=False, name=None))
    assert set(fake.astype(str).itertuples(index=False, name=None)) <= known


def test_tuning_keeps_the_best_setting_on_validation() -> None:
    frame = mixed_frame(400)
    train, validation = frame.iloc[:300], frame.iloc[300:]
    X, y = train.drop(columns=["churn"]), train["churn"]
    teacher, _ = make_teacher("hgb", "classification", X, 0, {"max_iter": 30})
    teacher.fit(X, y)
    targets = teacher_targets(teacher, X, "classification", y=y, synthetic=3, seed=0)
    assert len(targets.X) == 4 * len(X) and targets.teacher.shape == (len(targets.X), 2)
    held = (validation.drop(columns=["churn"]), validation["churn"])
    _, tuning = tuned_student(lambda: make_student("logreg", "classification", X, 0, {}), targets, held)
    scores = [tuple(g["validation"]) for g in tuning["grid"]]
    chosen = next(g for g in tuning["grid"] if (g["temperature"], g["label_weight"]) == (tuning["temperature"],
                                                                                        tuning["label_weight"]))
    assert len(scores) == 4 and tuple(chosen["validation"]) == max(scores)
    fixed = tuned_student(lambda: make_student("logreg", "classification", X, 0, {}), targets, held,
                          temperatures=(2.0,), label_weights=(0.0,))[1]
    assert [(g["temperature"], g["label_weight"]) for g in fixed["grid"]] == [(2.0, 0.0)]


@pytest.mark.slow  # trains a teacher and tunes an MLP student on synthetic rows: tens of seconds when loaded
def test_distilled_mlp_on_synthetic_rows_exports_a_bundle_with_parity(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    mixed_frame(500).to_csv(data, index=False)
    result = train_locally(data, "churn", tmp_path / "out", seed=3, extra_args=[
        "--max-iter", "40", "--student", "mlp", "--augment", "2", "--quantize", "on"])
    info = json.loads((tmp_path / "out" / "work" / "student" / "student.json").read_text())
    assert info["synthetic_rows"] == 2 * info["rows"] and info["temperature"] in (1.0, 2.0)
    model = load_model(directory_reader(result["bundle"]))
    manifest = model.manifest
    assert manifest.parity.max_abs_diff <= manifest.parity.tolerance
    assert "quantization" in result and (manifest.quantization is not None) == result["quantization"]["kept"]
    answer = model.predict([{"age": 40.0, "plan": "pro", "income": None, "region": "north"}])
    assert answer.predictions[0] in ("yes", "no")
