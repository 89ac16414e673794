"""Training and distillation: data checks, determinism, the script-mode contract, a servable bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from functions.common.bundle import directory_reader, load_model
from pipeline.training.data import DataRefused, split, validate_data
from pipeline.training.local import train_locally
from pipeline.training.models import distil, make_student, make_teacher, soften
from tests.conftest import breast_cancer, mixed_frame

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--max-iter", "40", "--student-iter", "20", "--augment", "0"]


def test_data_report_flags_leaks_constants_and_tiny_classes() -> None:
    frame = mixed_frame(300)
    frame["copy"] = frame["churn"]
    frame["constant"] = 1.0
    report = validate_data(frame, "churn")
    assert report["task"] == "classification" and any("'copy' leaks" in f for f in report["fatal"])
    assert report["columns"]["constant"]["dropped"] == "constant"
    tiny = mixed_frame(300)
    tiny.loc[tiny.index[:-5], "churn"] = "no"
    tiny.loc[tiny.index[-5:], "churn"] = "yes"
    assert any("only 5 rows" in f for f in validate_data(tiny, "churn")["fatal"])
    one_class = mixed_frame(100).assign(churn="no")
    assert any("fewer than two classes" in f for f in validate_data(one_class, "churn")["fatal"])
    with pytest.raises(DataRefused, match="not in the data"):
        validate_data(frame, "nope")


def test_split_is_deterministic_and_stratified() -> None:
    frame = breast_cancer()
    a, b = split(frame, "target", "classification", 5), split(frame, "target", "classification", 5)
    assert all(a[k].index.equals(b[k].index) for k in a)
    assert sum(len(p) for p in a.values()) == len(frame)
    assert abs(a["holdout"]["target"].mean() - frame["target"].mean()) < 0.03


def test_soften_keeps_argmax_and_spreads_mass() -> None:
    proba = np.array([[0.9, 0.08, 0.02], [0.2, 0.7, 0.1]])
    warm = soften(proba, 3.0)
    assert np.allclose(warm.sum(axis=1), 1) and (warm.argmax(axis=1) == proba.argmax(axis=1)).all()
    assert (warm.max(axis=1) < proba.max(axis=1)).all()


@pytest.mark.slow  # trains a teacher and a student: tens of seconds on a loaded machine
def test_distilled_student_mimics_the_teacher_better_than_a_hard_label_student() -> None:
    frame = mixed_frame(1500)
    X, y = frame.drop(columns=["churn"]), frame["churn"]
    teacher, _ = make_teacher("hgb", "classification", X, 0, {"max_iter": 30})
    teacher.fit(X, y)

    def student() -> object:  # unregularised and converged: the soft-label optimum is exact
        from sklearn.linear_model import LogisticRegression

        model = make_student("logreg", "classification", X, 0, {})
        model.steps[-1] = ("logisticregression", LogisticRegression(C=np.inf, tol=1e-10, max_iter=20_000))
        return model

    soft = student()
    distil(teacher, soft, X, "classification")
    hard = student().fit(X, y)
    target = teacher.predict_proba(X)

    def cross_entropy_to_teacher(model: object) -> float:  # what distillation minimises
        return float(-np.mean(np.sum(target * np.log(np.clip(model.predict_proba(X), 1e-12, 1)), axis=1)))

    assert cross_entropy_to_teacher(soft) < cross_entropy_to_teacher(hard)


@pytest.mark.slow  # trains a teacher and a student: tens of seconds on a loaded machine
def test_train_gives_a_servable_bundle_and_the_same_metrics_for_the_same_seed(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    mixed_frame(600).to_csv(data, index=False)
    first = train_locally(data, "churn", tmp_path / "a", seed=3, extra_args=FAST)
    second = train_locally(data, "churn", tmp_path / "b", seed=3, extra_args=FAST)
    assert first["metrics"] == second["metrics"]
    assert {"holdout_teacher", "holdout_student", "holdout_baseline"} <= set(first["metrics"])
    model = load_model(directory_reader(first["bundle"]))
    manifest = model.manifest
    assert manifest.training_data_fingerprint and manifest.lineage["teacher"] == "hgb"
    assert json.loads(manifest.lineage["hyperparameters"])["seed"] == 3
    assert manifest.profile is not None and set(manifest.profile.features) == set(manifest.feature_names)
    assert manifest.profile.features["plan"].type == "category" and manifest.profile.prediction is not None
    result = model.predict([{"age": 40.0, "plan": "pro", "income": None, "region": "north"}])
    assert result.predictions[0] in ("yes", "no")


@pytest.mark.slow  # trains a teacher and a student: tens of seconds on a loaded machine
def test_regression_chain(tmp_path: Path) -> None:
    from sklearn.datasets import load_diabetes

    data = tmp_path / "d.parquet"
    load_diabetes(as_frame=True).frame.to_parquet(data)
    result = train_locally(data, "target", tmp_path / "out", task="regression", extra_args=FAST)
    assert result["task"] == "regression"
    assert result["metrics"]["holdout_student"]["rmse"] < result["metrics"]["holdout_baseline"]["rmse"]


def test_refused_data_stops_the_chain(tmp_path: Path) -> None:
    data = tmp_path / "leaky.csv"
    mixed_frame(200).assign(leak=lambda f: f["churn"]).to_csv(data, index=False)
    with pytest.raises(DataRefused, match="leaks the target"):
        train_locally(data, "churn", tmp_path / "out", extra_args=FAST)


def test_entry_point_honours_the_sagemaker_contract(tmp_path: Path) -> None:
    train = tmp_path / "input" / "data" / "train"
    train.mkdir(parents=True)
    mixed_frame(300).to_csv(train / "part-0.csv", index=False)
    env = {**os.environ, "SM_MODEL_DIR": str(tmp_path / "model"), "SM_CHANNEL_TRAIN": str(train),
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "pipeline/training/teacher_job.py", "--target", "churn", "--max-iter", "20",
                           "--sagemaker_program", "teacher_job.py"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    info = json.loads((tmp_path / "model" / "teacher.json").read_text())
    assert info["device"] in ("cpu", "cuda") and info["rows"] == 300
    assert (tmp_path / "model" / "teacher.joblib").is_file()


def test_train_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main as cli

    data = tmp_path / "bc.csv"
    breast_cancer().to_csv(data, index=False)
    out_dir = str(tmp_path / "o")
    assert cli(["train", "--data", str(data), "--target", "target", "--out", out_dir, "--augment", "0"]) == 0
    out = capsys.readouterr().out
    assert "teacher" in out and "student" in out and "baseline" in out and (tmp_path / "o/bundle/model.onnx").is_file()
    pd.read_csv(data)  # the input is untouched


# -- real-shaped data: ID-like columns, the check before training, progress, the teacher's size ---------

def test_id_like_text_columns_are_dropped_with_a_warning() -> None:
    from tests import realdata

    report = validate_data(realdata.string_labels(600, 1), "segment")
    dropped = {name: info.get("dropped") for name, info in report["columns"].items()}
    assert dropped["customer_id"] == dropped["signup_date"] == "id_like"
    assert dropped["plan"] is None and dropped["city"] is None and dropped["age"] is None
    assert any("'signup_date' looks like an ID, a date or free text: 100% of its 600 values are distinct" in w
               for w in report["warnings"])


def test_what_export_would_refuse_is_refused_before_training(tmp_path: Path) -> None:
    from tests import realdata

    frame = realdata.string_labels(400, 2)
    frame["signed_up"] = pd.Timestamp("2020-01-01") + pd.to_timedelta(np.arange(len(frame)) % 30, unit="D")
    data = tmp_path / "dates.parquet"
    frame.to_parquet(data)
    with pytest.raises(DataRefused, match=r"checked before training: .*'signed_up'"):
        train_locally(data, "segment", tmp_path / "out", extra_args=FAST)
    assert not (tmp_path / "out" / "work" / "teacher").exists()  # refused before the teacher ran
    mixed = realdata.string_labels(400, 2).assign(code=[i if i % 2 else f"x{i}" for i in range(400)])
    with pytest.raises(DataRefused, match=r"fit_failed"):
        from pipeline.training.preflight import check_exportable

        check_exportable(mixed, "segment", "classification", ["logreg"], 0)


def test_a_heartbeat_names_the_step_and_the_time_it_has_run() -> None:
    from pipeline.training.progress import Heartbeat, reporting

    said: list[str] = []
    now = [100.0]
    heart = Heartbeat("teacher", said.append, clock=lambda: now[0])
    now[0] = 145.2
    heart.beat()
    assert said == ["[teacher] still running, 45 s"]
    said.clear()
    with reporting("distil", said.append, every=3600):
        pass
    assert said[0] == "[distil] started" and said[-1].startswith("[distil] done in ")


def test_the_teacher_is_sized_to_the_data_and_stops_early_on_the_validation_split() -> None:
    from pipeline.training.models import fit_teacher, teacher_size
    from tests import realdata

    assert teacher_size(660)["max_leaf_nodes"] == 11 and teacher_size(100_000)["max_leaf_nodes"] == 63
    frame = realdata.float_coded_classes(900, 3).drop(columns=[realdata.ID_COLUMN, realdata.DATE_COLUMN])
    frame = frame.dropna(subset=realdata.CATEGORICAL)
    parts = split(frame, "quality", "classification", 3)
    X, y = parts["train"].drop(columns=["quality"]), parts["train"]["quality"]
    teacher, _ = make_teacher("hgb", "classification", X, 3, {"max_iter": 400})
    fit = fit_teacher(teacher, X, y, parts["validation"].drop(columns=["quality"]), parts["validation"]["quality"])
    assert fit["stopped_early"] and fit["rounds"] < 400


def test_a_teacher_no_better_than_the_baseline_is_reported() -> None:
    from pipeline.training.evaluation import teacher_warnings

    metrics = {"holdout_teacher": {"log_loss": 1.40}, "holdout_student": {"log_loss": 1.10},
               "holdout_baseline": {"log_loss": 1.20}}
    found = teacher_warnings("classification", metrics)
    assert any("no better than the trivial baseline" in w for w in found)
    assert any("the student beats the teacher" in w for w in found)
    assert teacher_warnings("regression", {"holdout_teacher": {"rmse": 1.0}, "holdout_baseline": {"rmse": 2.0},
                                           "holdout_student": {"rmse": 1.1}}) == []


def test_the_validate_job_checks_export_before_the_teacher_job(tmp_path: Path) -> None:
    """The SageMaker chain's first job refuses what export would refuse, as `slimserve train` does."""
    from pipeline.training.contract import JobPaths
    from pipeline.training.jobs import parser, run_validate
    from tests import realdata

    train = tmp_path / "train"
    train.mkdir()
    frame = realdata.string_labels(300, 6)
    frame["signed_up"] = pd.Timestamp("2020-01-01") + pd.to_timedelta(np.arange(len(frame)) % 30, unit="D")
    frame.to_parquet(train / "part.parquet")
    paths = JobPaths(model_dir=tmp_path / "model", output_dir=tmp_path / "output", channels={"train": train})
    with pytest.raises(DataRefused, match=r"checked before training: .*'signed_up'"):
        run_validate(parser("validate").parse_args(["--target", "segment"]), paths)
    report = run_validate(parser("validate").parse_args(["--target", "segment"]),
                          JobPaths(paths.model_dir, paths.output_dir, {"train": _without(train, "signed_up")}))
    assert set(report["not_exportable"]) <= {"hgb"}


def _without(folder: Path, column: str) -> Path:
    out = folder.parent / f"{folder.name}-without-{column}"
    out.mkdir()
    pd.read_parquet(folder / "part.parquet").drop(columns=[column]).to_parquet(out / "part.parquet")
    return out


def test_every_job_of_the_sagemaker_chain_drops_what_data_validation_drops(tmp_path: Path) -> None:
    """An ID-like column never reaches the teacher, the student or the bundle, as with `slimserve train`."""
    from pipeline.training.contract import JobPaths
    from pipeline.training.jobs import _usable

    frame = mixed_frame(300)
    frame["customer_id"] = [f"c-{i:05d}" for i in range(len(frame))]
    frame.loc[3, "churn"] = None
    channels = {}
    for name, rows in (("train", frame.iloc[:200]), ("validation", frame.iloc[200:])):
        (tmp_path / name).mkdir()
        rows.to_csv(tmp_path / name / "part.csv", index=False)
        channels[name] = tmp_path / name
    paths = JobPaths(model_dir=tmp_path / "model", output_dir=tmp_path / "out", channels=channels)
    train, validation = _usable(paths, "train", "churn", None), _usable(paths, "validation", "churn", None)
    assert "customer_id" not in train.columns and "customer_id" not in validation.columns
    assert len(train) == 199 and train["churn"].notna().all() and len(validation) == 100
