"""Distillation on synthetic rows: the MUNGE sampler, the linear student's soft-label fit, tuning on the
validation split, the hard-label student kept when it does better there, and the chain still exporting a
bundle with parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from functions.common.bundle import directory_reader, load_model
from pipeline.training.local import train_locally
from pipeline.training.models import (
    Targets,
    clearly_better,
    fit_student,
    make_student,
    make_teacher,
    munge,
    teacher_targets,
    tuned_student,
)
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


def _numeric(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])


def _unregularised_logreg(X: pd.DataFrame):  # type: ignore[no-untyped-def]
    student = make_student("logreg", "classification", X, 0, {})
    student.steps[-1][1].set_params(C=1e6, tol=1e-10, max_iter=20_000)
    return student


def test_linear_student_recovers_a_linear_teacher_from_its_soft_targets() -> None:
    """Cross-entropy against soft targets is minimised by the teacher itself when it is linear: a student
    that learns from the probabilities (not only their argmax) finds it, three classes included."""
    X = _numeric(600, 1)
    y = pd.Series(np.select([X["a"] + X["b"] > 0.5, X["a"] - X["c"] > 0], ["x", "y"], "z"))
    teacher = _unregularised_logreg(X).set_params(logisticregression__C=0.3).fit(X, y)
    targets = teacher_targets(teacher, X, "classification", y=y, synthetic=2, seed=0)
    student = fit_student(_unregularised_logreg(X), targets)
    unseen = _numeric(200, 2)
    assert list(student.classes_) == ["x", "y", "z"]
    np.testing.assert_allclose(student.predict_proba(unseen), teacher.predict_proba(unseen), atol=2e-3)
    hard = _unregularised_logreg(X).fit(X, y)  # the labels alone lead elsewhere
    assert np.abs(hard.predict_proba(unseen) - teacher.predict_proba(unseen)).max() > 0.1


def _noisy_labels_and_clean_teacher(teacher_is_right: bool) -> tuple[Targets, tuple[pd.DataFrame, pd.Series]]:
    """Training labels flipped to 1 on half the plane; the teacher's probabilities the clean rule (or
    its opposite); validation rows clean."""
    X, held = _numeric(400, 3), _numeric(300, 4)
    clean = (X["a"] > 0).astype(int)
    labels = clean.where(~((X["b"] > 0) & (np.arange(len(X)) % 2 == 0)), 1)
    p = 1 / (1 + np.exp(-6 * X["a"].to_numpy() * (1 if teacher_is_right else -1)))
    targets = Targets(X, np.column_stack([1 - p, p]), labels, np.array([0, 1]))
    return targets, (held, (held["a"] > 0).astype(int))


@pytest.mark.parametrize("teacher_is_right, kept", [(True, "distilled"), (False, "hard-label")])
def test_the_student_that_scores_better_on_validation_is_kept_and_both_scores_recorded(
        teacher_is_right: bool, kept: str) -> None:
    targets, validation = _noisy_labels_and_clean_teacher(teacher_is_right)
    make = lambda: make_student("logreg", "classification", targets.X, 0, {})  # noqa: E731
    student, info = tuned_student(make, targets, validation)
    assert info["targets"] == kept
    distilled, hard = tuple(info["validation"]), tuple(info["hard_label_validation"])
    assert (distilled >= hard) == (kept == "distilled")  # by far more than one row here
    assert max(distilled, hard)[0] == pytest.approx((student.predict(validation[0]) == validation[1]).mean())
    assert tuple(max(g["validation"] for g in info["grid"])) == distilled


def test_without_a_validation_split_the_distilled_student_ships_untested() -> None:
    targets, _ = _noisy_labels_and_clean_teacher(False)
    _, info = tuned_student(lambda: make_student("logreg", "classification", targets.X, 0, {}), targets, None)
    assert info["targets"] == "distilled" and "hard_label_validation" not in info and len(info["grid"]) == 1


def test_the_manifest_records_which_student_was_kept_and_both_validation_scores(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    mixed_frame(400).to_csv(data, index=False)
    result = train_locally(data, "churn", tmp_path / "out", seed=3,
                           extra_args=["--max-iter", "30", "--student", "logreg", "--augment", "1"])
    info = json.loads((tmp_path / "out" / "work" / "student" / "student.json").read_text())
    manifest = load_model(directory_reader(result["bundle"])).manifest
    choice = manifest.metrics["validation_student"]
    assert choice["distilled_kept"] == float(info["targets"] == "distilled")
    assert choice["distilled_accuracy"] == pytest.approx(info["validation"][0])
    assert choice["hard_label_accuracy"] == pytest.approx(info["hard_label_validation"][0])
    if not choice["distilled_kept"]:  # hard labels only ever replace it by beating it
        assert choice["hard_label_accuracy"] > choice["distilled_accuracy"]
    assert manifest.lineage["student_targets"] == info["targets"]


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


@pytest.mark.parametrize("only_hard, only_distilled, hard_wins", [
    (1, 0, False),  # one row of a small split decides nothing
    (3, 1, False),  # 2 > sqrt(4) is false: within one standard error
    (4, 1, True),  # 3 > sqrt(5)
    (20, 10, True),
    (0, 0, False),
    (2, 5, False),
])
def test_hard_labels_replace_the_distilled_student_only_when_clearly_better(
        only_hard: int, only_distilled: int, hard_wins: bool) -> None:
    both = 50
    truth = np.array(["yes"] * (both + only_hard + only_distilled), dtype=object)
    distilled = truth.copy()
    hard = truth.copy()
    hard[both + only_hard:] = "no"
    distilled[both:both + only_hard] = "no"
    assert clearly_better(truth, distilled, hard, regression=False) is hard_wins


def test_regression_hard_labels_need_a_mean_gain_beyond_its_standard_error() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=200)
    distilled = truth + rng.normal(scale=1.0, size=200)
    assert clearly_better(truth, distilled, truth + rng.normal(scale=0.5, size=200), regression=True)
    assert not clearly_better(truth, distilled, distilled.copy(), regression=True)  # the same predictions
    assert not clearly_better(truth, distilled, truth + rng.normal(scale=2.0, size=200), regression=True)
    assert not clearly_better(truth[:1], distilled[:1], truth[:1], regression=True)
