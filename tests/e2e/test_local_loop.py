"""The quick start as a user runs it: the demo, and `slimserve serve` answering over HTTP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.local.server import call

ROOT = Path(__file__).resolve().parents[2]


def test_demo_trains_bundles_serves_and_refuses_bad_input(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "demo", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert (tmp_path / "bundle" / "model.onnx").is_file() and (tmp_path / "bundle" / "manifest.json").is_file()
    assert re.search(r"POST /predict \(3 rows keyed by name\) -> 200", out)
    accuracy = float(re.search(r"holdout accuracy ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert accuracy > 0.9
    assert re.search(r"rows in 142 = scored 139 \+ rejected 3", out)
    # 'n/a' is missing, as pandas read it when the bundle was built: this model takes no null there.
    assert "rejected line 5: null_value" in out and "scored/ still has 1 version" in out
    # The demo measures latency on this machine: under load the verdict may add over_latency_budget after it.
    assert "verdict: REFUSED (worse_than_champion" in out
    assert re.search(r"candidate-stump\s+rejected", out)
    for code in ("malformed_json", "unsupported_media_type", "missing_feature", "misspelled_feature", "wrong_type",
                 "non_finite", "empty_instances"):
        assert code in out
    # Step 8: calm traffic raises nothing; shifted traffic raises the drift alarm once, which starts one retraining run.
    drift = out.split("== 8.", 1)[1]
    calm = float(re.search(r"training data\): \d+ captured rows, PSI max ([0-9.]+)", drift).group(1))  # type: ignore[union-attr]
    assert calm < 0.2 and re.search(r"mean radius\s+PSI\s+[0-9.]+\s+KS 0\.[1-9]", drift)
    assert drift.count("drift-any: OK -> ALARM") == 1 and drift.count("retraining run started") == 1
    assert drift.index("one breaching hour") < drift.index("drift-any: OK -> ALARM")
    assert "1 retraining run for one shift" in drift and '"model": "breast-cancer"' in drift


def test_serve_command_answers_http(rf_bundle: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", "--bundle", str(rf_bundle), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        banner = ""
        for _ in range(20):
            banner += proc.stdout.readline()
            if match := re.search(r"http://127\.0\.0\.1:(\d+)/predict", banner):
                break
        assert match, banner
        base = f"http://127.0.0.1:{match.group(1)}"
        assert call(base, "GET", "/health")[0] == 200
        status, body = call(base, "POST", "/predict", {"instances": [[1.0] * 30, [2.0] * 30]})
        assert status == 200 and len(body["predictions"]) == 2 and body["model_version"] == "v1"
        status, body = call(base, "POST", "/predict", {"instances": [[1.0] * 29]})
        assert (status, body["error"]["code"]) == (400, "wrong_length")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=300)  # a loaded machine is slow to shut down, not wrong
        finally:
            proc.kill()


def test_serve_refuses_a_folder_that_is_not_a_bundle(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "serve", "--bundle", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    assert done.returncode != 0 and "not a model bundle" in done.stderr


def test_bundle_command_reports_an_unsupported_step(tmp_path: Path) -> None:
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import SplineTransformer

    from tests.conftest import breast_cancer

    frame = breast_cancer()
    model = make_pipeline(SplineTransformer(), LogisticRegression(max_iter=100))
    model.fit(frame.drop(columns=["target"]), frame["target"])
    joblib.dump(model, tmp_path / "m.joblib")
    frame.to_csv(tmp_path / "s.csv", index=False)
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "bundle", "--model", str(tmp_path / "m.joblib"),
                           "--sample", str(tmp_path / "s.csv"), "--target", "target", "--out", str(tmp_path / "b")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    assert done.returncode == 2
    assert "unsupported_step" in done.stderr and "SplineTransformer" in done.stderr
