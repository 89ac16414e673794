"""Score one file: stream it in chunks, write scored and rejected rows, commit a manifest last.

The invariant ``rows in == scored + rejected`` holds for every run, and every rejected row
carries its line number and the reason. Outputs are written through sinks that publish nothing
until committed, and the manifest (the commit marker) is written last: a crash mid-file leaves
no half-written output, and a retry of the same file version redoes the work from scratch.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import numpy as np

from ..common import layout
from ..common.bundle import Model
from ..common.errors import AwsError, InvalidInput, clip
from ..common.holder import Log
from ..common.tabular import Chunk, FileFormat, Reader, WholeFileRejected, open_records

_log = logging.getLogger(__name__)


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...
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
        # One chunk in flight: onnxruntime (which releases the GIL) scores chunk k while this
        # thread parses chunk k+1 and writes chunk k-1. Memory stays bounded to a few chunks.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="slimserve-score") as pool:
            pending: tuple[Chunk, Future[ChunkResult]] | None = None
            for chunk in reader.chunks(chunk_rows):
                job = pool.submit(score_chunk, model, chunk)
                if pending is not None:
                    writer.write_chunk(pending[0], pending[1].result(), counts)
                pending = (chunk, job)
            if pending is not None:
                writer.write_chunk(pending[0], pending[1].result(), counts)
        if counts.rows_in == 0:
            raise WholeFileRejected("file has a header but no rows", code="empty_file")
        return writer.commit(counts), counts
    except BaseException:
        writer.abort()
        raise


@dataclass
class ChunkResult:
    good: np.ndarray  # indexes of scored records, in order
    predictions: np.ndarray
    probabilities: np.ndarray | None
    rejected: dict[int, str] = field(default_factory=dict)  # record index -> reason


def score_chunk(model: Model, chunk: Chunk) -> ChunkResult:
    """Validate every record against the model's schema and score the good ones in one call."""
    rejected = {i: e for i, e in enumerate(chunk.errors) if e is not None}
    if chunk.numbers is not None:
        rejected.update(model.schema.matrix_problems(chunk.numbers))
        keep = np.ones(len(chunk), dtype=bool)
        keep[list(rejected)] = False
        good = np.flatnonzero(keep)
        feeds = model.schema.feeds_from_matrix(chunk.numbers[good])
    else:
        good, rows = _valid_rows(model, chunk, rejected)
        feeds = model.schema.to_feeds(rows) if len(good) else {}
    if len(good) == 0:
        return ChunkResult(good, np.array([]), None, rejected)
    predictions, proba = model.score(feeds)
    return ChunkResult(good, predictions, proba, rejected)


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

    def write_chunk(self, chunk: Chunk, result: ChunkResult, counts: Counts) -> None:
        counts.rows_in += len(chunk)
        counts.scored += len(result.good)
        counts.rejected += len(result.rejected)
        if len(result.good):
            self._write_scored(chunk, result)
        for i in sorted(result.rejected):
            self._write_rejected(chunk.line_numbers[i], result.rejected[i], chunk.record(i))

    def _write_scored(self, chunk: Chunk, result: ChunkResult) -> None:
        preds, proba = result.predictions, result.probabilities
        if self.fmt.kind == "csv":
            self.scored.write(scored_csv(chunk, result))
        elif self.fmt.kind == "jsonl":
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


def scored_csv(chunk: Chunk, result: ChunkResult) -> bytes:
    """The scored records of a CSV chunk, each its own text with the answer appended, in one
    vectorised pass: no Python object per row where the chunk came as one plain block."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if chunk.block is not None and not chunk.raw:
        lines = pc.split_pattern(pa.array([chunk.block], pa.binary()), b"\n").flatten()[: len(chunk)]
        lines = lines.cast(pa.string())  # a plain block is ASCII
        if b"\r" in chunk.block:
            lines = pc.ascii_rtrim(lines, "\r")
        if len(result.good) < len(chunk):
            lines = lines.take(pa.array(result.good))
    else:
        lines = pa.array([chunk.raw[i] for i in result.good.tolist()], pa.string())
    row = pc.binary_join_element_wise(lines, *suffix_columns(result.predictions, result.probabilities), ",")
    return _concatenated(pc.binary_join_element_wise(row, "", "\n"))


def suffix_columns(preds: np.ndarray, proba: np.ndarray | None) -> list[Any]:
    """The answer's CSV columns as text arrays: the label, then each class's probability written as
    the shortest text that reads back as the model's own (float32) value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if preds.dtype.kind == "f":
        labels = pa.array([repr(p) for p in preds.tolist()], pa.string())  # regression: shortest exact text
    else:
        labels = _arrow(preds) if preds.dtype.kind in "iu" else pa.array(preds.tolist())  # integers or text
        if not pa.types.is_string(labels.type):
            labels = labels.cast(pa.string())
        elif any(_csv_escape(c) != c for c in pc.unique(labels).to_pylist()):
            labels = pa.array([_csv_escape(c) for c in labels.to_pylist()], pa.string())
    if proba is None:
        return [labels]
    narrow = proba.astype(np.float32)
    if np.array_equal(narrow, proba):  # the model's float32 values, widened: their own shortest text
        proba = narrow
    return [labels, *(_arrow(proba[:, j]).cast(pa.string()) for j in range(proba.shape[1]))]


def _arrow(values: np.ndarray) -> Any:
    """A numeric numpy column as an Arrow array, built on its buffer (pa.array would import pandas)."""
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def csv_suffixes(preds: np.ndarray, proba: np.ndarray | None) -> list[str]:
    """The text appended to each scored CSV record (the prediction, then the probabilities)."""
    columns = [c.to_pylist() for c in suffix_columns(preds, proba)]
    return [",".join(parts) for parts in zip(*columns, strict=True)]


def _concatenated(text: Any) -> bytes:
    """A freshly computed Arrow string array's values back to back, as bytes."""
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32, count=len(text) + 1, offset=4 * text.offset)
    return memoryview(text.buffers()[2])[int(offsets[0]):int(offsets[-1])].tobytes()


def _csv_escape(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text


class _GzipSink:
    def __init__(self, inner: Sink) -> None:
        import zlib

        self._inner = inner
        self._zip = zlib.compressobj(6, zlib.DEFLATED, 31)

    def write(self, data: bytes) -> None:
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

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        self.bytes += len(data)

    def summary(self) -> dict[str, Any]:
        return {"sha256": self.sha256.hexdigest(), "bytes": self.bytes}


def source_dict(source: Source) -> dict[str, Any]:
    return {"bucket": source.bucket, "key": source.key, "version_id": source.version_id, "etag": source.etag,
            "size": source.size, "sequencer": source.sequencer}


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
