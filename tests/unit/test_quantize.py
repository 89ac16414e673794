"""--quantize: an int8 graph where onnxruntime's quantizer applies, kept only when it answers like the
float graph; the manifest records both parities and the gate checks the one that is served."""

from __future__ import annotations

import shutil
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from functions.common.bundle import directory_reader, load_model
from functions.common.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, Parity, sha256_hex
from functions.validation.gate import GateConfig, parity_check
from pipeline.bundler import build_bundle
from pipeline.bundling import quantize
from pipeline.bundling.quantize import quantize_bundle
from tests.conftest import breast_cancer

TARGET = "target"
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _frame() -> pd.DataFrame:
    return breast_cancer().sample(frac=1.0, random_state=0).reset_index(drop=True)


def _mlp(frame: pd.DataFrame, flip: bool = False) -> object:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = frame.drop(columns=[TARGET]), frame[TARGET]
    model = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0))
    return model.fit(X, 1 - y if flip else y)


@pytest.fixture(scope="module")
def float_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = _frame()
    out = tmp_path_factory.mktemp("mlp") / "bundle"
    build_bundle(_mlp(frame.head(400)), frame.head(400), out, name="cancer", version="v1", target=TARGET)
    return out


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def _manifest(bundle: Path) -> Manifest:
    return Manifest.model_validate_json((bundle / MANIFEST_FILE).read_bytes())


def test_kept_int8_bundle_records_both_parities_and_serves(float_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(float_bundle, tmp_path)
    before = _manifest(bundle)
    outcome = quantize_bundle(bundle, _frame().tail(169), TARGET)
    assert outcome.kept, outcome.reason
    after = _manifest(bundle)
    assert after.parity == before.parity  # the float graph against scikit-learn, as measured at export
    q = after.quantization
    assert q is not None and q.scheme == "int8-dynamic" and q.float_sha256 == before.files[MODEL_FILE]
    assert q.parity.rows == 169 and q.parity.tolerance == quantize.QUANTIZED_TOLERANCE
    assert q.parity.label_agreement is not None and q.parity.label_agreement >= quantize.MIN_LABEL_AGREEMENT
    assert set(q.metric_losses) == {"accuracy", "roc_auc"}
    served = (bundle / MODEL_FILE).read_bytes()
    assert after.files[MODEL_FILE] == sha256_hex(served) and len(served) < q.float_bytes
    model = load_model(directory_reader(bundle))  # verifies the digest and runs the int8 graph
    rows = _frame().tail(5).drop(columns=[TARGET]).to_numpy().tolist()
    assert len(model.predict(rows).predictions) == 5


def test_gate_checks_the_parity_of_the_served_graph(float_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(float_bundle, tmp_path)
    quantize_bundle(bundle, _frame().tail(169), TARGET)
    manifest = _manifest(bundle)
    check = parity_check(manifest, GateConfig())
    assert check.passed and "int8/float" in check.detail
    assert manifest.quantization is not None
    drifted = manifest.quantization.model_copy(update={"parity": Parity(rows=169, max_abs_diff=0.2, tolerance=0.05,
                                                                          label_agreement=0.9)})
    # Perfect float parity does not admit an int8 graph that strays from it.
    refused = parity_check(manifest.model_copy(update={"quantization": drifted}), GateConfig())
    assert not refused.passed and refused.reason == "parity_failed"
    assert parity_check(_manifest(float_bundle), GateConfig()).detail.startswith("sklearn/ONNX")


def test_quantization_is_refused_when_labels_disagree(float_bundle: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = _copy(float_bundle, tmp_path)
    frame = _frame()
    other = tmp_path / "flipped"
    build_bundle(_mlp(frame.head(400), flip=True), frame.head(400), other, name="cancer", version="v1", target=TARGET)
    disagreeing = (other / MODEL_FILE).read_bytes()  # same inputs and outputs, opposite answers
    monkeypatch.setattr(quantize, "quantize_int8", lambda onnx_bytes: disagreeing)
    before = (bundle / MODEL_FILE).read_bytes(), (bundle / MANIFEST_FILE).read_bytes()
    outcome = quantize_bundle(bundle, frame.tail(169), TARGET)
    assert not outcome.kept and "label agreement" in outcome.reason and "kept the float graph" in outcome.reason
    assert ((bundle / MODEL_FILE).read_bytes(), (bundle / MANIFEST_FILE).read_bytes()) == before


def test_quantize_says_it_does_not_apply_to_trees_and_linear_models(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    from pipeline.cli import main as cli

    frame = _frame().head(300)
    X, y = frame.drop(columns=[TARGET]), frame[TARGET]
    sample = tmp_path / "sample.csv"
    frame.to_csv(sample, index=False)
    for name, model in {"tree": DecisionTreeClassifier(max_depth=4, random_state=0),
                        "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))}.items():
        joblib.dump(model.fit(X, y), tmp_path / f"{name}.joblib")
        out = tmp_path / name
        assert cli(["bundle", "--model", str(tmp_path / f"{name}.joblib"), "--sample", str(sample), "--out", str(out),
                    "--target", TARGET, "--quantize"]) == 0
        printed = capsys.readouterr().out
        assert "quantization does not apply" in printed and "not quantizable" in printed
        assert _manifest(out).quantization is None


def test_bundle_command_quantizes_an_mlp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main as cli

    frame = _frame()
    joblib.dump(_mlp(frame.head(400)), tmp_path / "mlp.joblib")
    sample = tmp_path / "sample.csv"
    frame.tail(169).to_csv(sample, index=False)
    assert cli(["bundle", "--model", str(tmp_path / "mlp.joblib"), "--sample", str(sample), "--out",
                str(tmp_path / "b"), "--target", TARGET, "--quantize"]) == 0
    assert "int8 graph kept" in capsys.readouterr().out
    q = _manifest(tmp_path / "b").quantization
    assert q is not None and np.isfinite(q.parity.max_abs_diff)
