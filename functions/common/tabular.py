"""Streaming readers for CSV, JSON Lines and Parquet, gzip or not, shared by batch scoring and the gate.

Readers yield chunks of records; each record carries its line number, its raw form (echoed into
the outputs untouched) and its cells as JSON-like values, or the reason it cannot be read.
Parquet needs random access: it is spooled to local disk (not memory) and deleted when done.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import functools
import gzip
import io
import json
import math
import os
import re
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
READ_BYTES = 2 << 20  # read from the (decompressed) stream at a time: past the 1 MiB buffer, read into place
PLAIN_BYTES = MAX_RECORD_CHARS  # a plain block (no line in it oversized) is at most this long
CHECKED_LINES = 64  # around a row the block parser refuses, this many lines at most are read row by row
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
    block: bytes | memoryview | None = None  # the records' own text, one a line, when ``raw`` is not filled
    ends: np.ndarray | None = None  # where each record of ``block`` ends (the index of its \n)
    crlf: bool = False  # whether ``block`` holds a \r (its lines end in \r\n)

    def __len__(self) -> int:
        return len(self.line_numbers)

    def record(self, i: int) -> Any:
        """Record ``i`` as read (a CSV record's text without its line ending)."""
        if not self.raw and self.block is not None:
            self.raw = [line.decode("ascii") for line in bytes(self.block).splitlines()]
        return self.raw[i]


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


_LONE_CR = re.compile(rb"\r(?!\n)")


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
        into = getattr(self._stream, "readinto", None)
        if into is not None:  # a file: straight into place, one copy fewer
            size = into(buffer) or 0
        else:
            data = self._stream.read(len(buffer))
            size = len(data)
            buffer[:size] = data
        self._read += size
        if self._limit is not None and self._read > self._limit:
            raise WholeFileRejected(f"file's content is over the limit of {self._limit} bytes once decompressed",
                                    code="file_too_large")
        return size


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
    A line over MAX_RECORD_CHARS keeps only its head; the rest is read past, never held.

    Lines are cut from bytes, so that a stretch needing no closer look can be handed on whole
    (:meth:`plain_block`) without a Python object per line."""

    def __init__(self, binary: io.BufferedReader | gzip.GzipFile) -> None:
        self._binary = binary
        self._buf = bytearray()  # refilled in place: reading allocates nothing per block
        self._pos = 0  # first byte of ``_buf`` not read yet
        self._end = 0  # end of what ``_buf`` holds
        self._eof = False
        self._fresh = True  # a UTF-8 byte order mark is still to be looked for
        self.number = 0

    def next(self) -> Line | None:
        text = self.read()
        return self.line(text) if text else None

    def read(self) -> str:
        """The next line's text as read ('' at the end of the file)."""
        text = self._readline()
        if text:
            self.number += 1
        return text

    def line(self, text: str) -> Line:
        """The line whose ``text`` was just read; if it is oversized, the rest of it is read past."""
        if len(text) < MAX_RECORD_CHARS or text.endswith(("\n", "\r")):
            return Line(self.number, text)
        rest, quotes = text, text[ECHO_CHARS:].count('"')
        while rest and not rest.endswith(("\n", "\r")):
            rest = self._readline()
            quotes += rest.count('"')
        return Line(self.number, text[:ECHO_CHARS], oversized=True, skipped_quotes=quotes)

    def plain_block(self, limit: int | None = None) -> memoryview | None:
        """The next whole lines that need no closer look, as a view of the bytes read, without reading past
        them (:meth:`consume` does): ASCII, no quote, \\n or \\r\\n endings, at most ``limit`` long
        (PLAIN_BYTES, so none is oversized; past it, the caller looks for an oversized line). None when
        the very next line needs a closer look (or the file has ended). A blank line is left for the
        parser to refuse."""
        limit = PLAIN_BYTES if limit is None else limit
        if self._available(limit) == 0:
            return None
        buf, pos = self._buf, self._pos
        stop = _first_trouble(buf, pos, min(self._end, pos + limit))
        cut = buf.rfind(b"\n", pos, stop) + 1
        return memoryview(buf)[pos:cut] if cut > pos else None

    def has_cr(self, size: int) -> bool:
        """Whether the first ``size`` bytes of the last plain block hold a \r."""
        return self._buf.find(b"\r", self._pos, self._pos + size) >= 0

    def consume(self, size: int, lines: int) -> None:
        """Read past the first ``size`` bytes of the last plain block, ``lines`` lines."""
        self._pos += size
        self.number += lines

    def plain_ahead(self) -> bool:
        """Whether the next line could start a plain block (a cheap look, reading nothing more)."""
        buf, pos, end = self._buf, self._pos, self._end
        return pos < end and _first_trouble(buf, pos, min(end, pos + 4096)) > buf.find(b"\n", pos, end) >= 0

    def _available(self, need: int) -> int:
        """Bytes read ahead past the position: more are read until ``need`` are, or the file ends."""
        need = max(need, 3) if self._fresh else need
        while self._end - self._pos < need and not self._eof:
            have, size = self._end - self._pos, max(READ_BYTES, need - (self._end - self._pos))
            if len(self._buf) < have + size:  # a new buffer: a view of the old one may still be held
                grown = bytearray(have + size)
                grown[:have] = self._buf[self._pos:self._end]
                self._buf = grown
            else:  # the rest not read yet moved to the front, the buffer's size unchanged
                self._buf[:have] = self._buf[self._pos:self._end]
            self._pos, self._end = 0, have
            try:
                read = self._binary.readinto(memoryview(self._buf)[have:have + size])
            except (OSError, EOFError, zlib.error) as exc:
                raise WholeFileRejected(f"file cannot be decompressed: {clip(str(exc), 200)}",
                                        code="corrupt_gzip") from None
            self._eof = not read
            self._end += read or 0
        if self._fresh:
            self._fresh = False
            if self._buf.startswith(codecs.BOM_UTF8, 0, self._end):
                self._pos = len(codecs.BOM_UTF8)
        return self._end - self._pos

    def _readline(self) -> str:
        """The next piece of text up to a line ending (or MAX_RECORD_CHARS characters)."""
        cap = 4 * MAX_RECORD_CHARS + 4  # bytes that surely hold MAX_RECORD_CHARS characters
        scanned = 0  # bytes past the position already searched for a line ending
        while (end := self._line_end(self._pos + scanned, self._pos + cap)) < 0:
            have = self._end - self._pos
            if have >= cap:
                end = self._pos + cap
                break
            if self._available(have + 1) <= have:
                end = self._end  # the file ends without a line ending
                break
            scanned = max(have - 1, 0)  # a \r last may be followed by a \n just read
        pos = self._pos
        text = self._buf[pos:end].decode("utf-8", "surrogateescape")
        if len(text) > MAX_RECORD_CHARS:
            text = text[:MAX_RECORD_CHARS]
            end = pos + len(text.encode("utf-8", "surrogateescape"))
        self._pos = end
        return text

    def _line_end(self, start: int, stop: int) -> int:
        """Where the line being read ends (past its ending), searching from ``start``; -1 if not read yet."""
        buf = self._buf
        stop = min(stop, self._end)
        nl = buf.find(b"\n", start, stop)
        cr = buf.find(b"\r", start, nl if nl >= 0 else stop)
        if cr < 0:
            return nl + 1 if nl >= 0 else -1
        if cr + 1 < self._end:
            return cr + 2 if buf[cr + 1] == 10 else cr + 1
        return cr + 1 if self._eof else -1


def _first_trouble(buf: bytes | bytearray, pos: int, stop: int) -> int:
    """The first byte of ``buf[pos:stop]`` that needs the line-by-line reader: a quote, a byte that is
    not ASCII or a lone \\r (``stop`` if none). Looked at in place: the stretch is never copied."""
    found = buf.find(b'"', pos, stop)
    stop = stop if found < 0 else found
    codes = np.frombuffer(buf, dtype=np.uint8, count=stop - pos, offset=pos) if stop > pos else None
    if codes is not None and codes.max() > 127:
        stop = pos + int(np.argmax(codes > 127))
    if buf.find(b"\r", pos, stop) >= 0 and buf.count(b"\r", pos, stop) != buf.count(b"\r\n", pos, stop):
        stop = _LONE_CR.search(buf, pos, stop).start()  # type: ignore[union-attr]
    return stop


def cpus() -> int:
    """The CPUs this process may run on (Lambda: one per 1,769 MB of memory)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def line_ends(block: bytes | memoryview) -> np.ndarray:
    """Where each line of ``block`` ends: the index of its \\n. Looked for 8 bytes at a time first
    (lines are long, most words hold none), then byte by byte in the words that hold one."""
    codes = np.frombuffer(block, dtype=np.uint8)
    newline = np.empty(-(-len(codes) // 8) * 8, dtype=bool)
    newline[len(codes):] = False
    np.equal(codes, 10, out=newline[:len(codes)])
    words = np.flatnonzero(newline.view(np.uint64) != 0)
    found = np.flatnonzero(newline.reshape(-1, 8)[words])
    return words[found >> 3] * 8 + (found & 7)  # type: ignore[no-any-return]


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
        self._numeric_markers = any(_is_number(m) for m in self._missing)
        self._line_bytes: float | None = None  # of the last plain chunk, to size the next one's window
        self._threads = cpus()  # with more than one CPU, Arrow parses a chunk's blocks side by side

    def chunks(self, rows: int, in_place: bool = False) -> Iterator[Chunk]:
        """Chunks of up to ``rows`` records. ``in_place``: a plain chunk's ``block`` is a view of the bytes
        read, valid only until the next chunk is asked for (one copy fewer, for a caller done with each
        chunk by then)."""
        while True:
            chunk = self._plain_chunk(rows, in_place) if self._all_numeric else None
            if chunk is None:
                chunk = self._slow_chunk(rows)
            if chunk is None:
                return
            yield chunk

    def _plain_chunk(self, rows: int, in_place: bool = False) -> Chunk | None:
        """A plain stretch of up to ``rows`` lines, cut once and parsed in blocks of at most PLAIN_BYTES
        (a cache-sized piece parses fastest); None when the next line needs a closer look."""
        lines = self._lines
        run = lines.plain_block(self._window(rows))
        if run is None:
            return None
        ends = line_ends(run)[:rows]
        oversized = np.flatnonzero(np.diff(ends, prepend=-1) > MAX_RECORD_CHARS)
        if len(oversized):  # read line by line from there, so that it is named
            ends = ends[: int(oversized[0])]
            if not len(ends):
                return None
        starts = np.concatenate(([0], ends + 1))  # where each line begins; the last, where the stretch ends
        parts: list[np.ndarray] = []
        count, cap = 0, len(ends)  # cap: lines parsed at once; halved around a row the block parser refuses
        while count < len(ends):
            fits = int(np.searchsorted(starts, starts[count] + self._parse_bytes(), side="right")) - 1
            stop = min(count + cap, max(fits, count + 1))
            parsed = self._parse(run[starts[count]:starts[stop]], stop - count)  # parsed in place, not copied
            if parsed is None:
                if parts:
                    break  # the parsed blocks first; the rest is looked at next
                if stop - count > CHECKED_LINES:
                    cap = (stop - count) // 2  # the refused row is in one half: the first is tried alone
                    continue
                return self._checked_block(bytes(run[: starts[stop]]), rows)  # a few lines, one off: row by row
            parts.append(parsed)
            count = stop
        size = int(starts[count])
        first, crlf = lines.number + 1, lines.has_cr(size)
        lines.consume(size, count)
        self._line_bytes = size / count
        numbers = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return Chunk(line_numbers=list(range(first, first + count)), numbers=numbers,
                     block=run[:size] if in_place else bytes(run[:size]), ends=ends[:count], cells=[None] * count,
                     errors=[None] * count, crlf=crlf)

    def _parse_bytes(self) -> int:
        """Bytes parsed in one call: with one CPU, the whole chunk (measured faster than 1 MiB pieces: one
        call, nothing to join); with more, a block of PLAIN_BYTES per CPU, parsed side by side."""
        return PLAIN_BYTES * self._threads if self._threads > 1 else CHUNK_CHARS

    def _window(self, rows: int) -> int:
        """Bytes to look at for the next ``rows`` plain lines: a tenth more than the last chunk's took."""
        if self._line_bytes is None:
            return PLAIN_BYTES
        return min(CHUNK_CHARS, int(rows * self._line_bytes * 1.1) + 4096)

    def _checked_block(self, block: bytes, rows: int) -> Chunk:
        """A plain block with some row off, read row by row so that each bad one is named."""
        texts = block.splitlines(keepends=True)[:rows]
        first = self._lines.number + 1
        self._lines.consume(sum(map(len, texts)), len(texts))
        records = [self._record(Line(first + i, text.decode("ascii"))) for i, text in enumerate(texts)]
        kept = [r for r in records if r is not None]  # a blank line is no row
        return self._cells_chunk([r.line for r in kept], [r.raw for r in kept], {})

    def _slow_chunk(self, rows: int) -> Chunk | None:
        """Records read line by line (quoted, oversized, not ASCII, blank lines...) until a plain
        stretch begins again, ``rows`` are read or the chunk is CHUNK_CHARS long."""
        lines = self._lines
        numbers: list[int] = []
        raws: list[str] = []
        special: dict[int, Record] = {}  # records quoted or refused, by index in the chunk
        size = 0
        while len(raws) < rows and size < CHUNK_CHARS:
            text = lines.read()
            if not text:
                break
            record = self._record(lines.line(text))
            if record is not None:
                if not record.plain:
                    special[len(raws)] = record
                numbers.append(record.line)
                raws.append(record.raw)
                size += len(record.raw)
            if self._all_numeric and raws and lines.plain_ahead():
                break
        if not raws:
            return None
        if self._all_numeric and not special:
            block = "".join(raw + "\n" for raw in raws).encode("utf-8", "surrogateescape")
            parsed = self._parse(block, len(raws))
            if parsed is not None:
                return Chunk(line_numbers=numbers, raw=raws, numbers=parsed, cells=[None] * len(raws),
                             errors=[None] * len(raws))
        return self._cells_chunk(numbers, raws, special)

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

    def _cells_chunk(self, numbers: list[int], raws: list[str], special: dict[int, Record]) -> Chunk:
        """Records checked one by one: each bad one named with its reason."""
        chunk = Chunk(line_numbers=numbers, raw=raws)
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

    def _parse(self, block: bytes | memoryview, rows: int) -> np.ndarray | None:
        """Every record of ``block`` (``rows`` lines, unquoted) as float64 in one call; None if any row is
        off (a cell that is not a plain number, a row of another width, a missing marker): the records
        are then read one by one, and each bad one named."""
        if self._numeric_markers:
            return None  # a marker such as -999 must be read as null: cell by cell
        parsed = self._parse_arrow(block) if _arrow_csv() is not None else self._parse_numpy(block)
        if parsed is None or parsed.shape != (rows, len(self._positions)) or not np.isfinite(parsed).all():
            return None  # NaN and infinity have many spellings: the exact reader names them
        return parsed

    def _parse_arrow(self, block: bytes | memoryview) -> np.ndarray | None:
        import pyarrow as pa

        pa_csv = _arrow_csv()
        names = [f.name for f in self._features]
        try:
            table = pa_csv.read_csv(
                pa.py_buffer(block),
                read_options=pa_csv.ReadOptions(column_names=self.header, use_threads=self._threads > 1,
                                                block_size=(PLAIN_BYTES if self._threads > 1 else len(block)) + 1),
                parse_options=pa_csv.ParseOptions(quote_char=False, ignore_empty_lines=False),
                convert_options=pa_csv.ConvertOptions(include_columns=names,
                                                      column_types={n: pa.float64() for n in names},
                                                      null_values=[], strings_can_be_null=False),
                memory_pool=pa.system_memory_pool())  # freed at once: no per-thread heap kept
        except pa.ArrowException:
            return None
        parsed = np.empty((table.num_rows, len(names)), dtype=np.float64)
        for j, name in enumerate(names):
            row = 0
            for values in table.column(name).chunks:  # read from the buffer: to_numpy would import pandas
                parsed[row:row + len(values), j] = np.frombuffer(values.buffers()[1], dtype=np.float64,
                                                                 count=len(values), offset=8 * values.offset)
                row += len(values)
        return parsed

    def _parse_numpy(self, block: bytes | memoryview) -> np.ndarray | None:
        """The reader without pyarrow (a runtime that lacks it): numpy's loadtxt, slower."""
        texts = [t.decode("utf-8", "surrogateescape") for t in bytes(block).splitlines()]
        if not all(t and not t.isspace() for t in texts):
            return None  # a blank line is no row: counted line by line
        exact = self._positions == list(range(len(self.header)))  # then loadtxt refuses rows of another width
        if not (exact or all(t.count(",") == len(self.header) - 1 for t in texts)):
            return None
        try:
            return np.loadtxt(texts, delimiter=",", dtype=np.float64, ndmin=2, comments=None,
                              usecols=None if exact else self._positions)
        except ValueError:
            return None

    def _cells(self, fields: list[str]) -> tuple[list[Any] | None, str | None]:
        if len(fields) != len(self.header):
            return None, f"wrong_length: row has {len(fields)} fields; the header has {len(self.header)}"
        return cells_from_text(self._features, [fields[pos] for pos in self._positions], self._missing)


def markers_set(missing_markers: Collection[str]) -> frozenset[str]:
    """The text cells read as missing (compared stripped): the given markers and the empty cell."""
    return frozenset(m.strip() for m in missing_markers) | {""}


def _is_number(text: str) -> bool:
    """Whether ``text`` reads as a finite number (a marker such as NaN is caught as non-finite anyway)."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


@functools.cache
def _arrow_csv() -> Any:
    """pyarrow's CSV module, or None where it is not installed (the batch functions always have it)."""
    try:
        import pyarrow.csv as pa_csv
    except ImportError:
        return None
    return pa_csv


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
