"""The validation gate on real bundles: a better candidate passes; each failure has its own reason."""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pytest

from functions.common.bundle import directory_reader
from functions.validation.gate import GateConfig, Latency
from functions.validation.service import validate
from pipeline.bundler import build_bundle
from pipeline.cli import main as cli
from tests.conftest import mixed_pipeline

SEED = 11
pytestmark = pytest.mark.slow  # four gradient-boosted bundles fitted and converted once per module


def gate_frame(n: int, seed: int) -> pd.DataFrame:
    """Churn-like rows; region 'west' is a small slice (about 5%)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "age": rng.integers(18, 90, n).astype(float),
        "plan": rng.choice(["basic", "plus", "pro"], n),
        "income": rng.normal(50_000, 12_000, n),
        "region": rng.choice(["north", "south", "east", "west"], n, p=[0.35, 0.35, 0.25, 0.05]),
    })
    score = (frame["age"] - 50) / 12 + (frame["plan"] == "pro") * 1.2 + (frame["income"] - 50_000) / 20_000
    frame["churn"] = np.where(score + rng.normal(0, 0.6, n) > 0, "yes", "no")
    return frame


def fit_bundle(out: Path, frame: pd.DataFrame, final: Any, version: str) -> Path:
    X, y = frame.drop(columns=["churn"]), frame["churn"]
    build_bundle(mixed_pipeline(final).fit(X, y), frame, out, name="churn", version=version, target="churn")
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.tree import DecisionTreeClassifier

    root = tmp_path_factory.mktemp("gate")
    train = gate_frame(3000, SEED)
    flipped = train.copy()
    west = flipped["region"] == "west"
    flipped.loc[west, "churn"] = np.where(flipped.loc[west, "churn"] == "yes", "no", "yes")
    strong = lambda: HistGradientBoostingClassifier(max_iter=80, random_state=SEED)  # noqa: E731
    return {
        "weak": fit_bundle(root / "weak", train, DecisionTreeClassifier(max_depth=1, random_state=SEED), "v1"),
        "strong": fit_bundle(root / "strong", train, strong(), "v2"),
        "strong_again": fit_bundle(root / "strong_again", train, strong(), "v3"),
        "bad_on_west": fit_bundle(root / "west", flipped, strong(), "v4"),
    }


@pytest.fixture(scope="module")
def holdout_csv() -> bytes:
    return gate_frame(3000, SEED + 1).to_csv(index=False).encode()


def measured(candidate_ms: float, champion_ms: float = 0.2) -> Any:
    """A latency probe that reports fixed p99s: the gate's rule is tested, not this machine's load."""
    return lambda candidate, champion, holdout, samples: Latency(candidate_ms,
                                                                 None if champion is None else champion_ms)


def verdict(candidate: Path, champion: Path | None, holdout: bytes, name: str = "holdout.csv",
            p99_ms: float = 0.2, champion_ms: float = 0.2, **config: Any) -> dict[str, Any]:
    return validate(directory_reader(candidate), directory_reader(champion) if champion else None,
                    (io.BytesIO(holdout), name), GateConfig(**config), measured(p99_ms, champion_ms))


def test_a_better_candidate_passes(bundles: dict[str, Path], holdout_csv: bytes) -> None:
    report = verdict(bundles["strong"], bundles["weak"], holdout_csv, slices=["region"])
    assert report["admitted"], report["checks"]
    metrics = report["metrics"]
    assert metrics["candidate"]["roc_auc"] > metrics["champion"]["roc_auc"] > metrics["baseline"]["roc_auc"]
    assert {"region=north", "region=west"} <= set(report["slices"])


def test_first_model_without_champion_passes(bundles: dict[str, Path], holdout_csv: bytes) -> None:
    report = verdict(bundles["strong"], None, holdout_csv)
    assert report["admitted"] and "champion" not in report["metrics"]


@pytest.mark.parametrize(("case", "reason"), [
    ("worse_than_champion", "worse_than_champion"),
    ("worse_on_one_slice", "worse_on_slice"),
    ("broken_parity", "parity_failed"),
    ("over_size", "over_size_budget"),
    ("over_latency", "over_latency_budget"),
    ("incompatible_schema", "incompatible_schema"),
    ("tampered_bundle", "bundle_invalid"),
    ("corrupt_manifest", "bundle_invalid"),
    ("empty_holdout", "holdout_empty"),
    ("unknown_labels", "holdout_mislabelled"),
    ("no_label_column", "holdout_mislabelled"),
    ("one_class_holdout", "holdout_mislabelled"),
    ("worse_than_baseline", "not_better_than_baseline"),
])
def test_each_failure_is_refused_with_its_own_reason(case: str, reason: str, bundles: dict[str, Path],
                                                     holdout_csv: bytes, rf_bundle: Path, tmp_path: Path) -> None:
    candidate, champion, holdout, config = bundles["strong"], bundles["strong_again"], holdout_csv, {}
    p99_ms = 0.2
    if case == "worse_than_champion":
        candidate, champion = bundles["weak"], bundles["strong"]
    elif case == "worse_on_one_slice":
        candidate, config = bundles["bad_on_west"], {"slices": ["region"], "tolerance": 0.08}
    elif case == "broken_parity":
        config = {"max_parity_diff": 1e-12}  # the bundle's measured parity (~1e-7) is over this budget
    elif case == "over_size":
        config = {"size_budget_bytes": 1000}
    elif case == "over_latency":
        p99_ms, config = 5.01, {"latency_budget_ms": 5.0}
    elif case == "incompatible_schema":
        champion = rf_bundle
    elif case == "tampered_bundle":
        candidate = Path(shutil.copytree(candidate, tmp_path / "t"))
        data = bytearray((candidate / "model.onnx").read_bytes())
        data[-10] ^= 0xFF
        (candidate / "model.onnx").write_bytes(bytes(data))
    elif case == "corrupt_manifest":
        candidate = Path(shutil.copytree(candidate, tmp_path / "c"))
        (candidate / "manifest.json").write_text("{ not json")
    elif case == "empty_holdout":
        holdout = holdout_csv.splitlines(keepends=True)[0]
    elif case == "unknown_labels":
        holdout = holdout_csv.replace(b",yes\n", b",maybe\n", 5)
    elif case == "no_label_column":
        holdout = pd.read_csv(io.BytesIO(holdout_csv)).drop(columns=["churn"]).to_csv(index=False).encode()
    elif case == "one_class_holdout":
        frame = pd.read_csv(io.BytesIO(holdout_csv))
        holdout = frame[frame["churn"] == "yes"].to_csv(index=False).encode()
    elif case == "worse_than_baseline":
        frame = pd.read_csv(io.BytesIO(holdout_csv))
        frame["churn"] = np.where(frame["churn"] == "yes", "no", "yes")  # a holdout the model gets backwards
        holdout, champion = frame.to_csv(index=False).encode(), None
    report = verdict(candidate, champion, holdout, p99_ms=p99_ms, **config)
    assert not report["admitted"]
    assert report["reasons"] == [reason], report["checks"]


@pytest.mark.measured_latency
def test_without_a_probe_the_gate_measures_latency_itself(bundles: dict[str, Path], holdout_csv: bytes) -> None:
    report = validate(directory_reader(bundles["strong"]), None, (io.BytesIO(holdout_csv), "holdout.csv"),
                      GateConfig(latency_budget_ms=60_000, latency_samples=20))
    checks = {c["check"]: c for c in report["checks"]}
    assert 0 < report["latency_p99_ms"] < 60_000 and checks["latency"]["passed"]
    assert f"p99 single-row {report['latency_p99_ms']:.3f} ms" in checks["latency"]["detail"]
    assert report["champion_latency_p99_ms"] is None and "no champion" in checks["latency"]["detail"]


def test_slice_refusal_names_the_slice_and_overall_is_within_tolerance(bundles: dict[str, Path],
                                                                      holdout_csv: bytes) -> None:
    report = verdict(bundles["bad_on_west"], bundles["strong_again"], holdout_csv, slices=["region"], tolerance=0.08)
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["vs_champion"]["passed"] and not checks["slices"]["passed"]
    assert "region=west" in checks["slices"]["detail"] and "region=north" not in checks["slices"]["detail"]


def test_verdict_is_reproducible(bundles: dict[str, Path], holdout_csv: bytes) -> None:
    first = verdict(bundles["strong"], bundles["weak"], holdout_csv, slices=["region"])
    second = verdict(bundles["strong"], bundles["weak"], holdout_csv, slices=["region"])
    assert first["metrics"] == second["metrics"] and first["slices"] == second["slices"]
    assert first["reasons"] == second["reasons"]


def test_parquet_and_jsonl_holdouts(bundles: dict[str, Path], holdout_csv: bytes) -> None:
    frame = pd.read_csv(io.BytesIO(holdout_csv))
    parquet = io.BytesIO()
    frame.to_parquet(parquet)
    jsonl = frame.to_json(orient="records", lines=True).encode()
    by_csv = verdict(bundles["strong"], None, holdout_csv)["metrics"]
    assert verdict(bundles["strong"], None, parquet.getvalue(), "h.parquet")["metrics"] == by_csv
    assert verdict(bundles["strong"], None, jsonl, "h.jsonl")["metrics"] == by_csv


def test_cli_prints_the_verdict_and_writes_the_report(bundles: dict[str, Path], holdout_csv: bytes,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "holdout.csv").write_bytes(holdout_csv)
    report = tmp_path / "report.json"
    code = cli(["validate", "--candidate", str(bundles["weak"]), "--champion", str(bundles["strong"]),
                "--holdout", str(tmp_path / "holdout.csv"), "--slice", "region", "--report", str(report)])
    out = capsys.readouterr().out
    assert code == 1 and "verdict: REFUSED (worse_than_champion" in out and "roc_auc *" in out
    assert json.loads(report.read_text())["reasons"][0] == "worse_than_champion"


@pytest.fixture
def aws(bundles: dict[str, Path], holdout_csv: bytes) -> Iterator[dict[str, Any]]:
    from functions.common.registry import Registry
    from pipeline.local.emulation import REGION, create_registry_table, emulated_account, upload_bundle

    with emulated_account():
        s3, ddb = boto3.client("s3", region_name=REGION), boto3.client("dynamodb", region_name=REGION)
        uris = {name: upload_bundle(s3, path) for name, path in bundles.items()}
        s3.put_object(Bucket="slimserve-models-local", Key="holdout/churn.csv", Body=holdout_csv)
        create_registry_table(ddb, "models")
        yield {"s3": s3, "uris": uris, "registry": Registry(ddb, "models")}


def test_lambda_uses_the_registry_champion_writes_the_report_and_records_the_verdict(aws: dict[str, Any]) -> None:
    from functions.common.registry import ModelEntry
    from pipeline.local.apigw import LambdaContext
    from pipeline.local.server import load_function

    reg = aws["registry"]
    champion = reg.register(ModelEntry(model="churn", version="v2", bundle_uri=aws["uris"]["strong"]))
    reg.promote(champion, "first release")
    module = load_function("functions.validation.handler", "", REGISTRY_TABLE="models")
    module.registry.cache_clear()
    holdout = "s3://slimserve-models-local/holdout/churn.csv"
    config = {"latency_budget_ms": 60_000}  # this test is about the registry, not this machine's load
    result = module.lambda_handler({"candidate_uri": aws["uris"]["weak"], "holdout_uri": holdout, "config": config},
                                   LambdaContext(function_name="slimserve-validation"))
    assert result["admitted"] is False and result["reasons"] == ["worse_than_champion"]
    assert result["champion_uri"] == aws["uris"]["strong"]
    key = result["report_uri"].split("slimserve-models-local/")[1]
    report = json.loads(aws["s3"].get_object(Bucket="slimserve-models-local", Key=key)["Body"].read())
    assert report["champion"]["version"] == "v2"
    entry = reg.get("churn", "v1")
    assert entry.status == "rejected" and entry.verdict["reasons"] == ["worse_than_champion"]
    better = module.lambda_handler({"candidate_uri": aws["uris"]["strong_again"], "holdout_uri": holdout,
                                    "config": config},
                                   LambdaContext())
    assert better["admitted"] and reg.get("churn", "v3").status == "candidate"


# -- real-shaped data: float-coded classes, a dropped column, the latency rule ------------------------

def numeric_bundle(out: Path, frame: pd.DataFrame, target: str, columns: list[str], version: str) -> Path:
    """A hand-written pipeline over some numeric columns (the rest, ID and date included, dropped)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pre = ColumnTransformer([("num", make_pipeline(SimpleImputer(), StandardScaler()), columns)])
    model = make_pipeline(pre, LogisticRegression(max_iter=500)).fit(frame[columns], frame[target])
    build_bundle(model, frame[[*columns, target]], out, name="quality", version=version, target=target)
    return out


@pytest.fixture(scope="module")
def quality() -> dict[str, Any]:
    from tests import realdata

    train = realdata.float_coded_classes(1500, SEED).dropna(subset=realdata.NUMERIC)
    holdout = realdata.float_coded_classes(600, SEED + 1).dropna(subset=realdata.NUMERIC)
    return {"train": train, "holdout": holdout, "numeric": realdata.NUMERIC}


@pytest.mark.parametrize("model_labels", ["int", "float"])
@pytest.mark.parametrize("holdout_form", ["csv_floats", "csv_ints", "jsonl_floats"])
def test_integer_classes_stored_as_floats_are_the_models_classes(model_labels: str, holdout_form: str,
                                                                 quality: dict[str, Any], tmp_path: Path) -> None:
    train = quality["train"].copy()
    if model_labels == "int":
        train["quality"] = train["quality"].astype(int)
    bundle = numeric_bundle(tmp_path / "b", train, "quality", quality["numeric"], "v1")
    holdout = quality["holdout"].copy()
    if holdout_form == "csv_ints":
        holdout["quality"] = holdout["quality"].astype(int)
    body = holdout.to_json(orient="records", lines=True).encode() if holdout_form == "jsonl_floats" \
        else holdout.to_csv(index=False).encode()
    assert (b",6.0\n" in body) == (holdout_form == "csv_floats")
    report = verdict(bundle, None, body, "h.jsonl" if holdout_form == "jsonl_floats" else "h.csv")
    assert "holdout_mislabelled" not in report["reasons"], report["checks"]
    assert report["rows"] == len(holdout) and report["metrics"]["candidate"]["accuracy"] > 0.5


def test_labels_that_are_not_classes_are_still_refused(quality: dict[str, Any], tmp_path: Path) -> None:
    bundle = numeric_bundle(tmp_path / "b", quality["train"], "quality", quality["numeric"], "v1")
    holdout = quality["holdout"].copy()
    holdout.loc[holdout.index[:3], "quality"] = 9.0
    report = verdict(bundle, None, holdout.to_csv(index=False).encode())
    assert report["reasons"] == ["holdout_mislabelled"] and "'9.0'" in report["checks"][0]["detail"]


def test_a_candidate_reading_fewer_columns_than_the_champion_is_compatible(quality: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    train, holdout = quality["train"], quality["holdout"].to_csv(index=False).encode()
    champion = numeric_bundle(tmp_path / "champion", train, "quality", ["age", "income", "visits"], "v1")
    candidate = numeric_bundle(tmp_path / "candidate", train, "quality", ["age", "income"], "v2")
    report = verdict(candidate, champion, holdout, tolerance=1.0)
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["schema"]["passed"] and "['visits']" in checks["schema"]["detail"], checks["schema"]
    assert "champion" in report["metrics"]  # the champion was scored on its own columns
    backwards = verdict(champion, candidate, holdout, tolerance=1.0)
    assert "incompatible_schema" in backwards["reasons"]
    detail = {c["check"]: c for c in backwards["checks"]}["schema"]["detail"]
    assert "needs features ['visits']" in detail


@pytest.mark.parametrize(("candidate_ms", "champion_ms", "admitted"), [
    (16.0, 18.0, True),  # both slow under load, measured together: the candidate is no slower
    (0.30, 0.25, True),  # within noise of the champion
    (2.0, 0.25, False),  # much slower than the champion in the same run
    (16.0, None, True),  # no champion: the absolute budget is far above a loaded machine's noise
    (150.0, None, False),  # no champion: over the absolute budget
])
def test_latency_is_judged_against_the_champion_measured_in_the_same_run(
        candidate_ms: float, champion_ms: float | None, admitted: bool, bundles: dict[str, Path],
        holdout_csv: bytes) -> None:
    champion = bundles["weak"] if champion_ms is not None else None
    report = verdict(bundles["strong"], champion, holdout_csv, p99_ms=candidate_ms, champion_ms=champion_ms or 0.0)
    latency = {c["check"]: c for c in report["checks"]}["latency"]
    assert latency["passed"] is admitted, latency
    assert report["admitted"] is admitted, report["checks"]
    assert report["champion_latency_p99_ms"] == champion_ms
    if champion_ms is not None:
        assert "in the same run" in latency["detail"]


def test_cli_says_why_a_given_champion_was_not_compared(bundles: dict[str, Path], holdout_csv: bytes,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unlabelled = pd.read_csv(io.BytesIO(holdout_csv)).drop(columns=["churn"])
    (tmp_path / "holdout.csv").write_text(unlabelled.to_csv(index=False))
    code = cli(["validate", "--candidate", str(bundles["strong"]), "--champion", str(bundles["weak"]),
                "--holdout", str(tmp_path / "holdout.csv"), "--report", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert code == 1 and "(no champion)" not in out
    assert "champion given, not compared: refused first, holdout_mislabelled" in out
    assert "holdout_mislabelledFAIL" not in out and re.search(r"holdout_mislabelled +FAIL +", out)


def test_cli_report_into_a_missing_folder_creates_it(bundles: dict[str, Path], holdout_csv: bytes,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "holdout.csv").write_bytes(holdout_csv)
    report = tmp_path / "reports" / "2024" / "gate.json"
    args = ["validate", "--candidate", str(bundles["strong"]), "--holdout", str(tmp_path / "holdout.csv"),
            "--latency-budget-ms", "60000"]
    cli([*args, "--report", str(report)])
    assert json.loads(report.read_text())["candidate"]["version"] == "v2"
    assert f"report: {report}" in capsys.readouterr().out
    (tmp_path / "a-file").write_text("")
    code = cli([*args, "--report", str(tmp_path / "a-file" / "gate.json")])
    captured = capsys.readouterr()
    assert code == 2 and "the report cannot be written" in captured.err
