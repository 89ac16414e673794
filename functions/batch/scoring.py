"""Score one file: stream it in chunks, write scored and rejected rows, commit a manifest last.

The invariant ``rows in == scored + rejected`` holds for every run, and every rejected row
carries its line number and the reason. Outputs are written through sinks that publish nothing
until committed, and the manifest (the commit marker) is written last: a crash mid-file leaves
no half-written output, and a retry of the same file version redoes the work from scratch.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import io
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import numpy as np
import pyarrow.compute  # every CSV or Parquet file needs pyarrow: loaded at init, not in a file's time
import pyarrow.csv  # noqa: F401 - as above (the CSV reader takes it from sys.modules)

from ..common import layout
from ..common.bundle import Model, first_max
from ..common.errors import AwsError, InvalidInput, clip
from ..common.holder import Log
from ..common.tabular import Chunk, CsvReader, FileFormat, Reader, WholeFileRejected, cpus, line_ends, open_records

_log = logging.getLogger(__name__)


class Sink(Protocol):
    def write(self, data: bytes | memoryview) -> None: ...
    def commit(self) -> dict[str, Any]: ...
    def abort(self) -> None: ...


class Store(Protocol):
    """Where files come from and go to: a local folder or an S3 bucket."""

    def sink(self, key: str) -> Sink: ...
    def read_json(self, key: str) -> dict[str, Any] | None: ...
    def put_json(self, key: str, body: dict[str, Any]) -> None: ...
    def list_keys(self, prefix: str) -> list[str]: ...


@dataclass(frozen=True)
class Source:
    """The file version being scored: what identifies the work for idempotency."""

    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None
    size: int | None = None
    sequencer: str | None = None

    @property
    def run_id(self) -> str:
        ident = json.dumps([self.bucket, self.key, self.version_id, self.etag])
        return hashlib.sha256(ident.encode()).hexdigest()[:24]

    @property
    def relative_key(self) -> str:
        return layout.relative_key(self.key)


@dataclass
class Counts:
    rows_in: int = 0
    scored: int = 0
    rejected: int = 0


@dataclass
class RunResult:
    manifest: dict[str, Any]
    skipped: bool = False


def manifest_key(source: Source) -> str:
    return layout.manifest_key(source.key)


def already_done(store: Store, source: Source) -> dict[str, Any] | None:
    """The committed manifest if this version (or a newer one) was already scored; a manifest that
    cannot be read commits nothing, so the file is scored again and the manifest rewritten."""
    try:
        existing = store.read_json(manifest_key(source))
    except ValueError:
        return None
    if not isinstance(existing, dict):
        return None
    if existing.get("run_id") == source.run_id:
        return existing
    newer = existing.get("source", {}).get("sequencer")
    if newer and source.sequencer and _sequencer_order(newer) > _sequencer_order(source.sequencer):
        return existing  # an older version's event arrived late: the newer result stands
    return None


def _sequencer_order(sequencer: str) -> tuple[int, str]:
    return len(sequencer.lstrip("0")), sequencer.lstrip("0")


def score_file(model: Model, store: Store, source: Source, stream: IO[bytes], *, chunk_rows: int = 5000,
               max_file_bytes: int | None = None, logger: Log = _log, model_role: str = "pinned") -> RunResult:
    """Score ``stream`` (the content of ``source``) into ``store``; idempotent per file version.

    Every file ends with a manifest, whatever its content: a whole-file problem, or an error nobody
    foresaw (code ``internal_error``, its detail in the log), is a rejected manifest. Only a failure
    of the store itself (AwsError) leaves without one, so that the message is delivered again.
    The manifest's ``model`` names the version and its ``model_role`` (champion, or pinned).
    """
    done = already_done(store, source)
    if done is not None:
        return RunResult(done, skipped=True)
    started, clock = now_iso(), time.perf_counter()
    base = {"run_id": source.run_id, "source": source_dict(source), "started_at": started,
            "model": {"name": model.manifest.name, "version": model.version, "role": model_role}}
    try:
        fmt = FileFormat.from_key(source.key)
        if max_file_bytes is not None and source.size is not None and source.size > max_file_bytes:
            raise WholeFileRejected(f"file is {source.size} bytes; the limit is {max_file_bytes}",
                                    code="file_too_large")
        outputs, counts = _score(model, store, source, fmt, stream, chunk_rows, max_file_bytes)
    except WholeFileRejected as exc:
        manifest: dict[str, Any] = rejected_manifest(base, exc.code, exc.message)
    except (AwsError, MemoryError):
        raise  # the store, the source or the process failed, not the file: no manifest, so a retry scores it
    except Exception as exc:
        logger.error("scoring failed unexpectedly", exc_info=True, extra={"key": source.key, "run_id": source.run_id})
        detail = f"scoring failed unexpectedly ({clip(type(exc).__name__, 60)}); the function's log has the detail"
        manifest = rejected_manifest(base, "internal_error", detail)
    else:
        manifest = {**base, "status": "complete", "format": fmt.kind, "compression": "gzip" if fmt.gzip else None,
                    "rows": {"in": counts.rows_in, "scored": counts.scored, "rejected": counts.rejected},
                    "outputs": outputs}
    manifest["finished_at"] = now_iso()
    manifest["seconds"] = round(time.perf_counter() - clock, 3)
    store.put_json(manifest_key(source), manifest)
    return RunResult(manifest)


def rejected_manifest(base: dict[str, Any], code: str, message: str) -> dict[str, Any]:
    return {**base, "status": "rejected", "reason": {"code": code, "message": message},
            "rows": {"in": 0, "scored": 0, "rejected": 0}, "outputs": {}}


def _score(model: Model, store: Store, source: Source, fmt: FileFormat, stream: IO[bytes],
           chunk_rows: int, max_bytes: int | None) -> tuple[dict[str, Any], Counts]:
    with open_records(stream, fmt, model.manifest.features, max_bytes, model.manifest.missing_markers) as reader:
        return _score_records(model, store, source, fmt, reader, chunk_rows)


def _score_records(model: Model, store: Store, source: Source, fmt: FileFormat, reader: Reader,
                   chunk_rows: int) -> tuple[dict[str, Any], Counts]:
    writer = OutputWriter(model, store, source, fmt, reader)
    try:
        counts = Counts()

        def scored(chunk: Chunk) -> Scored:
            result = score_chunk(model, chunk)
            return Scored(chunk, result, writer.scored_text(chunk, result))

        if cpus() > 1:
            _pipelined(reader.chunks(chunk_rows), scored, lambda done: writer.write_chunk(done, counts))
        else:  # each chunk written before the next is read: its text can stay where it was read
            chunks = reader.chunks(chunk_rows, in_place=True) if isinstance(reader, CsvReader) \
                else reader.chunks(chunk_rows)
            for chunk in chunks:
                writer.write_chunk(scored(chunk), counts)
        if counts.rows_in == 0:
            raise WholeFileRejected("file has a header but no rows", code="empty_file")
        return writer.commit(counts), counts
    except BaseException:
        writer.abort()
        raise


def _pipelined(chunks: Iterator[Chunk], score: Callable[[Chunk], Scored], write: Callable[[Scored], None],
               depth: int = 1) -> None:
    """Parse, score and write overlapped on three threads (pyarrow, onnxruntime, hashing and writing
    release the GIL); at most ``depth`` chunks wait at each step, so memory stays bounded. Chunks are
    written in the order read."""
    scoring = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimserve-score")
    writing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimserve-write")
    being_scored: deque[Future[Scored]] = deque()
    being_written: deque[Future[None]] = deque()
    try:
        for chunk in chunks:
            being_scored.append(scoring.submit(score, chunk))
            while len(being_scored) > depth or (being_scored and being_scored[0].done()):
                being_written.append(writing.submit(write, being_scored.popleft().result()))
            while len(being_written) > depth or (being_written and being_written[0].done()):
                being_written.popleft().result()
        while being_scored:
            being_written.append(writing.submit(write, being_scored.popleft().result()))
        while being_written:
            being_written.popleft().result()
    finally:
        scoring.shutdown(cancel_futures=True)
        writing.shutdown(cancel_futures=True)


@dataclass
class ChunkResult:
    good: np.ndarray  # indexes of scored records, in order
    predictions: np.ndarray
    probabilities: np.ndarray | None
    rejected: dict[int, str] = field(default_factory=dict)  # record index -> reason
    classes: list[Any] | None = None  # the model's classes, in the order of the probabilities' columns


@dataclass
class Scored:
    chunk: Chunk
    result: ChunkResult
    text: list[Any] | None  # the scored rows' CSV, formatted beside the scoring (None for other formats)


def score_chunk(model: Model, chunk: Chunk) -> ChunkResult:
    """Validate every record against the model's schema and score the good ones in one call."""
    if chunk.numbers is not None:  # every record read (parsed whole or not at all)
        rejected: dict[int, str] = {}
        rejected.update(model.schema.matrix_problems(chunk.numbers))
        keep = np.ones(len(chunk), dtype=bool)
        keep[list(rejected)] = False
        good = np.flatnonzero(keep) if rejected else np.arange(len(chunk))
        feeds = model.schema.feeds_from_matrix(chunk.numbers if len(good) == len(chunk) else chunk.numbers[good])
    else:
        rejected = {i: e for i, e in enumerate(chunk.errors) if e is not None}
        good, rows = _valid_rows(model, chunk, rejected)
        feeds = model.schema.to_feeds(rows) if len(good) else {}
    if len(good) == 0:
        return ChunkResult(good, np.array([]), None, rejected)
    predictions, proba = model.score(feeds)
    return ChunkResult(good, predictions, proba, rejected, model.manifest.classes)


def _valid_rows(model: Model, chunk: Chunk, rejected: dict[int, str]) -> tuple[np.ndarray, list[Any]]:
    candidates = [i for i in range(len(chunk)) if i not in rejected]
    rows = [chunk.cells[i] for i in candidates]
    try:
        model.schema.to_feeds(rows)  # the common case: every readable row is valid
        return np.array(candidates, dtype=np.int64), rows
    except InvalidInput:
        pass
    good, kept = [], []
    for i, row in zip(candidates, rows, strict=True):
        try:
            model.schema.to_feeds([row])
        except InvalidInput as exc:
            rejected[i] = f"{exc.code}: {exc.message}"
            continue
        good.append(i)
        kept.append(row)
    return np.array(good, dtype=np.int64), kept


# -- outputs ---------------------------------------------------------------------------------------

class OutputWriter:
    """Scored rows in the input's own format (columns kept, predictions appended); rejected rows
    with their line number and reason (CSV for CSV input, JSON Lines otherwise)."""

    def __init__(self, model: Model, store: Store, source: Source, fmt: FileFormat, reader: Any) -> None:
        self.fmt = fmt
        self.classes = model.manifest.classes
        self.scored_key = layout.scored_key(source.key)
        self.rejected_key = layout.rejected_key(source.key, fmt.kind)
        self.scored = _maybe_gzip(store.sink(self.scored_key), fmt.gzip)
        self.rejected = _maybe_gzip(store.sink(self.rejected_key), fmt.gzip and fmt.kind != "parquet")
        self.reader = reader
        self.extra_columns = ["prediction"] + ([f"probability_{c}" for c in self.classes] if self.classes else [])
        self._parquet: Any = None
        if fmt.kind == "csv":
            self.scored.write(reader.header_line + ("," + ",".join(_csv_escape(c) for c in self.extra_columns))
                              .encode() + b"\n")
            self.rejected.write(b"line,reason,row\n")

    def scored_text(self, chunk: Chunk, result: ChunkResult) -> list[Any] | None:
        """A CSV chunk's scored rows, ready to write; depends on nothing written before."""
        return scored_csv(chunk, result) if self.fmt.kind == "csv" and len(result.good) else None

    def write_chunk(self, done: Scored, counts: Counts) -> None:
        chunk, result = done.chunk, done.result
        counts.rows_in += len(chunk)
        counts.scored += len(result.good)
        counts.rejected += len(result.rejected)
        if done.text is not None:
            for piece in done.text:
                self.scored.write(piece)
        elif len(result.good):
            self._write_scored(chunk, result)
        for i in sorted(result.rejected):
            self._write_rejected(chunk.line_numbers[i], result.rejected[i], chunk.record(i))

    def _write_scored(self, chunk: Chunk, result: ChunkResult) -> None:
        preds, proba = result.predictions, result.probabilities
        if self.fmt.kind == "jsonl":
            # The record's own text with the answer spliced before its closing brace: never parsed
            # or encoded again, so whatever the reader accepted is written back unchanged.
            lines = []
            for k, i in enumerate(result.good.tolist()):
                answer = {"prediction": preds[k].item() if isinstance(preds[k], np.generic) else preds[k]}
                if proba is not None and self.classes:
                    answer["probabilities"] = dict(zip(map(str, self.classes), proba[k].tolist(), strict=True))
                lines.append(f"{chunk.raw[i][:-1].rstrip()}, {json.dumps(answer)[1:]}")
            self.scored.write(("\n".join(lines) + "\n").encode("utf-8"))
        else:
            self._write_parquet([chunk.raw[i] for i in result.good.tolist()], preds, proba)

    def _write_parquet(self, records: list[dict[str, Any]], preds: np.ndarray, proba: np.ndarray | None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(records, schema=self.reader.schema)  # a column null in one chunk keeps its type
        table = table.append_column("prediction", pa.array(preds.tolist()))
        if proba is not None and self.classes:
            for j, c in enumerate(self.classes):
                table = table.append_column(f"probability_{c}", pa.array(proba[:, j]))
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(_SinkFile(self.scored), table.schema)
        self._parquet.write_table(table)

    def _write_rejected(self, line: int, reason: str, raw: Any) -> None:
        if self.fmt.kind == "csv":
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerow([line, reason, raw])
            self.rejected.write(buffer.getvalue().encode("utf-8"))
        else:
            self.rejected.write((json.dumps({"line": line, "reason": reason, "row": raw}, default=str) + "\n")
                                .encode("utf-8"))

    def commit(self, counts: Counts) -> dict[str, Any]:
        if self.fmt.kind == "parquet" and self._parquet is None:  # no row scored: still a readable file
            self._write_parquet([], np.array([], dtype=object), None)
        if self._parquet is not None:
            self._parquet.close()
        return {"scored": {"key": self.scored_key, **self.scored.commit()},
                "rejected": {"key": self.rejected_key, **self.rejected.commit()}}

    def abort(self) -> None:
        for sink in (self.scored, self.rejected):
            sink.abort()


def scored_csv(chunk: Chunk, result: ChunkResult) -> list[Any]:
    """The scored records of a CSV chunk, each its own text with the answer appended, as buffers to
    write in turn: built by Arrow kernels over the input's own bytes, no Python object per row."""
    columns = suffix_columns(result.predictions, result.probabilities, result.classes)
    count, block = len(result.good), chunk.block
    if block is not None and count == len(chunk) and not chunk.crlf:
        # Record i as the text between the newlines before and after it (the first has none before):
        # joined to its answer, the rows come out back to back, the input never copied first.
        offsets = np.concatenate(([0], _ends(chunk, block))).astype(np.int32)
        return [_values(_joined(_strings(count, offsets, block), *columns, separator=",")), b"\n"]
    if block is not None:
        lines = _strings(len(chunk), np.concatenate(([0], _ends(chunk, block) + 1)).astype(np.int32), block)
        lines = _arrow().pc.utf8_rtrim(_take(lines, result.good), characters="\r\n", memory_pool=_arrow().pool)
    else:
        lines = _text([chunk.raw[i] for i in result.good.tolist()])
    columns[-1] = _joined(columns[-1], _strings(count, np.arange(count + 1, dtype=np.int32), b"\n" * count),
                          separator="")
    return [_values(_joined(lines, *columns, separator=","))]


def _ends(chunk: Chunk, block: bytes | memoryview) -> np.ndarray:
    return chunk.ends if chunk.ends is not None else line_ends(block)[: len(chunk)]


def suffix_columns(preds: np.ndarray, proba: np.ndarray | None, classes: list[Any] | None = None) -> list[Any]:
    """The answer's CSV columns as text arrays: the label, then each class's probability written as
    the shortest text that reads back as the model's own (float32) value."""
    if classes and proba is not None and len(preds):  # the label is the class scoring chose: written by its index
        labels = _take(_text([_csv_escape(str(c)) for c in classes]), first_max(proba))
    elif preds.dtype.kind == "f":
        labels = _text([repr(p) for p in preds.tolist()])  # regression: shortest exact text
    elif preds.dtype.kind in "iu":
        labels = _as_text(_numeric(preds))
    else:  # the manifest's classes (text, or numbers held as objects): each distinct one written once
        values = preds.tolist()
        position = {v: i for i, v in enumerate(dict.fromkeys(values))}
        index = np.fromiter(map(position.__getitem__, values), dtype=np.int64, count=len(values))
        labels = _take(_text([_csv_escape(str(v)) for v in position]), index)
    if proba is None:
        return [labels]
    narrow = proba.astype(np.float32)
    if np.array_equal(narrow, proba):  # the model's float32 values, widened: their own shortest text
        proba = narrow
    return [labels, *(_as_text(_numeric(proba[:, j])) for j in range(proba.shape[1]))]


@dataclass(frozen=True)
class _Arrow:
    pa: Any
    pc: Any
    pool: Any  # the C allocator's pool: with a thread per step, mimalloc's per-thread heaps held ~10 MiB more


@functools.cache
def _arrow() -> _Arrow:
    import pyarrow as pa
    import pyarrow.compute as pc

    return _Arrow(pa, pc, pa.system_memory_pool())


# Arrow arrays are built on buffers here: pa.array and pa.scalar import pandas (+70 MiB, ~0.5 s).
def _numeric(values: np.ndarray) -> Any:
    """A numeric numpy column as an Arrow array on its own buffer."""
    pa = _arrow().pa
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _strings(count: int, offsets: np.ndarray, data: bytes | memoryview) -> Any:
    """An Arrow string array whose item i is ``data[offsets[i]:offsets[i + 1]]`` (UTF-8 already)."""
    pa = _arrow().pa
    return pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _text(texts: list[str]) -> Any:
    """Python strings as an Arrow string array."""
    data = [t.encode("utf-8") for t in texts]
    offsets = np.zeros(len(data) + 1, dtype=np.int32)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    return _strings(len(data), offsets, b"".join(data))


def _as_text(values: Any) -> Any:
    arrow = _arrow()
    return values.cast(arrow.pa.string(), memory_pool=arrow.pool)


def _take(values: Any, index: np.ndarray) -> Any:
    arrow = _arrow()
    return arrow.pc.take(values, _numeric(index), memory_pool=arrow.pool)


def _joined(*columns: Any, separator: str) -> Any:
    """Each row's texts joined with ``separator``."""
    arrow = _arrow()
    return arrow.pc.binary_join_element_wise(*columns, _text([separator])[0], memory_pool=arrow.pool)


def _values(text: Any) -> memoryview:
    """A freshly computed Arrow string array's values back to back (a view of its buffer)."""
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32, count=len(text) + 1, offset=4 * text.offset)
    return memoryview(text.buffers()[2])[int(offsets[0]):int(offsets[-1])]


def csv_suffixes(preds: np.ndarray, proba: np.ndarray | None) -> list[str]:
    """The text appended to each scored CSV record (the prediction, then the probabilities)."""
    columns = [c.to_pylist() for c in suffix_columns(preds, proba)]
    return [",".join(parts) for parts in zip(*columns, strict=True)]


def _csv_escape(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text


class _GzipSink:
    def __init__(self, inner: Sink) -> None:
        import zlib

        self._inner = inner
        self._zip = zlib.compressobj(6, zlib.DEFLATED, 31)

    def write(self, data: bytes | memoryview) -> None:
        out = self._zip.compress(data)
        if out:
            self._inner.write(out)

    def commit(self) -> dict[str, Any]:
        self._inner.write(self._zip.flush())
        return self._inner.commit()

    def abort(self) -> None:
        self._inner.abort()


def _maybe_gzip(sink: Sink, gz: bool) -> Sink:
    return _GzipSink(sink) if gz else sink


class _SinkFile(io.RawIOBase):
    """A write-only file over a sink, for pyarrow's ParquetWriter."""

    def __init__(self, sink: Sink) -> None:
        self._sink, self._pos = sink, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._sink.write(chunk)
        self._pos += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._pos


class HashingBuffer:
    """Counts and hashes what goes through, so manifests can carry output checksums."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def update(self, data: bytes | memoryview) -> None:
        self.sha256.update(data)
        self.bytes += len(data)

    def summary(self) -> dict[str, Any]:
        return {"sha256": self.sha256.hexdigest(), "bytes": self.bytes}


def source_dict(source: Source) -> dict[str, Any]:
    return {"bucket": source.bucket, "key": source.key, "version_id": source.version_id, "etag": source.etag,
            "size": source.size, "sequencer": source.sequencer}


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
