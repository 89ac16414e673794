"""Spooled copies (Parquet needs random access) are removed when done: a warm function keeps no files."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pytest

from functions.batch.scoring import Source, score_file
from functions.batch.stores import LocalStore
from functions.common.bundle import Model, directory_reader, load_model
from functions.common.tabular import spooled
from tests.conftest import breast_cancer


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "spool"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def score(model: Model, root: Path, key: str, data: bytes) -> dict[str, object]:
    source = Source("local", f"incoming/{key}", size=len(data))
    return score_file(model, LocalStore(root), source, io.BytesIO(data), chunk_rows=16).manifest


@pytest.mark.parametrize(("data", "status"), [
    (None, "complete"),
    (b"PAR1 not really parquet", "rejected"),
])
def test_nothing_is_left_in_the_spool_after_scoring_parquet(rf_bundle: Path, tmp_path: Path, spool_dir: Path,
                                                           data: bytes | None, status: str) -> None:
    model = load_model(directory_reader(rf_bundle), max_rows=1_000_000)
    if data is None:
        buffer = io.BytesIO()
        breast_cancer().head(40).to_parquet(buffer)
        data = buffer.getvalue()
    assert score(model, tmp_path / "out", "p.parquet", data)["status"] == status
    assert list(spool_dir.iterdir()) == []


def test_the_spooled_copy_is_removed_even_when_reading_fails(spool_dir: Path) -> None:
    with pytest.raises(RuntimeError), spooled(io.BytesIO(b"abc"), ".parquet") as path:
        assert Path(path).read_bytes() == b"abc" and Path(path).parent == spool_dir
        raise RuntimeError("reader failed")
    assert list(spool_dir.iterdir()) == []
