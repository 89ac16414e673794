"""Distillation benchmark: teacher vs distilled student vs the same student on hard labels.

For each data set, one run: holdout accuracy and ROC AUC, model.onnx size, single-row latency
(onnxruntime, p50), all through the same `slimserve train` steps. Baseline: the teacher.

Run: .venv/bin/python benchmarks/distillation.py [--large-rows 1000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def datasets(large_rows: int) -> dict[str, tuple[pd.DataFrame, str]]:
    from sklearn.datasets import load_breast_cancer, load_digits, make_classification

    digits = load_digits(as_frame=True).frame
    X, y = make_classification(n_samples=large_rows, n_features=20, n_informative=12, n_redundant=4,
                               flip_y=0.03, class_sep=0.8, random_state=0)
    large = pd.DataFrame(X, columns=[f"f{i}" for i in range(20)]).assign(target=y)
    return {"breast_cancer": (load_breast_cancer(as_frame=True).frame, "target"),
            "digits": (digits, "target"), f"make_classification_{large_rows:.0e}": (large, "target")}


def onnx_latency_us(bundle: Path, frame: pd.DataFrame) -> float:
    import json

    from functions.common.bundle import directory_reader, load_model

    model = load_model(directory_reader(bundle))
    rows = json.loads(frame[model.manifest.feature_names].head(50).to_json(orient="values"))
    feeds = [model.schema.to_feeds([r]) for r in rows]
    for f in feeds:
        model.score(f)
    timings = []
    for i in range(1000):
        start = time.perf_counter()
        model.score(feeds[i % len(feeds)])
        timings.append(time.perf_counter() - start)
    return float(np.median(timings) * 1e6)


def teacher_bundle(work: Path, frame: pd.DataFrame, target: str) -> Path:
    """The teacher exported too, for a like-for-like size and latency comparison."""
    import joblib

    from pipeline.bundler import build_bundle

    teacher = joblib.load(work / "work" / "teacher" / "teacher.joblib")
    out = work / "teacher-bundle"
    build_bundle(teacher, frame.sample(min(len(frame), 2000), random_state=0), out, name="teacher", target=target)
    return out


def hard_student_metrics(work: Path, target: str, seed: int, kind: str) -> dict[str, float]:
    from functions.common import metrics as m
    from pipeline.training.contract import data_file, read_table
    from pipeline.training.models import make_student

    train = read_table(data_file(work / "work" / "channels" / "train"))
    holdout = read_table(data_file(work / "work" / "channels" / "holdout"))
    X, y = train.drop(columns=[target]), train[target]
    student = make_student(kind, "classification", X, seed, {"student_iter": 60, "student_depth": 4}).fit(X, y)
    proba = student.predict_proba(holdout.drop(columns=[target]))
    labels = np.asarray(student.classes_, dtype=object)[proba.argmax(axis=1)]
    return m.classification_metrics(holdout[target].to_numpy(dtype=object), labels, proba, list(student.classes_))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--large-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from pipeline.training.local import train_locally

    print("teacher: HistGradientBoosting, 400 rounds, 63 leaves (CPU); student: auto (the first of logreg, mlp(32), "
          "hgb(60 rounds, depth 4) within 1 point of the teacher on validation), distilled on teacher probabilities "
          "(T=1, one jittered copy of the rows); hard-label: the same student kind on the labels")
    print(f"{'data set':<26}{'rows':>9} | {'model':<14}{'accuracy':>9}{'roc_auc':>9}{'onnx KiB':>10}"
          f"{'p50 us':>8} | {'train s':>8}")
    for name, (frame, target) in datasets(args.large_rows).items():
        work = Path(tempfile.mkdtemp(prefix=f"slimserve-distil-{name}-"))
        path = work / "data.parquet"
        frame.to_parquet(path)
        started = time.perf_counter()
        result = train_locally(path, target, work, seed=7)
        seconds = time.perf_counter() - started
        student_bundle = Path(result["bundle"])
        t_bundle = teacher_bundle(work, frame, target)
        metrics = result["metrics"]
        hard = hard_student_metrics(work, target, 7, result["student"])
        lines = [("teacher", metrics["holdout_teacher"], t_bundle), (f"student:{result['student']}",
                                                                      metrics["holdout_student"], student_bundle),
                 ("hard-label", hard, None), ("baseline", metrics["holdout_baseline"], None)]
        latencies = {t_bundle: onnx_latency_us(t_bundle, frame), student_bundle: onnx_latency_us(student_bundle, frame)}
        for label, values, bundle in lines:
            size = f"{(bundle / 'model.onnx').stat().st_size / 1024:>10.0f}" if bundle else f"{'-':>10}"
            latency = f"{latencies[bundle]:>8.0f}" if bundle else f"{'-':>8}"
            timing = f"{seconds:>8.0f}" if label.startswith("student") else f"{'':>8}"
            print(f"{name:<26}{len(frame):>9,} | {label:<14}{values['accuracy']:>9.4f}{values['roc_auc']:>9.4f}"
                  f"{size}{latency} | {timing}")
        teacher_kib = (t_bundle / "model.onnx").stat().st_size / 1024
        student_kib = (student_bundle / "model.onnx").stat().st_size / 1024
        gap = metrics["holdout_student"]["accuracy"] - metrics["holdout_teacher"]["accuracy"]
        print(f"{'':<26}{'':>9} | student vs teacher: accuracy {gap:+.4f}, "
              f"size {teacher_kib / student_kib:.1f}x smaller, latency "
              f"{latencies[t_bundle] / latencies[student_bundle]:.1f}x faster; "
              f"distilled vs hard-label accuracy {metrics['holdout_student']['accuracy'] - hard['accuracy']:+.4f}")


if __name__ == "__main__":
    main()
