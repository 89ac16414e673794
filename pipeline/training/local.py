"""``slimserve train``: the whole chain on this machine, with the same entry points and the same
channel layout a SageMaker job sees."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .contract import read_table
from .data import DataRefused, split, usable, validate_data
from .jobs import main as job


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
                  extra_args: list[str] | None = None) -> dict[str, Any]:
    """validate -> split -> teacher -> distil -> export; returns the timings and the export result."""
    frame = read_table(data)
    report = validate_data(frame, target, task)
    if report["fatal"]:
        raise DataRefused("; ".join(report["fatal"]))
    task = report["task"]
    frame = usable(frame, report)
    work = out / "work"
    channels = {}
    for name, part in split(frame, target, task, seed).items():
        folder = work / "channels" / name
        folder.mkdir(parents=True, exist_ok=True)
        part.to_parquet(folder / f"{name}.parquet", index=False)
        channels[name] = folder
    args = ["--target", target, "--task", task, "--seed", str(seed), *(extra_args or [])]
    timings: dict[str, float] = {}

    def step(name: str, model_dir: Path, **inputs: Path) -> dict[str, Any]:
        started = time.perf_counter()
        with job_environment(model_dir, **inputs):
            result = job(name, args)
        timings[name] = round(time.perf_counter() - started, 2)
        return result

    step("validate", work / "validate", train=channels["train"])
    teacher = step("teacher", work / "teacher", train=channels["train"], validation=channels["validation"])
    step("distil", work / "student", train=channels["train"], validation=channels["validation"],
         teacher=work / "teacher")
    export = step("export", out, train=channels["train"], holdout=channels["holdout"], student=work / "student",
                  teacher=work / "teacher")
    return {"task": task, "rows": len(frame), "report": report, "teacher": teacher, "timings": timings, **export}
