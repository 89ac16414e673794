"""Distillation benchmark: teacher vs distilled student vs the same student on hard labels, and int8.

For each data set, one run of the `slimserve train` steps: holdout accuracy and the gate's primary
metric (ROC AUC for two classes, macro F1 for more), model.onnx size and single-row latency
(onnxruntime, p50) of the teacher and the students. Baselines measured in the same run: the teacher
(exported to ONNX too) and the same student kind trained on the hard labels. The auto student is
what `slimserve train` ships; an MLP student is distilled too (the kind distillation helps most and
the only one int8 quantization applies to), float and int8 side by side.

Run: .venv/bin/python benchmarks/distillation.py [--sets breast_cancer,wine,...] [--large-rows 100000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def datasets(large_rows: int) -> dict[str, tuple[pd.DataFrame, str]]:
    """Small, multi-class, imbalanced and real-shaped (mixed types, nulls, an ID and a date) sets."""
    from sklearn.datasets import load_breast_cancer, load_digits, load_wine, make_classification

    from tests import realdata

    X, y = make_classification(n_samples=20_000, n_features=12, n_informative=6, weights=[0.95], flip_y=0.02,
                               random_state=1)
    imbalanced = pd.DataFrame(X, columns=[f"f{i}" for i in range(12)]).assign(target=y)
    sets = {"breast_cancer": (load_breast_cancer(as_frame=True).frame, "target"),
            "wine": (load_wine(as_frame=True).frame, "target"),
            "digits": (load_digits(as_frame=True).frame, "target"),
            "imbalanced_5pct": (imbalanced, "target"),
            "realshaped_3class": (realdata.string_labels(10_000, 5), "segment"),
            "realshaped_grades": (realdata.float_coded_classes(10_000, 6), "quality")}
    if large_rows:
        X, y = make_classification(n_samples=large_rows, n_features=20, n_informative=12, n_redundant=4,
                                   flip_y=0.03, class_sep=0.8, random_state=0)
        sets[f"make_classification_{large_rows:.0e}"] = (pd.DataFrame(X, columns=[f"f{i}" for i in range(20)])
                                                         .assign(target=y), "target")
    return sets


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


def _channel(work: Path, name: str) -> pd.DataFrame:
    from pipeline.training.contract import data_file, read_table

    return read_table(data_file(work / "work" / "channels" / name))


def _usable(frame: pd.DataFrame, target: str) -> pd.DataFrame:
    from pipeline.training.data import usable, validate_data

    return usable(frame, validate_data(frame, target))


def _holdout(work: Path, target: str) -> pd.DataFrame:
    """The holdout rows with the columns training kept (decided on the train split, as the jobs do)."""
    columns = _usable(_channel(work, "train"), target).columns
    return _channel(work, "holdout")[columns].dropna(subset=[target])


def hard_student_metrics(work: Path, target: str, seed: int, kind: str) -> dict[str, float]:
    from functions.common import metrics as m
    from pipeline.training.models import make_student

    train, holdout = _usable(_channel(work, "train"), target), _holdout(work, target)
    X, y = train.drop(columns=[target]), train[target]
    student = make_student(kind, "classification", X, seed, {"student_iter": 60, "student_depth": 4}).fit(X, y)
    proba = student.predict_proba(holdout.drop(columns=[target]))
    labels = np.asarray(student.classes_, dtype=object)[proba.argmax(axis=1)]
    return m.classification_metrics(holdout[target].to_numpy(dtype=object), labels, proba, list(student.classes_))


def mlp_student(work: Path, target: str, seed: int) -> tuple[dict[str, float], Path, Path, str]:
    """The distil and export steps again with --student mlp (same teacher, same channels): the float
    bundle, and a copy quantized to int8 where it holds on the holdout."""
    from pipeline.bundling.quantize import quantize_bundle
    from pipeline.training.jobs import main as job
    from pipeline.training.local import job_environment

    channels = work / "work" / "channels"
    args = ["--target", target, "--task", "classification", "--seed", str(seed), "--student", "mlp"]
    with job_environment(work / "work" / "student-mlp", train=channels / "train",
                         validation=channels / "validation", teacher=work / "work" / "teacher"):
        job("distil", args)
    with job_environment(work / "mlp", train=channels / "train", holdout=channels / "holdout",
                         student=work / "work" / "student-mlp", teacher=work / "work" / "teacher"):
        result = job("export", args)
    float_bundle = Path(result["bundle"])
    int8_bundle = Path(shutil.copytree(float_bundle, work / "mlp-int8"))
    holdout = _holdout(work, target)
    outcome = quantize_bundle(int8_bundle, holdout, target)
    return result["metrics"]["holdout_student"], float_bundle, int8_bundle, outcome.reason


def primary(values: dict[str, float], classes: int) -> float:
    return values["roc_auc"] if classes == 2 else values["macro_f1"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", help="comma-separated data set names (default: all)")
    parser.add_argument("--large-rows", type=int, default=0, help="add a make_classification set of this many rows")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    from pipeline.training.local import train_locally

    print("teacher: HistGradientBoosting sized to the data, early stopping (CPU); distilled: `slimserve train` "
          "defaults (10 MUNGE rows per training row labelled by the teacher, temperature 1|2 and label weight "
          "0|0.5 tuned on validation); student: auto (the first of logreg, mlp(32), hgb(60, depth 4) within 1 "
          "point of the teacher on validation), and mlp(32) besides; hard-label: the same kind on the labels; "
          "int8: the mlp quantized (dynamic), kept when the holdout holds. primary: roc_auc (2 classes) or "
          "macro_f1")
    print(f"{'data set':<20}{'rows':>7} | {'model':<18}{'accuracy':>9}{'primary':>9}{'onnx KiB':>10}{'p50 us':>8}")
    summary: list[dict[str, Any]] = []
    for name, (frame, target) in datasets(args.large_rows).items():
        if args.sets and name not in args.sets.split(","):
            continue
        work = Path(tempfile.mkdtemp(prefix=f"slimserve-distil-{name}-"))
        path = work / "data.parquet"
        frame.to_parquet(path)
        classes = frame[target].nunique()
        started = time.perf_counter()
        result = train_locally(path, target, work, seed=7)
        seconds = time.perf_counter() - started
        kind = result["student"]
        metrics = result["metrics"]
        hard = hard_student_metrics(work, target, 7, kind)
        t_bundle, s_bundle = teacher_bundle(work, frame, target), Path(result["bundle"])
        if kind == "mlp":  # the auto student is the MLP: quantize a copy of its bundle
            from pipeline.bundling.quantize import quantize_bundle

            mlp, mlp_float, mlp_int8 = metrics["holdout_student"], s_bundle, Path(shutil.copytree(s_bundle,
                                                                                                 work / "mlp-int8"))
            quantized = quantize_bundle(mlp_int8, _holdout(work, target), target).reason
        else:
            mlp, mlp_float, mlp_int8, quantized = mlp_student(work, target, 7)
        mlp_hard = hard if kind == "mlp" else hard_student_metrics(work, target, 7, "mlp")
        int8_metrics = _int8_metrics(mlp_int8, work, target)
        bundles = {"t": t_bundle, "s": s_bundle, "m": mlp_float, "q": mlp_int8}
        latency = {k: onnx_latency_us(b, frame) for k, b in bundles.items()}
        size = {k: (b / "model.onnx").stat().st_size / 1024 for k, b in bundles.items()}
        lines = [("teacher", metrics["holdout_teacher"], "t"), (f"distilled:{kind}", metrics["holdout_student"], "s"),
                 (f"hard-label:{kind}", hard, None)]
        if kind != "mlp":
            lines += [("distilled:mlp", mlp, "m"), ("hard-label:mlp", mlp_hard, None)]
        if int8_metrics is not None:
            lines.append(("distilled:mlp int8", int8_metrics, "q"))
        lines.append(("baseline", metrics["holdout_baseline"], None))
        for label, values, key in lines:
            cells = f"{size[key]:>10.1f}{latency[key]:>8.0f}" if key else f"{'-':>10}{'-':>8}"
            print(f"{name:<20}{len(frame):>7,} | {label:<18}{values['accuracy']:>9.4f}"
                  f"{primary(values, classes):>9.4f}{cells}")
        row = {"name": name, "kind": kind,
               "vs_hard": metrics["holdout_student"]["accuracy"] - hard["accuracy"],
               "vs_hard_primary": primary(metrics["holdout_student"], classes) - primary(hard, classes),
               "mlp_vs_hard": mlp["accuracy"] - mlp_hard["accuracy"],
               "vs_teacher": metrics["holdout_student"]["accuracy"] - metrics["holdout_teacher"]["accuracy"],
               "speedup": latency["t"] / latency["s"]}
        summary.append(row)
        print(f"{'':<20}{'':>7} | distilled {kind} vs hard-label: accuracy {row['vs_hard']:+.4f}, primary "
              f"{row['vs_hard_primary']:+.4f}; mlp vs hard-label mlp: accuracy {row['mlp_vs_hard']:+.4f}; vs teacher: "
              f"accuracy {row['vs_teacher']:+.4f}, {size['t'] / size['s']:.0f}x smaller, {row['speedup']:.1f}x "
              f"faster; train {seconds:.0f} s")
        if int8_metrics is not None:
            print(f"{'':<20}{'':>7} | int8 mlp: {quantized}; {size['m'] / size['q']:.2f}x smaller, accuracy "
                  f"{int8_metrics['accuracy'] - mlp['accuracy']:+.4f}, latency {latency['q']:.0f} vs "
                  f"{latency['m']:.0f} us float")
        else:
            print(f"{'':<20}{'':>7} | int8 mlp: {quantized}")
    if summary:
        print(f"distilled >= hard-label (auto student, accuracy): {sum(r['vs_hard'] >= 0 for r in summary)} of "
              f"{len(summary)} sets; mlp: {sum(r['mlp_vs_hard'] >= 0 for r in summary)} of {len(summary)}; within "
              f"1 point of the teacher: {sum(r['vs_teacher'] >= -0.01 for r in summary)} of {len(summary)}; "
              f">= 10x faster than the teacher: {sum(r['speedup'] >= 10 for r in summary)} of {len(summary)}")


def _int8_metrics(bundle: Path, work: Path, target: str) -> dict[str, float] | None:
    """Holdout metrics of the served graph in ``bundle`` (None when quantization kept the float graph)."""
    from functions.common import metrics as m
    from functions.common.bundle import directory_reader, load_model
    from pipeline.bundler import sample_instances

    model = load_model(directory_reader(bundle))
    if model.manifest.quantization is None:
        return None
    holdout = _holdout(work, target)
    answer = model.predict(sample_instances(holdout[model.manifest.feature_names]))
    return m.classification_metrics(holdout[target].to_numpy(dtype=object),
                                    np.asarray(answer.predictions, dtype=object),
                                    np.asarray(answer.probabilities), list(model.manifest.classes or []))


if __name__ == "__main__":
    main()
