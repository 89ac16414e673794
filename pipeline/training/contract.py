"""The SageMaker script-mode contract: where a job finds its data and leaves its model."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from functions.common.manifest import sha256_file

DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet")


@dataclass(frozen=True)
class JobPaths:
    model_dir: Path
    output_dir: Path
    channels: dict[str, Path]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> JobPaths:
        env = os.environ if environ is None else environ
        channels = {k[len("SM_CHANNEL_"):].lower(): Path(v) for k, v in env.items() if k.startswith("SM_CHANNEL_")}
        return cls(model_dir=Path(env.get("SM_MODEL_DIR", "/opt/ml/model")),
                   output_dir=Path(env.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data")), channels=channels)

    def channel(self, name: str) -> Path:
        if name not in self.channels:
            raise SystemExit(f"input channel {name!r} is missing (SM_CHANNEL_{name.upper()})")
        return self.channels[name]


def data_file(folder: Path) -> Path:
    """The one data file of a channel (SageMaker copies the S3 prefix into the folder)."""
    if folder.is_file():
        return folder
    files = sorted(p for p in folder.rglob("*") if p.is_file() and str(p).lower().endswith(DATA_SUFFIXES))
    if len(files) != 1:
        raise SystemExit(f"channel {folder} must hold exactly one .csv(.gz) or .parquet file, found {len(files)}")
    return files[0]


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if str(path).lower().endswith(".parquet") else pd.read_csv(path)


def fingerprint(path: Path) -> str:
    return sha256_file(path)
