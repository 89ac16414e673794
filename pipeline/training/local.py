"""``slimserve train``: the whole chain on this machine, with the same entry points and the same
channel layout a SageMaker job sees."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from .contract import read_table
from .data import DataRefused, split, usable, validate_data
from .jobs import main as job
from .jobs import parser
from .models import AUTO_STUDENTS
from .preflight import check_exportable
from .progress import Say, reporting


@contextmanager
def job_environment(model_dir: Path, **channels: Path) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update({"SM_MODEL_DIR": str(model_dir), "SM_OUTPUT_DATA_DIR": str(model_dir / "output")})
    for name, path in channels.items():
        os.environ[f"SM_CHANNEL_{name.upper()}"] = str(path)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def train_locally(data: Path, target: str, out: Path, *, task: str | None = None, seed: int = 7,
                  extra_args: list[str] | None = None, say: Say | None = None,
                  feedback: Path | None = None) -> dict[str, Any]:
    """validate -> check exportable -> split -> teacher -> distil -> export; returns the timings and
    the export result. ``say`` hears each step start, beat while it runs, and end. ``feedback``: labelled
    rows (`slimserve feedback-rows`) appended to the data, only when given."""
    frame = read_table(data)
    added = 0
    if feedback is not None:
        frame, added = with_feedback(frame, read_table(feedback), target)
    report = validate_data(frame, target, task)
    if report["fatal"]:
        raise DataRefused("; ".join(report["fatal"]))
    for warning in report["warnings"]:
        if say is not None:
            say(f"warning: {warning}")
    task = report["task"]
    frame = usable(frame, report)
    student = parser("distil").parse_known_args(["--target", target, *(extra_args or [])])[0].student
    kinds = list(AUTO_STUDENTS) if student == "auto" else [student]
    with reporting("check", say):
        refused = check_exportable(frame, target, task, kinds, seed)
    if refused:  # auto picks among the students that export
        extra_args = [*(extra_args or []), "--auto-students", ",".join(k for k in kinds if k not in refused)]
        for kind, why in refused.items():
            report["warnings"].append(f"the {kind} student cannot be exported on these columns, so it is not "
                                      f"tried: {why}")
            if say is not None:
                say(f"warning: {report['warnings'][-1]}")
    work = out / "work"
    channels = {}
    for name, part in split(frame, target, task, seed).items():
        folder = work / "channels" / name
        folder.mkdir(parents=True, exist_ok=True)
        part.to_parquet(folder / f"{name}.parquet", index=False)
        channels[name] = folder
    args = ["--target", target, "--task", task, "--seed", str(seed), "--export-check", "off", *(extra_args or [])]
    timings: dict[str, float] = {}

    def step(name: str, model_dir: Path, **inputs: Path) -> dict[str, Any]:
        started = time.perf_counter()
        with reporting(name, say), job_environment(model_dir, **inputs):
            result = job(name, args)
        timings[name] = round(time.perf_counter() - started, 2)
        return result

    step("validate", work / "validate", train=channels["train"])
    teacher = step("teacher", work / "teacher", train=channels["train"], validation=channels["validation"])
    step("distil", work / "student", train=channels["train"], validation=channels["validation"],
         teacher=work / "teacher")
    export = step("export", out, train=channels["train"], holdout=channels["holdout"], student=work / "student",
                  teacher=work / "teacher")
    return {"task": task, "rows": len(frame), "feedback_rows": added, "report": report, "teacher": teacher,
            "timings": timings, **export}


def with_feedback(frame: pd.DataFrame, rows: pd.DataFrame, target: str) -> tuple[pd.DataFrame, int]:
    """The data with the labelled rows appended (a column they lack is left empty); DataRefused when they
    have no target column or bring a column the data does not have."""
    if target not in rows.columns:
        raise DataRefused(f"the feedback rows have no {target!r} column")
    foreign = [c for c in rows.columns if c not in frame.columns]
    if foreign:
        raise DataRefused(f"the feedback rows have columns the data does not: {', '.join(map(str, foreign[:10]))}")
    return pd.concat([frame, rows.reindex(columns=frame.columns)], ignore_index=True), len(rows)
