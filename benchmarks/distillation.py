"""Distillation benchmark: per data set, the teacher, and each student kind (logistic regression, MLP)
distilled and on hard labels, beside what `slimserve train` ships.

For each set: one run of the `slimserve train` chain (what ships: `--student auto`, the distilled or
hard-label student, whichever does better on the validation split); then, on the same teacher, split
and synthetic rows, the logistic-regression and MLP students both ways. Holdout accuracy and the
gate's primary metric (ROC AUC for two classes, macro F1 for more), validation accuracy (what the
choice sees), model.onnx size and single-row latency (onnxruntime ``session.run``, p50) of each graph,
and onnxruntime's per-call floor (an Identity graph) beside them: no model can be more than
teacher / floor times faster than the teacher. int8: the distilled MLP quantized, where it holds.

Run: .venv/bin/python benchmarks/distillation.py [--quick] [--sets breast_cancer,wine,...] [--large-rows N]
(--quick: at most 3,000 rows a set and 3 synthetic rows per training row instead of 10)
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
KINDS = ("logreg", "mlp")
QUICK_ROWS, QUICK_AUGMENT, AUGMENT = 3000, 3.0, 10.0
SEED = 7


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


def _time_us(run: Any, feeds: list[dict[str, np.ndarray]], calls: int = 1000) -> float:
    """p50 of one call over ``calls`` calls, after one warm-up pass over the feeds."""
    for f in feeds:
        run(f)
    timings = []
    for i in range(calls):
        start = time.perf_counter()
        run(feeds[i % len(feeds)])
        timings.append(time.perf_counter() - start)
    return float(np.median(timings) * 1e6)


def onnx_latency_us(bundle: Path, frame: pd.DataFrame) -> float:
    """One row through the bundle's onnxruntime session (``session.run``, every output)."""
    import json

    from functions.common.bundle import directory_reader, load_model

    model = load_model(directory_reader(bundle))
    rows = json.loads(frame[model.manifest.feature_names].head(50).to_json(orient="values"))
    feeds = [model.schema.to_feeds([r]) for r in rows]
    return _time_us(lambda f: model.session.run(None, f), feeds)


def floor_latency_us(width: int) -> float:
    """onnxruntime's fixed cost per call: one row through an Identity graph of ``width`` floats."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "floor",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = [{"x": np.random.default_rng(i).normal(size=(1, width)).astype(np.float32)} for i in range(50)]
    return _time_us(lambda f: session.run(None, f), feeds)


def _bundle(model: Any, frame: pd.DataFrame, target: str, out: Path) -> Path:
    from pipeline.bundler import build_bundle

    build_bundle(model, frame.sample(min(len(frame), 2000), random_state=0), out, name=out.name, target=target)
    return out


def _channel(work: Path, name: str) -> pd.DataFrame:
    from pipeline.training.contract import data_file, read_table

    return read_table(data_file(work / "work" / "channels" / name))


def _usable(frame: pd.DataFrame, target: str) -> pd.DataFrame:
    from pipeline.training.data import usable, validate_data

    return usable(frame, validate_data(frame, target))


def _split(work: Path, target: str, name: str) -> pd.DataFrame:
    """A split's rows with the columns training kept (decided on the train split, as the jobs do)."""
    columns = _usable(_channel(work, "train"), target).columns
    return _channel(work, name)[columns].dropna(subset=[target])


def holdout_figures(model: Any, holdout: pd.DataFrame, target: str) -> dict[str, float]:
    from functions.common import metrics as m

    proba = model.predict_proba(holdout.drop(columns=[target]))
    labels = np.asarray(model.classes_, dtype=object)[proba.argmax(axis=1)]
    return m.classification_metrics(holdout[target].to_numpy(dtype=object), labels, proba, list(model.classes_))


def both_ways(work: Path, target: str, augment: float, kind: str) -> dict[str, tuple[Any, float]]:
    """The ``kind`` student distilled (tuned as the distil step tunes it) and on hard labels, each with
    its validation accuracy, from the chain's own teacher and splits."""
    import joblib

    from pipeline.training.models import (
        distilled_student,
        hard_label_student,
        make_student,
        teacher_targets,
        validation_score,
    )

    train, validation = _split(work, target, "train"), _split(work, target, "validation")
    X, y = train.drop(columns=[target]), train[target]
    held = (validation.drop(columns=[target]), validation[target])
    teacher = joblib.load(work / "work" / "teacher" / "teacher.joblib")
    targets = teacher_targets(teacher, X, "classification", y=y, synthetic=augment, seed=SEED)

    def make() -> Any:
        return make_student(kind, "classification", X, SEED, {"student_iter": 60, "student_depth": 4})

    distilled = distilled_student(make, targets, held)[0]
    hard = hard_label_student(make, targets)
    return {who: (model, validation_score(model, held, False)[0])
            for who, model in (("distilled", distilled), ("hard-label", hard))}


def primary(values: dict[str, float], classes: int) -> float:
    return values["roc_auc"] if classes == 2 else values["macro_f1"]


def run_set(name: str, frame: pd.DataFrame, target: str, augment: float) -> dict[str, Any]:
    """Train, compare and time one data set; print its lines and return its summary row."""
    import json

    import joblib

    from pipeline.bundling.quantize import quantize_bundle
    from pipeline.training.local import train_locally

    work = Path(tempfile.mkdtemp(prefix=f"slimserve-distil-{name}-"))
    path = work / "data.parquet"
    frame.to_parquet(path)
    classes = frame[target].nunique()
    started = time.perf_counter()
    result = train_locally(path, target, work, seed=SEED, extra_args=["--augment", str(augment)])
    seconds = time.perf_counter() - started
    shipped = json.loads((work / "work" / "student" / "student.json").read_text())
    holdout = _split(work, target, "holdout")
    teacher = joblib.load(work / "work" / "teacher" / "teacher.joblib")
    bundles = {"teacher": _bundle(teacher, frame, target, work / "teacher-bundle"), "shipped": Path(result["bundle"])}
    lines: list[tuple[str, dict[str, float], float | None, str | None]] = [
        ("teacher", result["metrics"]["holdout_teacher"], None, "teacher")]
    figures: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        models = both_ways(work, target, augment, kind)
        bundles[kind] = _bundle(models["distilled"][0], frame, target, work / f"{kind}-bundle")
        for who, (model, val) in models.items():
            figures[f"{kind} {who}"] = holdout_figures(model, holdout, target)
            lines.append((f"{kind} {who}", figures[f"{kind} {who}"], val, kind))  # same graph either way
    int8 = Path(shutil.copytree(bundles["mlp"], work / "mlp-int8"))
    quantized = quantize_bundle(int8, holdout, target)
    if quantized.kept:
        bundles["int8"] = int8
        lines.append(("mlp distilled int8", _int8_metrics(int8, holdout, target), None, "int8"))
    kind, chosen = shipped["student"], shipped["targets"]
    kept = shipped["hard_label_validation"] if chosen == "hard-label" else shipped["validation"]
    lines.append((f"shipped: {kind} {chosen}", result["metrics"]["holdout_student"], kept[0], "shipped"))
    lines.append(("baseline", result["metrics"]["holdout_baseline"], None, None))
    latency = {k: onnx_latency_us(b, frame) for k, b in bundles.items()}
    size = {k: (b / "model.onnx").stat().st_size / 1024 for k, b in bundles.items()}
    width = len(json.loads((bundles["teacher"] / "manifest.json").read_text())["features"])
    floor = floor_latency_us(width)
    for label, values, val, key in lines:
        cells = f"{size[key]:>10.1f}{latency[key]:>8.0f}" if key else f"{'-':>10}{'-':>8}"
        shown = f"{val:>8.4f}" if val is not None else f"{'-':>8}"
        print(f"{name:<20}{len(frame):>7,} | {label:<30}{shown}{values['accuracy']:>9.4f}"
              f"{primary(values, classes):>9.4f}{cells}")
    row = {"name": name, "floor": floor, "teacher_us": latency["teacher"], "shipped_us": latency["shipped"],
           "speedup": latency["teacher"] / latency["shipped"], "reachable": latency["teacher"] / floor,
           "vs_teacher": result["metrics"]["holdout_student"]["accuracy"]
           - result["metrics"]["holdout_teacher"]["accuracy"],
           "shipped_vs_hard": result["metrics"]["holdout_student"]["accuracy"]
           - figures.get(f"{kind} hard-label", result["metrics"]["holdout_student"])["accuracy"],
           **{f"{k}_gain": figures[f"{k} distilled"]["accuracy"] - figures[f"{k} hard-label"]["accuracy"]
              for k in KINDS}}
    print(f"{'':<20}{'':>7} | distilled - hard-label (holdout accuracy): "
          + ", ".join(f"{k} {row[f'{k}_gain']:+.4f}" for k in KINDS)
          + f"; shipped {kind} {chosen} vs teacher {row['vs_teacher']:+.4f}, {size['teacher'] / size['shipped']:.0f}x "
          f"smaller, {row['speedup']:.1f}x faster (teacher {latency['teacher']:.1f} us, shipped "
          f"{latency['shipped']:.1f} us, onnxruntime floor {floor:.1f} us: at most {row['reachable']:.1f}x); "
          f"train {seconds:.0f} s")
    print(f"{'':<20}{'':>7} | int8 mlp: {quantized.reason}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sets", help="comma-separated data set names (default: all)")
    parser.add_argument("--large-rows", type=int, default=0, help="add a make_classification set of this many rows")
    parser.add_argument("--quick", action="store_true",
                        help=f"at most {QUICK_ROWS:,} rows a set, {QUICK_AUGMENT:g} synthetic rows per training row")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    augment = QUICK_AUGMENT if args.quick else AUGMENT
    print(f"teacher: HistGradientBoosting sized to the data, early stopping (CPU); distilled: {augment:g} MUNGE rows "
          "per training row labelled by the teacher, temperature 1|2 and label weight 0|0.5 tuned on validation; "
          "hard-label: the same student on the training rows' labels; students: logreg, mlp(32); shipped: "
          "`slimserve train --student auto` (the first of logreg, mlp, hgb within 1 point of the teacher on "
          "validation, the distilled student unless hard labels are clearly better there); int8: the distilled "
          "mlp quantized (dynamic), shown when kept. val acc: validation accuracy; primary: roc_auc (2 classes) "
          "or macro_f1; p50 us: one row, onnxruntime session.run"
          + ("; --quick: sets cut to 3,000 rows" if args.quick else ""))
    print(f"{'data set':<20}{'rows':>7} | {'model':<30}{'val acc':>8}{'accuracy':>9}{'primary':>9}{'onnx KiB':>10}"
          f"{'p50 us':>8}")
    summary: list[dict[str, Any]] = []
    for name, (frame, target) in datasets(args.large_rows).items():
        if args.sets and name not in args.sets.split(","):
            continue
        if args.quick and len(frame) > QUICK_ROWS:
            frame = frame.sample(QUICK_ROWS, random_state=0).reset_index(drop=True)
        summary.append(run_set(name, frame, target, augment))
    if summary:
        n = len(summary)
        print("distilled >= hard-label (holdout accuracy): "
              + ", ".join(f"{k} {sum(r[f'{k}_gain'] >= 0 for r in summary)} of {n}" for k in KINDS)
              + f"; shipped >= the hard-label student of its kind: {sum(r['shipped_vs_hard'] >= 0 for r in summary)} "
              f"of {n}; within 1 point of the teacher: {sum(r['vs_teacher'] >= -0.01 for r in summary)} of {n}; "
              f">= 10x faster than the teacher: {sum(r['speedup'] >= 10 for r in summary)} of {n} (possible at all, "
              f"teacher >= 10x the onnxruntime floor: {sum(r['reachable'] >= 10 for r in summary)} of {n})")


def _int8_metrics(bundle: Path, holdout: pd.DataFrame, target: str) -> dict[str, float]:
    """Holdout metrics of the int8 graph in ``bundle``."""
    from functions.common import metrics as m
    from functions.common.bundle import directory_reader, load_model
    from pipeline.bundler import sample_instances

    model = load_model(directory_reader(bundle))
    answer = model.predict(sample_instances(holdout[model.manifest.feature_names]))
    return m.classification_metrics(holdout[target].to_numpy(dtype=object),
                                    np.asarray(answer.predictions, dtype=object),
                                    np.asarray(answer.probabilities), list(model.manifest.classes or []))


if __name__ == "__main__":
    main()
