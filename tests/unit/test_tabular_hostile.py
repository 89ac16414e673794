"""Hostile files: every one ends with a manifest whose counts add up, and every bad record is a
rejected row carrying the physical line it starts on and its reason."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from functions.batch.scoring import Source, score_file
from functions.batch.stores import LocalStore
from functions.common.bundle import Model, directory_reader, load_model
from functions.common.tabular import MAX_RECORD_CHARS
from tests.conftest import breast_cancer, examples

FRAME = breast_cancer().drop(columns=["target"]).head(12)
HEADER = ",".join(FRAME.columns)
ROWS = [",".join(repr(float(v)) for v in row) for row in FRAME.itertuples(index=False)]
JSON_ROWS = [json.dumps(dict(zip(FRAME.columns, map(float, row), strict=True)))
             for row in FRAME.itertuples(index=False)]


def bad(row: str) -> str:
    """The row with its first feature not a number: rejected as wrong_type."""
    return "oops," + row.split(",", 1)[1]


def text(lines: list[str], end: str = "\n") -> bytes:
    return (end.join(lines) + end).encode()


def parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


@dataclass(frozen=True)
class Hostile:
    """A hostile file and what must come of it: a rejected manifest with ``code``, or a complete one
    with ``rows_in`` records and these rejected (line, reason code) pairs."""

    key: str
    data: bytes
    code: str | None = None
    rows_in: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    max_file_bytes: int | None = None


def corpus() -> dict[str, Hostile]:
    quoted_note = [f'{r},"line one\nline two, with ""quotes"""' for r in ROWS[:3]]
    cases = [
        # CSV: line endings and records spanning lines
        ("quoted_newline", Hostile("a.csv", text([HEADER + ",note", *quoted_note, bad(ROWS[3]) + ",x", ROWS[4] + ",y"]),
                                   rows_in=5, rejected=[(8, "wrong_type")])),
        ("cr_only", Hostile("a.csv", text([HEADER, ROWS[0], ROWS[1], bad(ROWS[2]), ROWS[3]], "\r"),
                            rows_in=4, rejected=[(4, "wrong_type")])),
        ("crlf", Hostile("a.csv", text([HEADER, ROWS[0], bad(ROWS[1]), ROWS[2]], "\r\n"),
                         rows_in=3, rejected=[(3, "wrong_type")])),
        ("mixed_endings", Hostile("a.csv", f"{HEADER}\r\n{ROWS[0]}\r{ROWS[1]}\n{bad(ROWS[2])}\r\n{ROWS[3]}\r".encode(),
                                  rows_in=4, rejected=[(4, "wrong_type")])),
        ("crlf_inside_quotes", Hostile("a.csv", text([HEADER + ",note", ROWS[0] + ',"a\r\nb\rc"', bad(ROWS[1]) + ",z"],
                                                     "\r\n"), rows_in=2, rejected=[(5, "wrong_type")])),
        ("utf8_bom", Hostile("a.csv", b"\xef\xbb\xbf" + text([HEADER, *ROWS[:3]]), rows_in=3)),
        # CSV: sizes
        ("field_over_csv_limit", Hostile("a.csv", text([HEADER + ",note", ROWS[0] + ',"' + "x" * 200_000 + '"',
                                                         ROWS[1] + ",ok"]),
                                         rows_in=2, rejected=[(2, "field_too_large")])),
        ("line_over_record_limit", Hostile("a.csv", text([HEADER + ",note", ROWS[0] + ",a",
                                                           ROWS[1] + "," + "y" * (MAX_RECORD_CHARS + 10),
                                                           ROWS[2] + ",b"]),
                                           rows_in=3, rejected=[(3, "record_too_large")])),
        ("quoted_field_over_limit_on_lines", Hostile("a.csv", text([HEADER + ",note", ROWS[0] + ',"' + "\n".join(
            ["z" * 50_000] * 4) + '"', ROWS[1] + ",ok"]), rows_in=2, rejected=[(2, "field_too_large")])),
        ("quoted_record_over_limit", Hostile("a.csv", text([HEADER + ",note", ROWS[0] + "," + ",".join(
            ['"' + "z" * 60_000 + "\n" + "z" * 60_000 + '"'] * 10), ROWS[1] + ",ok"]),
                                             rows_in=2, rejected=[(2, "record_too_large")])),
        ("very_many_columns", Hostile("a.csv", text([HEADER + "," + ",".join(f"c{i}" for i in range(20_000)),
                                                     *(r + ",1" * 20_000 for r in ROWS[:3])]), rows_in=3)),
        # CSV: bytes that are not text
        ("nul_bytes", Hostile("a.csv", text([HEADER, ROWS[0], "1\x002" + ROWS[1][ROWS[1].index(","):], ROWS[2]]),
                              rows_in=3, rejected=[(3, "wrong_type")])),
        ("invalid_utf8_mid_file", Hostile("a.csv", text([HEADER, ROWS[0]]) + b"\xff\xfe" + text([ROWS[1], ROWS[2]]),
                                          rows_in=3, rejected=[(3, "invalid_encoding")])),
        ("binary_named_csv", Hostile("a.csv", b"\xff\xfe\x00binary\x00garbage\n\x00", "wrong_format")),
        # CSV: malformed
        ("unterminated_quote_at_eof", Hostile("a.csv", text([HEADER, ROWS[0], ROWS[1]]) + b'"1.0,2\n3',
                                              rows_in=3, rejected=[(4, "malformed_csv")])),
        ("text_after_closing_quote", Hostile("a.csv", text([HEADER, '"1"x' + ROWS[0][ROWS[0].index(","):], ROWS[1]]),
                                             rows_in=2, rejected=[(2, "malformed_csv")])),
        ("short_and_long_rows", Hostile("a.csv", text([HEADER, ROWS[0].rsplit(",", 2)[0], ROWS[1] + ",9", ROWS[2]]),
                                        rows_in=3, rejected=[(2, "wrong_length"), (3, "wrong_length")])),
        ("blank_lines_between", Hostile("a.csv", text([HEADER, "", ROWS[0], "   ", "", bad(ROWS[1])]),
                                        rows_in=2, rejected=[(6, "wrong_type")])),
        ("empty_file", Hostile("a.csv", b"", "empty_file")),
        ("header_only", Hostile("a.csv", text([HEADER]), "empty_file")),
        ("header_and_blank_lines", Hostile("a.csv", text([HEADER, "", " ", ""]), "empty_file")),
        ("duplicate_header", Hostile("a.csv", text([HEADER + ",mean radius", ROWS[0] + ",1"]), "wrong_header")),
        ("wrong_delimiter", Hostile("a.csv", text([HEADER.replace(",", ";"), ROWS[0].replace(",", ";")]),
                                    "wrong_header")),
        ("header_over_record_limit", Hostile("a.csv", text([HEADER + "," + "h" * MAX_RECORD_CHARS, ROWS[0]]),
                                             "wrong_header")),
        # compression
        ("truncated_gzip", Hostile("a.csv.gz", gzip.compress(text([HEADER, *ROWS] * 40))[:-200], "corrupt_gzip")),
        ("gzip_not_named_gz", Hostile("a.csv", gzip.compress(text([HEADER, ROWS[0]])), "wrong_format")),
        ("named_gz_not_gzip", Hostile("a.csv.gz", text([HEADER, ROWS[0]]), "corrupt_gzip")),
        ("gzip_bomb_ratio", Hostile("a.csv.gz", gzip.compress(text([HEADER, ROWS[0]]) + b"\n" * 3_000_000),
                                    "file_too_large", max_file_bytes=1_000_000)),
        ("gzip_crlf_quoted", Hostile("a.csv.gz", gzip.compress(text([HEADER + ",n", ROWS[0] + ',"a\r\nb"',
                                                                       bad(ROWS[1]) + ",c"], "\r\n")),
                                     rows_in=2, rejected=[(4, "wrong_type")])),
        # JSON Lines
        ("json_deep_nesting", Hostile("a.jsonl", text([JSON_ROWS[0], '{"a":' * 50_000 + "1" + "}" * 50_000,
                                                       JSON_ROWS[1]]), rows_in=3, rejected=[(2, "malformed_json")])),
        ("json_nested_extra_key", Hostile("a.jsonl", text([JSON_ROWS[0][:-1] + ', "x": ' + "[" * 500 + "]" * 500
                                                           + "}"]), rows_in=1)),
        ("json_not_an_object", Hostile("a.jsonl", text([JSON_ROWS[0], "42", '"text"', "null", JSON_ROWS[1]]),
                                       rows_in=5, rejected=[(2, "wrong_type"), (3, "wrong_type"), (4, "wrong_type")])),
        ("json_array_top_level", Hostile("a.jsonl", text(["[" + ", ".join(JSON_ROWS[:3]) + "]"]),
                                         rows_in=1, rejected=[(1, "wrong_type")])),
        ("json_pretty_printed", Hostile("a.jsonl", json.dumps(json.loads(JSON_ROWS[0]), indent=1).encode(),
                                        rows_in=32, rejected=[(n, "malformed_json") for n in range(1, 33)])),
        ("json_huge_integer", Hostile("a.jsonl", text(['{"mean radius": ' + "9" * 5000 + ", "
                                                       + JSON_ROWS[0].split(", ", 1)[1]]),
                                      rows_in=1, rejected=[(1, "malformed_json")])),
        ("json_line_over_limit", Hostile("a.jsonl", text([JSON_ROWS[0][:-1] + ', "x": "' + "q" * MAX_RECORD_CHARS
                                                          + '"}', JSON_ROWS[1]]),
                                         rows_in=2, rejected=[(1, "record_too_large")])),
        ("json_invalid_utf8_mid_file", Hostile("a.jsonl", text([JSON_ROWS[0]]) + b'{"\xc3\x28": 1}\n'
                                               + text([JSON_ROWS[1]]), rows_in=3, rejected=[(2, "invalid_encoding")])),
        ("json_cr_only", Hostile("a.jsonl", text(JSON_ROWS[:3], "\r"), rows_in=3)),
        ("json_bom", Hostile("a.jsonl", b"\xef\xbb\xbf" + text(JSON_ROWS[:2]), rows_in=2)),
        ("json_empty", Hostile("a.jsonl", b"\n\n  \n", "empty_file")),
        ("json_binary", Hostile("a.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "wrong_format")),
        # Parquet
        ("parquet_corrupt_footer", Hostile("a.parquet", parquet(FRAME)[:-12] + b"\x00" * 8 + b"PAR1", "wrong_format")),
        ("parquet_truncated", Hostile("a.parquet", parquet(FRAME)[: len(parquet(FRAME)) // 2], "wrong_format")),
        ("parquet_wrong_schema", Hostile("a.parquet", parquet(FRAME.rename(columns={"mean radius": "radius"})),
                                         "wrong_header")),
        ("parquet_zero_bytes", Hostile("a.parquet", b"", "empty_file")),
        ("parquet_no_rows", Hostile("a.parquet", parquet(FRAME.head(0)), "empty_file")),
        ("parquet_text_in_a_number_column", Hostile("a.parquet", parquet(FRAME.head(3).assign(
                                                        **{"mean radius": ["1.0", "x", "2"]})),
                                                    rows_in=3, rejected=[(1, "wrong_type"), (2, "wrong_type"),
                                                                         (3, "wrong_type")])),
        ("unsupported_suffix", Hostile("a.xlsx", b"PK\x03\x04", "unsupported_format")),
    ]
    return dict(cases)


CORPUS = corpus()


@pytest.fixture(scope="module")
def rf(rf_bundle: Path) -> Model:
    return load_model(directory_reader(rf_bundle), max_rows=1_000_000)


def score(model: Model, root: Path, key: str, data: bytes, **kwargs: Any) -> dict[str, Any]:
    source = Source("local", f"incoming/{key}", size=len(data), etag=hashlib.md5(data).hexdigest())
    return score_file(model, LocalStore(root), source, io.BytesIO(data), **kwargs).manifest


def files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def output_text(root: Path, key: str) -> str:
    data = (root / key).read_bytes()
    return (gzip.decompress(data) if key.endswith(".gz") else data).decode("utf-8")


def rejected_rows(root: Path, manifest: dict[str, Any]) -> list[tuple[int, str]]:
    key = manifest["outputs"]["rejected"]["key"]
    body = output_text(root, key)
    if manifest["format"] == "csv":
        rows = [(int(r["line"]), r["reason"]) for r in csv.DictReader(io.StringIO(body))]
    else:
        rows = [(r["line"], r["reason"]) for r in map(json.loads, body.splitlines())]
    return [(line, reason.split(":")[0]) for line, reason in rows]


def scored_count(root: Path, manifest: dict[str, Any]) -> int:
    key = manifest["outputs"]["scored"]["key"]
    if manifest["format"] == "parquet":
        return len(pd.read_parquet(root / key))
    body = output_text(root, key)
    if manifest["format"] == "csv":
        return len(list(csv.DictReader(io.StringIO(body))))
    return len([json.loads(line) for line in body.splitlines()])


def test_the_corpus_holds_every_kind_the_promise_names() -> None:
    assert len(CORPUS) >= 27
    assert {h.key.split(".", 1)[1] for h in CORPUS.values()} >= {"csv", "csv.gz", "jsonl", "parquet"}


@pytest.mark.parametrize("name", list(CORPUS))
def test_hostile_file_ends_with_a_manifest_that_adds_up(rf: Model, tmp_path: Path, name: str) -> None:
    case = CORPUS[name]
    manifest = score(rf, tmp_path, case.key, case.data, chunk_rows=2, max_file_bytes=case.max_file_bytes)
    assert json.loads((tmp_path / f"manifests/{case.key}.json").read_text()) == manifest
    if case.code is not None:
        assert manifest["status"] == "rejected" and manifest["reason"]["code"] == case.code, manifest["reason"]
        assert len(manifest["reason"]["message"]) <= 1100
        assert not files(tmp_path / "scored")
        return
    rows = manifest["rows"]
    assert manifest["status"] == "complete", manifest.get("reason")
    assert rows["in"] == case.rows_in == rows["scored"] + rows["rejected"]
    assert rejected_rows(tmp_path, manifest) == case.rejected
    assert scored_count(tmp_path, manifest) == rows["scored"]


def test_a_quoted_newline_survives_into_the_scored_file(rf: Model, tmp_path: Path) -> None:
    manifest = score(rf, tmp_path, "q.csv", CORPUS["quoted_newline"].data)
    scored = list(csv.DictReader(io.StringIO(output_text(tmp_path, manifest["outputs"]["scored"]["key"]))))
    assert [r["note"] for r in scored[:3]] == ['line one\nline two, with "quotes"'] * 3
    assert scored[3]["note"] == "y" and all(r["prediction"] in ("0", "1") for r in scored)


def test_an_oversized_record_is_echoed_in_short(rf: Model, tmp_path: Path) -> None:
    manifest = score(rf, tmp_path, "big.csv", CORPUS["line_over_record_limit"].data)
    (row,) = csv.DictReader(io.StringIO(output_text(tmp_path, manifest["outputs"]["rejected"]["key"])))
    assert len(row["row"]) < 1100 and row["row"].startswith(ROWS[1])
    assert row["reason"] == f"record_too_large: the record at line 3 is over {MAX_RECORD_CHARS} characters"


def test_bytes_that_are_not_utf8_are_echoed_escaped(rf: Model, tmp_path: Path) -> None:
    manifest = score(rf, tmp_path, "u.csv", CORPUS["invalid_utf8_mid_file"].data)
    (row,) = csv.DictReader(io.StringIO(output_text(tmp_path, manifest["outputs"]["rejected"]["key"])))
    assert row["row"].startswith("\\xff\\xfe")


def test_scored_json_lines_keep_the_record_and_add_the_answer(rf: Model, tmp_path: Path) -> None:
    manifest = score(rf, tmp_path, "n.jsonl", CORPUS["json_nested_extra_key"].data)
    (record,) = map(json.loads, output_text(tmp_path, manifest["outputs"]["scored"]["key"]).splitlines())
    assert record["mean radius"] == FRAME["mean radius"].iloc[0] and record["prediction"] in (0, 1)
    assert set(record["probabilities"]) == {"0", "1"} and isinstance(record["x"], list)


def test_an_unexpected_error_is_a_rejected_manifest_with_its_detail_in_the_log(
        rf: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from functions.batch import scoring

    def broken(model: Model, chunk: Any) -> Any:
        raise IndexError("secret detail " + "x" * 5000)

    monkeypatch.setattr(scoring, "score_chunk", broken)
    manifest = score(rf, tmp_path, "e.csv", text([HEADER, *ROWS]), chunk_rows=3)
    assert manifest["status"] == "rejected" and manifest["reason"]["code"] == "internal_error"
    assert "IndexError" in manifest["reason"]["message"] and "secret" not in manifest["reason"]["message"]
    assert len(manifest["reason"]["message"]) < 200 and not files(tmp_path / "scored")
    assert "secret detail" in caplog.text


# -- properties ------------------------------------------------------------------------------------

TOKENS = st.sampled_from([b",", b'"', b'""', b"\n", b"\r", b"\r\n", b"\x00", b"\xff", b"\xc3", b"1.5", b"-",
                          b"e9", b"nan", b" ", b"x", b"\xef\xbb\xbf", b"{", b"]", b"\t", b";"])
BODIES = st.lists(st.one_of(TOKENS, st.binary(max_size=6)), max_size=120).map(b"".join)


def physical_lines(data: bytes) -> int:
    return len(re.findall(rb"\r\n|\r|\n", data)) + 1


@settings(max_examples=examples(150), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(BODIES, st.sampled_from(["a.csv", "a.jsonl"]), st.sampled_from([1, 3, 5000]))
def test_random_bytes_never_escape_the_file_loop(rf: Model, tmp_path_factory: pytest.TempPathFactory,
                                                 body: bytes, key: str, chunk_rows: int) -> None:
    data = (HEADER.encode() + b"\n" if key.endswith(".csv") else b"") + body
    out = tmp_path_factory.mktemp("random")
    manifest = score(rf, out, key, data, chunk_rows=chunk_rows)
    if manifest["status"] == "rejected":
        assert manifest["reason"]["code"] != "internal_error"
        return
    rows = manifest["rows"]
    assert rows["in"] == rows["scored"] + rows["rejected"] == scored_count(out, manifest) + rows["rejected"]
    lines = [line for line, _ in rejected_rows(out, manifest)]
    assert lines == sorted(set(lines)) and all(1 <= n <= physical_lines(data) for n in lines)


def quoted(note: str) -> str:
    """A CSV field: quoted only where it must be, so both the plain and the quoted paths are drawn."""
    return '"' + note.replace('"', '""') + '"' if any(c in note for c in ',"\r\n') else note


NOTES = st.text(st.sampled_from(list('ab,"\n\r xé')), max_size=12)
RECORDS = st.lists(st.tuples(st.integers(0, len(ROWS) - 1), NOTES, st.booleans()), min_size=1, max_size=15)


@settings(max_examples=examples(100), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(RECORDS, st.sampled_from(["\n", "\r\n", "\r"]), st.sampled_from([1, 4, 5000]))
def test_rejected_rows_carry_the_line_their_record_starts_on(rf: Model, tmp_path_factory: pytest.TempPathFactory,
                                                              records: list[tuple[int, str, bool]], end: str,
                                                              chunk_rows: int) -> None:
    lines, expected = [HEADER + ",note" + end], []
    for index, note, broken in records:
        start = 1 + len(re.findall(r"\r\n|\r|\n", "".join(lines)))
        lines.append(f"{bad(ROWS[index]) if broken else ROWS[index]},{quoted(note)}{end}")
        if broken:
            expected.append((start, "wrong_type"))
    data = "".join(lines)
    assert [r[-1] for r in csv.reader(io.StringIO(data, newline=""))][1:] == [n for _, n, _ in records]
    out = tmp_path_factory.mktemp("lines")
    manifest = score(rf, out, "n.csv", data.encode(), chunk_rows=chunk_rows)
    assert manifest["rows"] == {"in": len(records), "scored": len(records) - len(expected), "rejected": len(expected)}
    assert rejected_rows(out, manifest) == expected
    scored = list(csv.DictReader(io.StringIO(output_text(out, manifest["outputs"]["scored"]["key"]))))
    assert [r["note"] for r in scored] == [n for _, n, broken in records if not broken]
