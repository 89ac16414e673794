"""Streaming readers for CSV, JSON Lines and Parquet, gzip or not, shared by batch scoring and the gate.

Readers yield chunks of records; each record carries its line number, its raw form (echoed into
the outputs untouched) and its cells as JSON-like values, or the reason it cannot be read.
Parquet needs random access: it is spooled to local disk (not memory) and deleted when done.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from .errors import SlimserveError
from .manifest import Feature

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
GZIP_MAGIC = b"\x1f\x8b"


class WholeFileRejected(SlimserveError):
    """The file as a whole cannot be scored; nothing of it is written but a rejected manifest."""

    status = 422
    code = "file_rejected"


@dataclass(frozen=True)
class FileFormat:
    kind: str  # csv | jsonl | parquet
    gzip: bool

    @classmethod
    def from_key(cls, key: str) -> FileFormat:
        name = key.lower()
        gz = name.endswith(".gz")
        stem = name[:-3] if gz else name
        for suffix, kind in FORMATS.items():
            if stem.endswith(suffix):
                if kind == "parquet" and gz:
                    break
                return cls(kind, gz)
        raise WholeFileRejected(f"unsupported file type for {key!r}: use .csv, .jsonl or .ndjson (optionally .gz), "
                                "or .parquet", code="unsupported_format")


@dataclass
class Chunk:
    """Records of one chunk; ``cells[i]`` is None where ``errors[i]`` says why the row is unreadable."""

    line_numbers: list[int] = field(default_factory=list)
    raw: list[Any] = field(default_factory=list)
    cells: list[list[Any] | None] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    numbers: np.ndarray | None = None  # all cells already parsed as float64 (fast CSV path)

    def __len__(self) -> int:
        return len(self.line_numbers)


def open_text_lines(stream: IO[bytes], fmt: FileFormat) -> IO[bytes]:
    """A line-iterable binary stream, transparently gunzipped, refusing a mislabelled file early."""
    buffered: Any = stream if isinstance(stream, io.BufferedReader) else io.BufferedReader(_Raw(stream), 1 << 20)
    head = buffered.peek(2)[:2]
    if fmt.gzip:
        if head != GZIP_MAGIC:
            raise WholeFileRejected("file is named .gz but is not gzip", code="corrupt_gzip")
        return gzip.GzipFile(fileobj=buffered)  # type: ignore[return-value]
    if head == GZIP_MAGIC:
        raise WholeFileRejected("file is gzip-compressed but not named .gz", code="wrong_format")
    return buffered


class _Raw(io.RawIOBase):
    """Any object with ``read(n)`` (an S3 StreamingBody, a file) as a raw stream to buffer."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _read_lines(lines: IO[bytes], count: int) -> list[bytes]:
    out = []
    try:
        for _ in range(count):
            line = lines.readline()
            if not line:
                break
            out.append(line)
    except (OSError, EOFError, zlib.error) as exc:
        raise WholeFileRejected(f"file cannot be decompressed: {exc}", code="corrupt_gzip") from None
    return out


def _decode(line: bytes, line_no: int) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise WholeFileRejected(f"line {line_no} is not UTF-8 text: is this really the declared format?",
                                code="wrong_format") from None


# -- CSV -------------------------------------------------------------------------------------------

class CsvReader:
    def __init__(self, lines: IO[bytes], features: list[Feature]) -> None:
        self._lines = lines
        first = _read_lines(lines, 1)
        if not first:
            raise WholeFileRejected("file is empty", code="empty_file")
        header_text = _decode(first[0], 1).lstrip("\ufeff")
        self.header = next(csv.reader([header_text]))
        self.header_line = first[0].rstrip(b"\r\n")
        names = [f.name for f in features]
        missing = [n for n in names if n not in self.header]
        if missing:
            raise WholeFileRejected(f"header lacks the model's features {missing}; header is {self.header[:50]}",
                                    code="wrong_header")
        if len(set(self.header)) != len(self.header):
            raise WholeFileRejected("header repeats a column name", code="wrong_header")
        self._features = features
        self._positions = [self.header.index(n) for n in names]
        self._all_numeric = all(f.type == "number" for f in features)
        self._next_line = 2

    def chunks(self, rows: int) -> Iterator[Chunk]:
        while True:
            lines = _read_lines(self._lines, rows)
            if not lines:
                return
            start, self._next_line = self._next_line, self._next_line + len(lines)
            try:
                block = b"".join(lines).decode("utf-8")  # one decode per chunk, not per line
            except UnicodeDecodeError:
                for i, line in enumerate(lines):
                    _decode(line, start + i)  # names the first line that is not UTF-8
                raise
            texts = block.split("\n")
            if texts[-1] == "":
                texts.pop()
            kept = [(start + i, t.rstrip("\r")) for i, t in enumerate(texts) if t and not t.isspace()]
            if kept:
                yield self._chunk(kept, quoted='"' in block)

    def _chunk(self, kept: list[tuple[int, str]], quoted: bool) -> Chunk:
        chunk = Chunk(line_numbers=[n for n, _ in kept], raw=[t for _, t in kept])
        if self._all_numeric and not quoted:
            # When the header is exactly the features, loadtxt itself refuses rows of another width.
            exact = self._positions == list(range(len(self.header)))
            try:
                parsed = np.loadtxt(chunk.raw, delimiter=",", dtype=np.float64, ndmin=2, comments=None,
                                    usecols=None if exact else self._positions)
                if parsed.shape == (len(chunk), len(self._positions)) and (
                        exact or all(t.count(",") == len(self.header) - 1 for t in chunk.raw)):
                    chunk.numbers = parsed
                    chunk.cells = [None] * len(chunk)
                    chunk.errors = [None] * len(chunk)
                    return chunk
            except ValueError:
                pass  # some row is off: parse row by row below to name it
        for fields in csv.reader(chunk.raw):
            cells, error = self._cells(fields)
            chunk.cells.append(cells)
            chunk.errors.append(error)
        return chunk

    def _cells(self, fields: list[str]) -> tuple[list[Any] | None, str | None]:
        if len(fields) != len(self.header):
            return None, f"wrong_length: row has {len(fields)} fields; the header has {len(self.header)}"
        return cells_from_text(self._features, [fields[pos] for pos in self._positions])


def cells_from_text(features: list[Feature], texts: list[str]) -> tuple[list[Any] | None, str | None]:
    """CSV cells (text) as JSON-like values: '' is null, numbers parsed, categories kept as text."""
    cells: list[Any] = []
    for feature, raw in zip(features, texts, strict=True):
        text = raw.strip()
        if text == "":
            cells.append(None)
        elif feature.type == "category":
            cells.append(text)
        else:
            try:
                cells.append(float(text))
            except ValueError:
                return None, f"wrong_type: feature {feature.name!r}: {text[:40]!r} is not a number"
    return cells, None


# -- JSON Lines ------------------------------------------------------------------------------------

class JsonLinesReader:
    def __init__(self, lines: IO[bytes], features: list[Feature]) -> None:
        self._lines = lines
        self._names = [f.name for f in features]
        self._next_line = 1
        self._empty = True

    def chunks(self, rows: int) -> Iterator[Chunk]:
        while True:
            lines = _read_lines(self._lines, rows)
            if not lines:
                if self._empty:
                    raise WholeFileRejected("file is empty", code="empty_file")
                return
            start, self._next_line = self._next_line, self._next_line + len(lines)
            chunk = Chunk()
            for i, line in enumerate(lines):
                text = _decode(line, start + i).strip()
                if not text:
                    continue
                self._empty = False
                chunk.line_numbers.append(start + i)
                chunk.raw.append(text)
                cells, error = self._cells(text)
                chunk.cells.append(cells)
                chunk.errors.append(error)
            if chunk.line_numbers:
                yield chunk

    def _cells(self, text: str) -> tuple[list[Any] | None, str | None]:
        try:
            row = json.loads(text)
        except ValueError:
            return None, "malformed_json: line is not valid JSON"
        if not isinstance(row, dict):
            return None, "wrong_type: each line must be a JSON object keyed by feature name"
        missing = [n for n in self._names if n not in row]
        if missing:
            return None, f"missing_feature: feature {missing[0]!r} is missing"
        return [row[n] for n in self._names], None


# -- Parquet ---------------------------------------------------------------------------------------

class ParquetReader:
    def __init__(self, path: str, features: list[Feature]) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise WholeFileRejected("Parquet needs pyarrow, which this deployment does not include",
                                    code="unsupported_format") from None
        try:
            self._file = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid and friends for a corrupt file
            raise WholeFileRejected(f"not a readable Parquet file: {str(exc)[:200]}", code="wrong_format") from None
        self.columns = self._file.schema_arrow.names
        names = [f.name for f in features]
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise WholeFileRejected(f"Parquet schema lacks the model's features {missing}", code="wrong_header")
        if self._file.metadata.num_rows == 0:
            raise WholeFileRejected("file is empty", code="empty_file")
        self._names = names

    def chunks(self, rows: int) -> Iterator[Chunk]:
        line = 1
        for batch in self._file.iter_batches(batch_size=rows):
            records = batch.to_pylist()
            chunk = Chunk(line_numbers=list(range(line, line + len(records))), raw=records)
            line += len(records)
            for record in records:
                chunk.cells.append([_plain(record[n]) for n in self._names])
                chunk.errors.append(None)
            yield chunk


def _plain(value: Any) -> Any:
    """Parquet integers and floats as JSON numbers; NaN stays NaN (and is refused as non-finite)."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


# -- spooling --------------------------------------------------------------------------------------

@contextlib.contextmanager
def spooled(stream: IO[bytes], suffix: str) -> Iterator[str]:
    """The stream copied to a file in the temporary directory (/tmp on Lambda), removed on exit:
    a warm function must not keep every file it has read."""
    handle = tempfile.NamedTemporaryFile(suffix=suffix, prefix="slimserve-spool-", delete=False)  # noqa: SIM115 - removed below
    try:
        with handle:
            shutil.copyfileobj(stream, handle, 1 << 20)
        yield handle.name
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(handle.name)


Reader = CsvReader | JsonLinesReader | ParquetReader


@contextlib.contextmanager
def open_records(stream: IO[bytes], fmt: FileFormat, features: list[Feature]) -> Iterator[Reader]:
    """The reader for ``fmt`` over ``stream``; a spooled Parquet copy is removed when the block ends."""
    if fmt.kind == "parquet":
        with spooled(stream, ".parquet") as path:
            yield ParquetReader(path, features)
        return
    lines = open_text_lines(stream, fmt)
    yield CsvReader(lines, features) if fmt.kind == "csv" else JsonLinesReader(lines, features)
