"""The fast CSV path (plain stretches parsed by pyarrow as float64 blocks, answers joined on the
input's own bytes) writes byte for byte what the row-by-row reader writes, on the edges where the
two part: a bad cell inside a block, NaN and infinity, a missing marker that is a number, a block
boundary in the middle of the file, CRLF endings."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from functions.batch import scoring
from functions.batch.scoring import Source, score_file
from functions.batch.stores import LocalStore
from functions.common import tabular
from functions.common.bundle import MODEL_FILE, Model, directory_reader, load_model
from tests.conftest import breast_cancer, examples
from tests.unit.test_batch_scoring import DAMAGE, damage_rows

FRAME = breast_cancer().drop(columns=["target"])
HEADER = ",".join(FRAME.columns)
BASE = [",".join(repr(float(v)) for v in row) for row in FRAME.itertuples(index=False)]


def rows(n: int) -> list[str]:
    return list(itertools.islice(itertools.cycle(BASE), n))


def csv_bytes(body: list[str], end: str = "\n") -> bytes:
    return (end.join([HEADER, *body]) + end).encode()


def replaced(row: str, column: int, text: str) -> str:
    fields = row.split(",")
    fields[column] = text
    return ",".join(fields)


@pytest.fixture(scope="module")
def rf(rf_bundle: Path) -> Model:
    return load_model(directory_reader(rf_bundle), max_rows=1_000_000)


class Outputs:
    def __init__(self, root: Path, manifest: dict[str, Any], fast_blocks: int) -> None:
        assert manifest["status"] == "complete", manifest
        self.counts = manifest["rows"]
        self.scored = (root / manifest["outputs"]["scored"]["key"]).read_bytes()
        self.rejected_text = (root / manifest["outputs"]["rejected"]["key"]).read_bytes()
        self.fast_blocks = fast_blocks

    @property
    def rejected(self) -> list[tuple[int, str]]:
        return [(int(r["line"]), r["reason"].split(":", 1)[0])
                for r in csv.DictReader(io.StringIO(self.rejected_text.decode()))]


@pytest.fixture
def scored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    """Scores a file three times, through the fast path (as this machine's CPUs allow, then on one thread
    with each chunk's text left in place) and row by row (no block ever parsed whole); checks that all
    wrote the same bytes and gives the fast run's outputs."""
    runs = itertools.count()
    parse = tabular.CsvReader._parse

    def once(model: Model, data: bytes, chunk_rows: int, row_by_row: bool, one_cpu: bool = False) -> Outputs:
        fast = 0

        def counted(reader: tabular.CsvReader, block: bytes, lines: int) -> np.ndarray | None:
            nonlocal fast
            parsed = None if row_by_row else parse(reader, block, lines)
            fast += parsed is not None
            return parsed

        root = tmp_path / str(next(runs))
        source = Source("local", "incoming/f.csv", size=len(data), etag=hashlib.md5(data).hexdigest())
        with monkeypatch.context() as patch:
            patch.setattr(tabular.CsvReader, "_parse", counted)
            if one_cpu:  # one thread, each chunk's text left where it was read
                patch.setattr(scoring, "cpus", lambda: 1)
                patch.setattr(tabular, "cpus", lambda: 1)
            manifest = score_file(model, LocalStore(root), source, io.BytesIO(data), chunk_rows=chunk_rows).manifest
        return Outputs(root, manifest, fast)

    def both(model: Model, data: bytes, chunk_rows: int = 5000) -> Outputs:
        fast, slow = once(model, data, chunk_rows, False), once(model, data, chunk_rows, True)
        for other in (slow, once(model, data, chunk_rows, False, one_cpu=True)):
            assert fast.counts == other.counts
            assert fast.rejected_text == other.rejected_text
            assert fast.scored == other.scored
        return fast

    yield both


@pytest.mark.parametrize("chunk_rows", [5000, 1000, 7])
def test_a_bad_cell_inside_a_fast_block_is_rejected_on_its_physical_line(rf: Model, scored: Any,
                                                                        chunk_rows: int) -> None:
    body = rows(3000)
    body[1776] = replaced(body[1776], 3, "oops")
    out = scored(rf, csv_bytes(body), chunk_rows)
    assert out.fast_blocks > 0
    assert out.rejected == [(1778, "wrong_type")]  # line 1 is the header
    assert out.counts == {"in": 3000, "scored": 2999, "rejected": 1}


def test_nan_and_infinity_in_any_spelling_are_refused_as_the_exact_reader_refuses_them(rf: Model,
                                                                                     scored: Any) -> None:
    body = rows(2000)
    spellings = ["nan", "NaN", "-inf", "Infinity", "1e400", "-1E999"]
    for k, spelling in enumerate(spellings):
        body[100 + 300 * k] = replaced(body[100 + 300 * k], k, spelling)
    out = scored(rf, csv_bytes(body))
    assert out.fast_blocks > 0
    markers = set(rf.manifest.missing_markers)  # pandas' own: "nan" and "NaN" among them
    assert out.rejected == [(102 + 300 * k, "null_value" if spelling in markers else "non_finite")
                            for k, spelling in enumerate(spellings)]


def test_a_missing_marker_that_is_a_number_is_read_as_missing(rf: Model, rf_bundle: Path, scored: Any) -> None:
    body = rows(1500)
    body[700] = replaced(body[700], 0, "-999")
    body[701] = replaced(body[701], 0, "-999.0")  # another text: a number like any other
    data = csv_bytes(body)
    marked = Model(rf.manifest.model_copy(update={"missing_markers": ["", "-999"]}),
                   (rf_bundle / MODEL_FILE).read_bytes(), max_rows=1_000_000)
    out = scored(marked, data)
    assert [line for line, _ in out.rejected] == [702]
    assert out.rejected[0][1] != "wrong_type"  # read as a null, not as text
    plain = scored(rf, data)
    assert plain.rejected == [] and plain.fast_blocks > 0  # without the marker, -999 is a number


def test_a_block_boundary_in_the_middle_of_the_file_loses_no_row(rf: Model, scored: Any) -> None:
    body = rows(10_000)
    text = "".join(row + "\n" for row in body)
    assert len(text) > 1.5 * tabular.PLAIN_BYTES
    first_after = text[: text.rfind("\n", 0, tabular.PLAIN_BYTES) + 1].count("\n")  # starts the second block
    for index in (first_after - 1, first_after, first_after + 1):
        body[index] = replaced(body[index], 2, "x")
    out = scored(rf, csv_bytes(body), 20_000)  # one chunk: the boundary is the block's
    assert out.fast_blocks >= 2
    assert out.rejected == [(first_after + 1, "wrong_type"), (first_after + 2, "wrong_type"),
                            (first_after + 3, "wrong_type")]
    assert out.scored.count(b"\n") == 1 + 9997


def test_an_oversized_line_deep_in_a_plain_stretch_is_refused_on_its_line(rf: Model, scored: Any) -> None:
    """A chunk looks at more than MAX_RECORD_CHARS at once once its rows are known to be long: a line
    past the limit inside that stretch is still refused by itself, and every row around it scored."""
    body = rows(6000)
    body[4000] = replaced(body[4000], 5, "1" * (tabular.MAX_RECORD_CHARS + 10))  # plain ASCII, no quote
    out = scored(rf, csv_bytes(body), 20_000)
    assert out.fast_blocks >= 2
    assert out.rejected == [(4002, "record_too_large")]
    assert out.counts == {"in": 6000, "scored": 5999, "rejected": 1}


def test_rows_that_grow_longer_mid_file_lose_none(rf: Model, scored: Any) -> None:
    """The next chunk's look ahead is sized from the last chunk's rows: much longer rows after short
    ones make shorter chunks, never lost or repeated rows."""
    short = [",".join(["1"] * len(FRAME.columns))] * 3000
    body = short + rows(3000) + short
    body[4500] = replaced(body[4500], 0, "x")
    out = scored(rf, csv_bytes(body), 2000)
    assert out.rejected == [(4502, "wrong_type")]
    assert out.counts == {"in": 9000, "scored": 8999, "rejected": 1}
    assert out.scored.count(b"\n") == 1 + 8999


def test_crlf_rows_and_a_rejected_row_in_a_fast_block_keep_their_text(rf: Model, scored: Any) -> None:
    body = rows(800)
    body[10] = replaced(body[10], 0, "")
    out = scored(rf, csv_bytes(body, "\r\n"), 300)
    assert out.fast_blocks > 0 and out.rejected == [(12, "null_value")]
    lines = out.scored.decode().split("\n")
    assert b"\r" not in out.scored and lines[-1] == ""
    assert [line.rsplit(",", 3)[0] for line in lines[1:-1]] == body[:10] + body[11:]  # each record's own text


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(DAMAGE, st.sampled_from([7, 20, 5000]), st.sampled_from([600, 2500, 1 << 20]), st.sampled_from(["\n", "\r\n"]))
def test_damaged_files_give_the_same_bytes_fast_or_row_by_row(rf: Model, scored: Any,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               damage: list[tuple[int, str]], chunk_rows: int,
                                                               plain_bytes: int, end: str) -> None:
    monkeypatch.setattr(tabular, "PLAIN_BYTES", plain_bytes)  # blocks of a few rows: boundaries everywhere
    body = damage_rows(rows(60), damage)
    out = scored(rf, csv_bytes(body, end), chunk_rows)
    assert out.counts["in"] == sum(1 for r in body if r.strip()) == out.counts["scored"] + out.counts["rejected"]


def test_scoring_a_csv_never_imports_pandas(rf_bundle: Path, tmp_path: Path) -> None:
    """pandas costs ~70 MiB and half a second; Arrow arrays are built on buffers so it is never loaded."""
    data = tmp_path / "in.csv"
    data.write_bytes(csv_bytes(rows(3000)))
    code = f"""
import sys
from functions.batch.scoring import Source, score_file
from functions.batch.stores import LocalStore
from functions.common.bundle import directory_reader, load_model
model = load_model(directory_reader({str(rf_bundle)!r}), max_rows=100_000)
with open({str(data)!r}, "rb") as f:
    manifest = score_file(model, LocalStore({str(tmp_path / "out")!r}), Source("local", "incoming/in.csv"), f).manifest
assert manifest["rows"]["scored"] == 3000, manifest
print(sorted(m for m in sys.modules if m.split(".")[0] == "pandas"))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("cpus", [1, 2])
def test_one_thread_or_three_write_the_same_bytes(rf: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  cpus: int) -> None:
    """With one CPU the file is parsed, scored and written on one thread; with more, on three."""
    body = rows(3000)
    body[1500] = replaced(body[1500], 1, "oops")
    data = csv_bytes(body)
    outputs = {}
    for n in (1, cpus):
        monkeypatch.setattr(scoring, "cpus", lambda n=n: n)
        monkeypatch.setattr(tabular, "cpus", lambda n=n: n)
        source = Source("local", "incoming/f.csv", size=len(data), etag=hashlib.md5(data).hexdigest())
        manifest = score_file(rf, LocalStore(tmp_path / str(n)), source, io.BytesIO(data), chunk_rows=400).manifest
        outputs[n] = Outputs(tmp_path / str(n), manifest, 0)
    assert outputs[cpus].scored == outputs[1].scored and outputs[cpus].rejected == [(1502, "wrong_type")]
    assert outputs[cpus].counts == {"in": 3000, "scored": 2999, "rejected": 1}


@settings(max_examples=examples(200), deadline=None)
@given(st.binary(max_size=300), st.integers(0, 7))
def test_line_ends_finds_every_newline_whatever_the_block_s_length_and_start(data: bytes, skip: int) -> None:
    block = memoryview(data)[min(skip, len(data)):]  # a view starting anywhere, as a chunk's text is
    assert tabular.line_ends(block).tolist() == [i for i, c in enumerate(bytes(block)) if c == 10]
