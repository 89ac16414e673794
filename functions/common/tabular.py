"""Streaming readers for CSV, JSON Lines and Parquet, gzip or not, shared by batch scoring and the gate.

Readers yield chunks of records; each record carries its line number, its raw form (echoed into
the outputs untouched) and its cells as JSON-like values, or the reason it cannot be read.
Parquet needs random access: it is spooled to local disk (not memory) and deleted when done.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import functools
import gzip
import io
import itertools
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import numpy as np

from .errors import SlimserveError, clip
from .manifest import Feature

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
GZIP_MAGIC = b"\x1f\x8b"
MAX_RECORD_CHARS = 1 << 20  # a longer record is a rejected row, never held whole in memory
CHUNK_CHARS = 16 << 20  # a chunk ends here whatever its row count: wide rows keep memory bounded too
ECHO_CHARS = 1024  # of an oversized or unreadable record, echoed into the rejected rows
FAST_LINES = 1024  # lines read and checked at once while none needs a closer look
NO_MARKERS: tuple[str, ...] = ("",)  # an empty text cell is missing; a bundle's missing_markers add to it


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


def open_text_lines(stream: IO[bytes], fmt: FileFormat, max_bytes: int | None = None) -> Lines:
    """The stream's physical lines, transparently gunzipped (to at most ``max_bytes``), refusing a
    mislabelled file early."""
    # Wrapped even when already buffered: the text layer closes what it wraps, never the caller's stream.
    buffered: Any = io.BufferedReader(_Raw(stream), 1 << 20)
    head = buffered.peek(2)[:2]
    if fmt.gzip:
        if head != GZIP_MAGIC:
            raise WholeFileRejected("file is named .gz but is not gzip", code="corrupt_gzip")
        unzipped = gzip.GzipFile(fileobj=buffered)
        return Lines(unzipped if max_bytes is None else io.BufferedReader(_Raw(unzipped, max_bytes), 1 << 20))
    if head == GZIP_MAGIC:
        raise WholeFileRejected("file is gzip-compressed but not named .gz", code="wrong_format")
    return Lines(buffered)


class ByteSource(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class _Raw(io.RawIOBase):
    """Any object with ``read(n)`` (an S3 StreamingBody, a file) as a raw stream to buffer; past
    ``limit`` bytes (a decompressed gzip bomb) the file is refused."""

    def __init__(self, stream: ByteSource, limit: int | None = None) -> None:
        self._stream, self._limit, self._read = stream, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        self._read += len(data)
        if self._limit is not None and self._read > self._limit:
            raise WholeFileRejected(f"file's content is over the limit of {self._limit} bytes once decompressed",
                                    code="file_too_large")
        buffer[: len(data)] = data
        return len(data)


class _TooLong(Exception):
    """A record grew past MAX_RECORD_CHARS while it was being read, at ``line``."""

    def __init__(self, line: Line) -> None:
        super().__init__(line.number)
        self.line = line


@dataclass(frozen=True)
class Line:
    number: int  # 1-based physical line
    text: str  # with its line ending; only the head of an oversized line
    oversized: bool = False
    skipped_quotes: int = 0  # quote characters in the part of an oversized line that was read past

    @property
    def body(self) -> str:
        return self.text.rstrip("\r\n")

    @property
    def quotes(self) -> int:
        return self.text.count('"') + self.skipped_quotes


class Lines:
    """Physical lines of a text file, numbered from 1: each ends at \\n, \\r\\n or a lone \\r. Bytes
    that are not UTF-8 are kept (as surrogates) so the line holding them can be named and refused.
    A line over MAX_RECORD_CHARS keeps only its head; the rest is read past, never held."""

    def __init__(self, binary: io.BufferedReader | gzip.GzipFile) -> None:
        self._text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")
        self._pending: collections.deque[str] = collections.deque()  # lines read ahead, then given back
        self.number = 0

    def next(self) -> Line | None:
        text = self.read()
        return self.line(text) if text else None

    def read(self) -> str:
        """The next line's text as read ('' at the end of the file)."""
        text = self._next_text()
        if text:
            self.number += 1
        return text

    def read_many(self, count: int) -> list[str]:
        """Up to ``count`` lines' texts as read, in one call: the readers' fast path."""
        if self._pending:
            texts = [self.read() for _ in range(min(count, len(self._pending)))]
            return texts
        try:
            texts = list(itertools.islice(iter(functools.partial(self._text.readline, MAX_RECORD_CHARS), ""), count))
        except (OSError, EOFError, zlib.error) as exc:
            raise WholeFileRejected(f"file cannot be decompressed: {clip(str(exc), 200)}",
                                    code="corrupt_gzip") from None
        self.number += len(texts)
        return texts

    @property
    def pending(self) -> int:
        """How many lines given back are still to be read again."""
        return len(self._pending)

    def unread(self, texts: list[str]) -> None:
        """Give back the last lines read, to be read again one by one."""
        self._pending.extendleft(reversed(texts))
        self.number -= len(texts)

    def line(self, text: str) -> Line:
        """The line whose ``text`` was just read; if it is oversized, the rest of it is read past."""
        if len(text) < MAX_RECORD_CHARS or text.endswith(("\n", "\r")):
            return Line(self.number, text)
        rest, quotes = text, text[ECHO_CHARS:].count('"')
        while rest and not rest.endswith(("\n", "\r")):
            rest = self._next_text()
            quotes += rest.count('"')
        return Line(self.number, text[:ECHO_CHARS], oversized=True, skipped_quotes=quotes)

    def _next_text(self) -> str:
        """The next piece of text up to a line ending (or MAX_RECORD_CHARS), given back ones first."""
        return self._pending.popleft() if self._pending else self._readline()

    def _readline(self) -> str:
        try:
            return self._text.readline(MAX_RECORD_CHARS)
        except (OSError, EOFError, zlib.error) as exc:
            raise WholeFileRejected(f"file cannot be decompressed: {clip(str(exc), 200)}",
                                    code="corrupt_gzip") from None


def not_utf8(text: str) -> bool:
    """Whether ``text`` holds bytes that were not UTF-8 (decoded as surrogates)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def printable(text: str, limit: int = ECHO_CHARS) -> str:
    """A record as echoed into the rejected rows: bytes that were not UTF-8 shown as \\xNN, cut to ``limit``."""
    if not text.isascii():
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return clip(text, limit)


def too_long(line: int) -> str:
    return f"record_too_large: the record at line {line} is over {MAX_RECORD_CHARS} characters"


def not_text(line: int) -> str:
    return f"invalid_encoding: line {line} is not UTF-8 text"


@dataclass(frozen=True)
class Record:
    """One CSV record: the line it starts on, its text (raw) and, when it was quoted, its fields."""

    line: int
    raw: str
    fields: list[str] | None = None
    error: str | None = None

    @property
    def plain(self) -> bool:
        return self.fields is None and self.error is None


# -- CSV -------------------------------------------------------------------------------------------

class CsvReader:
    """Records may span lines (a quoted field holding a newline); each is numbered by the line it
    starts on. A malformed record is a rejected row, never the end of the file."""

    def __init__(self, lines: Lines, features: list[Feature], missing_markers: Collection[str] = NO_MARKERS) -> None:
        self._lines = lines
        self._missing = markers_set(missing_markers)
        header = self._next_record()
        if header is None:
            raise WholeFileRejected("file is empty", code="empty_file")
        if header.error is not None:
            code = "wrong_format" if header.error.startswith("invalid_encoding") else "wrong_header"
            raise WholeFileRejected(f"header: {header.error}", code=code)
        self.header = header.fields if header.fields is not None else header.raw.split(",")
        self.header_line = header.raw.encode("utf-8")
        names = [f.name for f in features]
        columns = set(self.header)
        missing = [n for n in names if n not in columns]
        if missing:
            raise WholeFileRejected(f"header lacks the model's features {missing}; header is {self.header[:50]}",
                                    code="wrong_header")
        if len(columns) != len(self.header):
            raise WholeFileRejected("header repeats a column name", code="wrong_header")
        self._features = features
        self._positions = [self.header.index(n) for n in names]
        self._all_numeric = all(f.type == "number" for f in features)

    def chunks(self, rows: int) -> Iterator[Chunk]:
        lines = self._lines
        while True:
            numbers: list[int] = []
            raws: list[str] = []
            special: dict[int, Record] = {}  # records quoted, refused or not ASCII, by index in the chunk
            size = 0
            while len(raws) < rows and size < CHUNK_CHARS:
                start = lines.number + 1
                batch = lines.read_many(min(rows - len(raws), FAST_LINES))
                if not batch:
                    break
                block = "".join(batch)
                if '"' not in block and block.isascii() and max(map(len, batch)) < MAX_RECORD_CHARS:
                    for i, body in enumerate([text.rstrip("\r\n") for text in batch]):
                        if body and not body.isspace():  # a blank line is no row
                            numbers.append(start + i)
                            raws.append(body)
                    size += len(block)
                    continue
                lines.unread(batch)  # quoted, oversized or not ASCII somewhere: line by line
                while lines.pending:
                    record = self._slow_line(lines, lines.read())
                    if record is not None:
                        special[len(raws)] = record
                        numbers.append(record.line)
                        raws.append(record.raw)
                        size += len(record.raw)
            if not raws:
                return
            yield self._chunk(numbers, raws, special)

    def _slow_line(self, lines: Lines, text: str) -> Record | None:
        """The record starting with the line ``text`` just read; None for a blank line."""
        return self._record(lines.line(text))

    def _next_record(self) -> Record | None:
        """The next non-blank record, or None at the end of the file."""
        while (line := self._lines.next()) is not None:
            record = self._record(line)
            if record is not None:
                return record
        return None

    def _record(self, line: Line) -> Record | None:
        """The record starting at ``line`` (None for a blank line)."""
        if line.oversized:
            return Record(line.number, printable(line.text), error=too_long(line.number))
        body = line.body
        if not body or body.isspace():
            return None
        if '"' in body:
            return self._quoted(line)
        if not_utf8(body):
            return Record(line.number, printable(body), error=not_text(line.number))
        return Record(line.number, body)

    def _quoted(self, first: Line) -> Record:
        """A record with quotes, read by the csv module, which pulls as many lines as the quotes span."""
        texts = [first.text]
        size = len(first.text)

        def more() -> Iterator[str]:
            nonlocal size
            yield first.text
            while (line := self._lines.next()) is not None:
                size += len(line.text)
                if line.oversized or size > MAX_RECORD_CHARS:
                    raise _TooLong(line)
                texts.append(line.text)
                yield line.text

        error, quotes = None, 0
        try:
            fields: list[str] | None = next(csv.reader(more(), strict=True))
        except _TooLong as exc:
            fields, error, quotes = None, too_long(first.number), exc.line.quotes
        except csv.Error as exc:
            code = "field_too_large" if "field limit" in str(exc) else "malformed_csv"
            fields, error = None, f"{code}: record at line {first.number}: {exc}"
        if error is not None:
            self._skip_open_quote(quotes + sum(t.count('"') for t in texts))
        raw = "".join(texts).rstrip("\r\n")
        if error is None and not_utf8(raw):
            fields, error = None, not_text(first.number)
        return Record(first.number, raw if error is None else printable(raw), fields, error)

    def _skip_open_quote(self, quotes: int) -> None:
        """After a refused record, read past the rest of a quoted field it left open (an odd count of
        quotes so far), so that its lines are not taken for records of their own."""
        while quotes % 2:
            line = self._lines.next()
            if line is None:
                return
            quotes += line.quotes

    def _chunk(self, numbers: list[int], raws: list[str], special: dict[int, Record]) -> Chunk:
        chunk = Chunk(line_numbers=numbers, raw=raws)
        if self._all_numeric and all(r.plain for r in special.values()) and self._fast(chunk):
            return chunk
        for i, raw in enumerate(raws):
            record = special.get(i)
            if record is not None and record.error is not None:
                chunk.cells.append(None)
                chunk.errors.append(record.error)
                continue
            fields = record.fields if record is not None and record.fields is not None else raw.split(",")
            cells, error = self._cells(fields)
            chunk.cells.append(cells)
            chunk.errors.append(error)
        return chunk

    def _fast(self, chunk: Chunk) -> bool:
        """Every record single-line, unquoted and numeric: parse the chunk in one call, if every row parses."""
        # When the header is exactly the features, loadtxt itself refuses rows of another width.
        exact = self._positions == list(range(len(self.header)))
        try:
            parsed = np.loadtxt(chunk.raw, delimiter=",", dtype=np.float64, ndmin=2, comments=None,
                                usecols=None if exact else self._positions)
        except ValueError:
            return False  # some row is off: parse row by row to name it
        if _reads_nan_as_missing(self._missing) and np.isnan(parsed).any():
            return False  # 'nan' is a missing marker: row by row, it is a null
        if parsed.shape != (len(chunk), len(self._positions)) or not (
                exact or all(t.count(",") == len(self.header) - 1 for t in chunk.raw)):
            return False
        chunk.numbers = parsed
        chunk.cells = [None] * len(chunk)
        chunk.errors = [None] * len(chunk)
        return True

    def _cells(self, fields: list[str]) -> tuple[list[Any] | None, str | None]:
        if len(fields) != len(self.header):
            return None, f"wrong_length: row has {len(fields)} fields; the header has {len(self.header)}"
        return cells_from_text(self._features, [fields[pos] for pos in self._positions], self._missing)


def markers_set(missing_markers: Collection[str]) -> frozenset[str]:
    """The text cells read as missing (compared stripped): the given markers and the empty cell."""
    return frozenset(m.strip() for m in missing_markers) | {""}


def _reads_nan_as_missing(missing: frozenset[str]) -> bool:
    return any(m.lower().lstrip("+-") == "nan" for m in missing)


def cells_from_text(features: list[Feature], texts: list[str],
                    missing: Collection[str] = NO_MARKERS) -> tuple[list[Any] | None, str | None]:
    """CSV cells (text) as JSON-like values: '' or a missing marker is null, numbers parsed,
    categories kept as text."""
    cells: list[Any] = []
    for feature, raw in zip(features, texts, strict=True):
        text = raw.strip()
        if text == "" or text in missing:
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
    def __init__(self, lines: Lines, features: list[Feature], missing_markers: Collection[str] = NO_MARKERS) -> None:
        self._lines = lines
        self._missing = markers_set(missing_markers)
        self._names = [f.name for f in features]
        self._empty = True

    def chunks(self, rows: int) -> Iterator[Chunk]:
        while True:
            chunk = Chunk()
            size = 0
            while len(chunk) < rows and size < CHUNK_CHARS:
                line = self._lines.next()
                if line is None:
                    break
                text = line.text.strip()
                if not text:
                    continue
                if self._empty and not_utf8(text):
                    raise WholeFileRejected(f"line {line.number} is not UTF-8 text: is this really JSON Lines?",
                                            code="wrong_format")
                self._empty = False
                size += len(text)
                cells, error = self._cells(line, text)
                chunk.line_numbers.append(line.number)
                chunk.raw.append(text if error is None else printable(text))
                chunk.cells.append(cells)
                chunk.errors.append(error)
            if not len(chunk):
                if self._empty:
                    raise WholeFileRejected("file is empty", code="empty_file")
                return
            yield chunk

    def _cells(self, line: Line, text: str) -> tuple[list[Any] | None, str | None]:
        if line.oversized:
            return None, too_long(line.number)
        if not_utf8(text):
            return None, not_text(line.number)
        try:
            row = json.loads(text)
        except ValueError:
            return None, "malformed_json: line is not valid JSON"
        except RecursionError:
            return None, "malformed_json: line nests deeper than the parser allows"
        if not isinstance(row, dict):
            return None, "wrong_type: each line must be a JSON object keyed by feature name"
        missing = [n for n in self._names if n not in row]
        if missing:
            return None, f"missing_feature: feature {missing[0]!r} is missing"
        return [None if isinstance(v := row[n], str) and v.strip() in self._missing else v for n in self._names], None



# -- Parquet ---------------------------------------------------------------------------------------

class ParquetReader:
    def __init__(self, path: str, features: list[Feature]) -> None:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise WholeFileRejected("Parquet needs pyarrow, which this deployment does not include",
                                    code="unsupported_format") from None
        if os.path.getsize(path) == 0:
            raise WholeFileRejected("file is empty", code="empty_file")
        try:
            self._file = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid and friends for a corrupt file
            raise WholeFileRejected(f"not a readable Parquet file: {clip(str(exc), 200)}",
                                    code="wrong_format") from None
        self.schema = self._file.schema_arrow
        self.columns = self.schema.names
        names = [f.name for f in features]
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise WholeFileRejected(f"Parquet schema lacks the model's features {missing}", code="wrong_header")
        if self._file.metadata.num_rows == 0:
            raise WholeFileRejected("file is empty", code="empty_file")
        self._names = names

    def chunks(self, rows: int) -> Iterator[Chunk]:
        line = 1
        batches = self._file.iter_batches(batch_size=rows)
        while True:
            try:  # a corrupt page surfaces only when it is read
                batch = next(batches, None)
                records = [] if batch is None else batch.to_pylist()
            except Exception as exc:
                raise WholeFileRejected(f"Parquet data cannot be read: {clip(str(exc), 200)}",
                                        code="wrong_format") from None
            if batch is None:
                return
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
def open_records(stream: IO[bytes], fmt: FileFormat, features: list[Feature],
                 max_bytes: int | None = None, missing_markers: Collection[str] = NO_MARKERS) -> Iterator[Reader]:
    """The reader for ``fmt`` over ``stream``; a spooled Parquet copy is removed when the block ends.
    ``max_bytes`` bounds a gzip file's decompressed content."""
    if fmt.kind == "parquet":
        with spooled(stream, ".parquet") as path:
            yield ParquetReader(path, features)
        return
    lines = open_text_lines(stream, fmt, max_bytes)
    # Text formats read a bundle's missing markers as null, as pandas read them when it was built.
    yield CsvReader(lines, features, missing_markers) if fmt.kind == "csv" \
        else JsonLinesReader(lines, features, missing_markers)
