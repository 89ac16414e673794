"""Serving loads a bundle with its explanation files deferred: model.onnx is read beside the manifest,
the explanation files on the first request that asks, each still checked against the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from functions.common.bundle import Reader, directory_reader, load_model
from functions.common.errors import BundleError, ModelUnavailable
from functions.common.explain import EXPLAIN_FILE, EXPLAIN_GRAPH_FILE
from functions.common.manifest import MODEL_FILE
from functions.common.schema import RowSchema

ROWS = [[float(i % 7) for i in range(30)], [float(i % 3) * 10 for i in range(30)]]


def counting(read: Reader, reads: list[str]) -> Reader:
    def counted(name: str) -> bytes:
        reads.append(name)
        return read(name)

    return counted


def tamper(bundle: Path, name: str) -> None:
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2] ^= 1
    (bundle / name).write_bytes(bytes(data))


@pytest.fixture
def copy(rf_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(rf_bundle, tmp_path / "bundle"))


def test_explanation_files_are_read_by_the_first_explain_and_answer_as_an_eager_load(rf_bundle: Path) -> None:
    reads: list[str] = []
    served = load_model(counting(directory_reader(rf_bundle), reads), defer_explanations=True)
    assert EXPLAIN_FILE in served.manifest.files and sorted(reads) == sorted(["manifest.json", MODEL_FILE])
    assert served.explainable
    eager = load_model(directory_reader(rf_bundle))
    assert served.predict(ROWS) == eager.predict(ROWS)
    assert served.explain(ROWS) == eager.explain(ROWS)
    served.explain(ROWS)
    explain_reads = [n for n in reads if n in (EXPLAIN_FILE, EXPLAIN_GRAPH_FILE)]
    assert EXPLAIN_FILE in explain_reads and len(explain_reads) == len(set(explain_reads))  # each read once


def test_a_tampered_explanation_file_is_refused_for_good_and_predictions_go_on(copy: Path) -> None:
    document = json.loads((copy / EXPLAIN_FILE).read_text())
    original = (copy / EXPLAIN_FILE).read_bytes()
    document["trees"][0]["value"][1] = [0.0, 1.0]
    (copy / EXPLAIN_FILE).write_text(json.dumps(document))
    served = load_model(directory_reader(copy), defer_explanations=True)
    assert served.predict(ROWS).predictions  # the model itself verified and serving
    with pytest.raises(ModelUnavailable) as refused:
        served.explain(ROWS)
    assert refused.value.status == 503 and "sha256" not in refused.value.message  # the reason goes to the log
    (copy / EXPLAIN_FILE).write_bytes(original)  # put back: this environment still refuses what it saw tampered
    with pytest.raises(ModelUnavailable):
        served.explain(ROWS)


def test_a_failed_read_of_an_explanation_file_is_tried_again(copy: Path) -> None:
    hidden = copy.parent / "hidden.json"
    served = load_model(directory_reader(copy), defer_explanations=True)
    (copy / EXPLAIN_FILE).rename(hidden)
    with pytest.raises(ModelUnavailable):
        served.explain(ROWS)
    hidden.rename(copy / EXPLAIN_FILE)
    assert len(served.explain(ROWS)) == len(ROWS)


@pytest.mark.parametrize("name", [MODEL_FILE, "manifest.json"])
def test_a_tampered_model_or_manifest_is_still_refused_at_load(copy: Path, name: str) -> None:
    if name == MODEL_FILE:
        tamper(copy, name)
        with pytest.raises(BundleError, match=r"model\.onnx does not match its sha256"):
            load_model(directory_reader(copy), defer_explanations=True)
    else:
        pinned = "0" * 64
        with pytest.raises(BundleError, match="pinned sha256"):
            load_model(directory_reader(copy), expected_manifest_sha256=pinned, defer_explanations=True)


def test_a_missing_model_file_is_refused_at_load(copy: Path) -> None:
    (copy / MODEL_FILE).unlink()
    with pytest.raises(BundleError, match=r"model\.onnx"):
        load_model(directory_reader(copy), defer_explanations=True)


def test_the_schema_is_the_eager_one(rf_bundle: Path) -> None:
    served = load_model(directory_reader(rf_bundle), defer_explanations=True)
    assert isinstance(served.schema, RowSchema) and served.schema.json_schema() == load_model(
        directory_reader(rf_bundle)).schema.json_schema()
