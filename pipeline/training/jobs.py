"""The four training steps, each a SageMaker script-mode job that also runs locally.

validate data -> teacher -> distil -> export. Inputs arrive as channels (``SM_CHANNEL_TRAIN``,
``SM_CHANNEL_VALIDATION``, ``SM_CHANNEL_HOLDOUT``, ``SM_CHANNEL_TEACHER``, ``SM_CHANNEL_STUDENT``),
hyperparameters as arguments, outputs go to ``SM_MODEL_DIR``. Models pass between steps as
joblib files inside the training environment only; what leaves it is the ONNX bundle.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

from .contract import JobPaths, data_file, fingerprint, read_table
from .data import DataRefused, usable, validate_data
from .evaluation import student_gap, teacher_warnings
from .models import (
    AUTO_STUDENTS,
    LABEL_WEIGHTS,
    MAX_SYNTHETIC_ROWS,
    STUDENTS,
    TEACHERS,
    TEMPERATURES,
    fit_teacher,
    make_student,
    make_teacher,
    student_label,
    teacher_targets,
    tuned_student,
)


def parser(step: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"slimserve-{step}", description=f"slimserve training step: {step}")
    p.add_argument("--target", required=True)
    p.add_argument("--task", choices=["classification", "regression"])
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--teacher", choices=TEACHERS, default="hgb")
    p.add_argument("--student", choices=("auto", *STUDENTS), default="auto",
                   help="auto: the smallest student within --max-gap of the teacher on the validation split")
    p.add_argument("--auto-students", default=",".join(AUTO_STUDENTS),
                   help="auto: the students to try, smallest first (comma-separated)")
    p.add_argument("--export-check", choices=("on", "off"), default="on",
                   help="validate: fit and bundle each student on a sample first (off: already checked)")
    p.add_argument("--max-gap", type=float, default=0.01, help="auto: accepted accuracy (or relative RMSE) gap")
    p.add_argument("--temperature", type=_choice_or_number, default="auto",
                   help="distillation temperature; auto: the best of 1 and 2 on the validation split")
    p.add_argument("--label-weight", type=_choice_or_number, default="auto",
                   help="share of the training rows' own labels in their soft targets; auto: 0 or 0.5 on validation")
    p.add_argument("--augment", type=float, default=10.0,
                   help="synthetic (MUNGE) rows per training row, labelled by the teacher (0: none)")
    p.add_argument("--max-synthetic", type=int, default=MAX_SYNTHETIC_ROWS, help="synthetic rows at most")
    p.add_argument("--max-iter", type=int, default=400, help="teacher boosting rounds / epochs")
    p.add_argument("--student-iter", type=int, default=60)
    p.add_argument("--student-depth", type=int, default=4)
    p.add_argument("--name", default="model")
    p.add_argument("--version")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--quantize", choices=("on", "off"), default="off",
                   help="export: an int8 (dynamic) graph where it applies and keeps the holdout figures")
    return p


def _choice_or_number(value: str) -> str | float:
    return "auto" if value == "auto" else float(value)


def _artefacts(paths: JobPaths, channel: str) -> Path:
    """A channel holding another job's output: SageMaker hands over model.tar.gz, unpack it once."""
    import tarfile

    folder = paths.channel(channel)
    archive = folder / "model.tar.gz"
    if archive.is_file() and not any(folder.glob("*.json")):
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
    return folder


def _frame(paths: JobPaths, channel: str) -> tuple[pd.DataFrame, Path]:
    path = data_file(paths.channel(channel))
    return read_table(path), path


def _usable(paths: JobPaths, channel: str, target: str, task: str | None) -> pd.DataFrame:
    """A channel's rows without what data validation drops (ID-like, near-unique or constant columns; rows with
    no label), decided on the train channel: every job of the chain sees the columns `slimserve train` does."""
    frame, _ = _frame(paths, channel)
    train = frame if channel == "train" else _frame(paths, "train")[0]
    report = validate_data(train, target, task)
    dropped = [c for c, info in report["columns"].items() if info.get("dropped") and c in frame.columns]
    kept = frame.drop(columns=dropped)
    return kept.dropna(subset=[target]) if target in kept.columns else kept


def _xy(frame: pd.DataFrame, target: str) -> tuple[pd.DataFrame, pd.Series]:
    return frame.drop(columns=[target]), frame[target]


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_iter": args.max_iter, "student_iter": args.student_iter, "student_depth": args.student_depth}


def _grid(args: argparse.Namespace) -> dict[str, tuple[float, ...]]:
    """The temperatures and label weights tuned on the validation split (one each when fixed)."""
    return {"temperatures": TEMPERATURES if args.temperature == "auto" else (float(args.temperature),),
            "label_weights": LABEL_WEIGHTS if args.label_weight == "auto" else (float(args.label_weight),)}


def run_validate(args: argparse.Namespace, paths: JobPaths) -> dict[str, Any]:
    frame, path = _frame(paths, "train")
    report = validate_data(frame, args.target, args.task)
    report["fingerprint"] = fingerprint(path)
    _write_json(paths.model_dir / "data-report.json", report)
    if report["fatal"]:
        raise DataRefused("; ".join(report["fatal"]))
    if args.export_check == "on":  # what export would refuse, before the teacher's hours
        from .preflight import check_exportable

        kinds = args.auto_students.split(",") if args.student == "auto" else [args.student]
        report["not_exportable"] = check_exportable(usable(frame, report), args.target, report["task"], kinds,
                                                    args.seed)
        _write_json(paths.model_dir / "data-report.json", report)
    return report


def run_teacher(args: argparse.Namespace, paths: JobPaths) -> dict[str, Any]:
    train = _usable(paths, "train", args.target, args.task)
    X, y = _xy(train, args.target)
    task = args.task or validate_data(train, args.target)["task"]
    teacher, device = make_teacher(args.teacher, task, X, args.seed, _params(args))
    X_val, y_val = _xy(_usable(paths, "validation", args.target, args.task), args.target) \
        if "validation" in paths.channels else (None, None)
    started = time.perf_counter()
    fit = fit_teacher(teacher, X, y, X_val, y_val)
    info = {"teacher": args.teacher, "device": device, "task": task, "seconds": time.perf_counter() - started,
            "rows": len(X), **fit}
    paths.model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(teacher, paths.model_dir / "teacher.joblib")
    _write_json(paths.model_dir / "teacher.json", info)
    return info


def run_distil(args: argparse.Namespace, paths: JobPaths) -> dict[str, Any]:
    train = _usable(paths, "train", args.target, args.task)
    X, y = _xy(train, args.target)
    teacher_dir = _artefacts(paths, "teacher")
    teacher = joblib.load(teacher_dir / "teacher.joblib")  # our own artefact from the teacher job
    task = json.loads((teacher_dir / "teacher.json").read_text())["task"]
    validation = _usable(paths, "validation", args.target, args.task) if "validation" in paths.channels else None
    kinds = [k for k in args.auto_students.split(",") if k in STUDENTS] if args.student == "auto" else [args.student]
    tried: dict[str, Any] = {}
    student = None
    started = time.perf_counter()
    targets = teacher_targets(teacher, X, task, y=y, synthetic=args.augment, max_synthetic=args.max_synthetic,
                              seed=args.seed)
    labelling = round(time.perf_counter() - started, 2)
    held = None if validation is None else _xy(validation, args.target)
    for kind in kinds:
        started = time.perf_counter()
        candidate, tuning = tuned_student(lambda: make_student(kind, task, X, args.seed, _params(args)),  # noqa: B023
                                          targets, held, **_grid(args))
        gap = None if validation is None else student_gap(task, validation, args.target, teacher, candidate)
        tried[student_label(kind, task)] = {"gap": gap, "seconds": round(time.perf_counter() - started, 2), **tuning}
        student, chosen, chosen_tuning = candidate, kind, tuning
        if gap is None or gap <= args.max_gap:
            break  # the smallest acceptable one: candidates are ordered by size and latency
    info = {"student": student_label(chosen, task), "tried": tried, "temperature": chosen_tuning["temperature"],
            "label_weight": chosen_tuning["label_weight"], "targets": chosen_tuning["targets"],
            "validation": chosen_tuning["validation"],
            "hard_label_validation": chosen_tuning.get("hard_label_validation"), "augment": args.augment,
            "synthetic_rows": len(targets.X) - len(X), "labelling_seconds": labelling, "task": task, "rows": len(X)}
    paths.model_dir.mkdir(parents=True, exist_ok=True)
    joblib.dump(student, paths.model_dir / "student.joblib")
    _write_json(paths.model_dir / "student.json", info)
    return info


def run_export(args: argparse.Namespace, paths: JobPaths) -> dict[str, Any]:
    from pipeline.bundler import build_bundle

    from .evaluation import holdout_metrics

    train_path = _frame(paths, "train")[1]
    train = _usable(paths, "train", args.target, args.task)
    holdout = _usable(paths, "holdout", args.target, args.task)
    student_dir, teacher_dir = _artefacts(paths, "student"), _artefacts(paths, "teacher")
    student, teacher = joblib.load(student_dir / "student.joblib"), joblib.load(teacher_dir / "teacher.joblib")
    distilled = json.loads((student_dir / "student.json").read_text())
    task, chosen = distilled["task"], distilled["student"]
    sample = train.sample(min(len(train), 2000), random_state=args.seed)
    lineage = {"teacher": args.teacher, "student": chosen, "student_targets": distilled.get("targets", "distilled"),
               "code_version": code_version(),
               "hyperparameters": json.dumps({k: v for k, v in vars(args).items() if k not in ("version",)},
                                             sort_keys=True, default=str)}
    result = build_bundle(student, sample, paths.model_dir / "bundle", name=args.name, version=args.version,
                          target=args.target, tolerance=args.tolerance, lineage=lineage,
                          profile_data=train.drop(columns=[args.target]), holdout=holdout)
    metrics = {**holdout_metrics(task, holdout, args.target, teacher=teacher, student=student),
               **student_choice(task, distilled)}
    manifest = result.manifest.model_copy(update={
        "metrics": {**result.manifest.metrics, **metrics}, "training_data_fingerprint": fingerprint(train_path)})
    (paths.model_dir / "bundle" / "manifest.json").write_text(manifest.model_dump_json(indent=2) + "\n")
    quantized = _quantize(args, paths.model_dir / "bundle", holdout)
    return {"bundle": str(paths.model_dir / "bundle"), "version": manifest.version, "metrics": manifest.metrics,
            "student": chosen, "warnings": teacher_warnings(task, metrics), **quantized}


def student_choice(task: str, distilled: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The distil step's choice as manifest metrics: the distilled and the hard-label student's validation
    scores (accuracy and log loss; RMSE for regression) and whether the distilled one was kept."""
    if distilled.get("hard_label_validation") is None:
        return {}
    names = ("rmse",) if task == "regression" else ("accuracy", "log_loss")
    scores: dict[str, float] = {}
    for who, key in (("distilled", "validation"), ("hard_label", "hard_label_validation")):
        scores |= {f"{who}_{name}": abs(float(v)) for name, v in zip(names, distilled[key], strict=True)}
    return {"validation_student": {**scores, "distilled_kept": float(distilled["targets"] == "distilled")}}


def _quantize(args: argparse.Namespace, bundle: Path, holdout: pd.DataFrame) -> dict[str, Any]:
    """``--quantize on``: the int8 graph replaces the float one where it applies and holds on the holdout."""
    if args.quantize != "on":
        return {}
    from pipeline.bundling.quantize import quantize_bundle

    outcome = quantize_bundle(bundle, holdout, args.target)
    return {"quantization": {"kept": outcome.kept, "reason": outcome.reason, "float_bytes": outcome.float_bytes,
                             "int8_bytes": outcome.int8_bytes, "holdout": outcome.metrics}}


def code_version() -> str:
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, check=False, timeout=5)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"slimserve {version('slimserve')}"
    except PackageNotFoundError:
        return "unknown"


def _write_json(path: Path, body: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)


STEPS = {"validate": run_validate, "teacher": run_teacher, "distil": run_distil, "export": run_export}


def main(step: str, argv: list[str] | None = None) -> dict[str, Any]:
    args, _ = parser(step).parse_known_args(argv)  # SageMaker may pass extra hyperparameters
    return STEPS[step](args, JobPaths.from_env())
