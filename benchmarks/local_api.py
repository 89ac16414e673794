"""Shared by the hardening benchmarks: demo bundles, and `slimserve serve` in its own process.

The server runs as a separate process, as a user runs it, so that the client generating load or fuzz
cases never shares the server's interpreter lock, and its memory can be read from /proc.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SLIMSERVE = Path(sys.executable).with_name("slimserve")


def demo_bundle(workdir: Path) -> Path:
    """The demo's 100-tree forest on breast cancer (30 numeric features), bundled once per workdir."""
    import joblib
    import pandas as pd

    from pipeline.bundler import build_bundle
    from pipeline.demo import train_demo_model

    out = workdir / "demo-bundle"
    if not (out / "manifest.json").is_file():
        model_path, holdout_path = train_demo_model(workdir / "demo-model")
        build_bundle(joblib.load(model_path), pd.read_csv(holdout_path), out, name="breast-cancer", version="v1",
                     target="target")
    return out


def mixed_bundle(workdir: Path, seed: int = 7) -> Path:
    """A churn model over numbers, a nullable number and two categorical columns, bundled once per workdir."""
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from pipeline.bundler import build_bundle

    out = workdir / "mixed-bundle"
    if (out / "manifest.json").is_file():
        return out
    rng = np.random.default_rng(seed)
    n = 600
    frame = pd.DataFrame({"tenure_months": rng.integers(0, 72, n).astype(float),
                          "plan": rng.choice(["basic", "plus", "pro"], n),
                          "monthly_spend": rng.gamma(2.0, 30.0, n),
                          "region": rng.choice(["north", "south", "east", "west"], n)})
    frame.loc[::9, "monthly_spend"] = np.nan
    risk = (24 - frame["tenure_months"]) / 24 + (frame["plan"] == "basic") * 0.8 + rng.normal(0, 0.4, n)
    frame["churned"] = np.where(risk > 0.5, "yes", "no")
    pre = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["tenure_months", "monthly_spend"]),
        ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan", "region"])])
    model = make_pipeline(pre, HistGradientBoostingClassifier(max_iter=40, random_state=seed))
    model.fit(frame.drop(columns=["churned"]), frame["churned"])
    build_bundle(model, frame, out, name="churn", version="v1", target="churned")
    return out


@contextmanager
def local_api(bundle: Path, env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """`slimserve serve BUNDLE` on a free port; yields (base URL, server pid) and stops it afterwards."""
    environ = {**os.environ, "POWERTOOLS_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen([str(SLIMSERVE), "serve", "--bundle", str(bundle), "--port", "0"], cwd=ROOT, env=environ,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            found = re.search(r"http://([\d.]+):(\d+)/predict", line)
            if found:
                break
        else:
            raise SystemExit(f"slimserve serve {bundle} stopped before it listened (exit {process.wait()})")
        # Keep draining its output (metrics, logs) so that the pipe never fills and blocks the server.
        threading.Thread(target=process.stdout.read, daemon=True).start()
        yield f"http://{found.group(1)}:{found.group(2)}", process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")
