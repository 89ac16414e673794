"""Import check of the parquet layer over the runtime layer, as the batch functions see them, run by
the layer build in a fresh python3.12 (function code, runtime layer, parquet layer, stdlib, runtime
SDK stand-ins).

pyarrow writes and reads Parquet with every codec, the trimmed modules are gone, and the
repository's functions.common.tabular.ParquetReader and scoring.OutputWriter read and write Parquet.
"""

import contextlib
import importlib
import importlib.util
import os
from typing import Any

from _harness import absent, cfg, check, finish, result, timed


def use_numpy_from_runtime_layer() -> None:
    np = timed("import numpy (runtime layer)", lambda: importlib.import_module("numpy"))
    result["versions"]["numpy"] = np.__version__
    timed("import pyarrow.parquet", lambda: importlib.import_module("pyarrow.parquet"))
    import pyarrow as pa
    result["versions"]["pyarrow"] = pa.__version__
    values = np.array([0.5, -1.0, 2.25])
    assert pa.array(values).to_numpy().tolist() == values.tolist()  # numpy <-> Arrow, as _write_parquet does


def parquet_round_trip() -> dict[str, Any]:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    records = [{"id": i, "x": None if i == 2 else i / 4, "label": f"row {i}", "flag": i % 2 == 0} for i in range(5)]
    table = pa.Table.from_pylist(records)
    sizes = {}
    for codec in ("snappy", "zstd", "gzip", "lz4", "brotli", "none"):
        buffer = io.BytesIO()
        writer = pq.ParquetWriter(buffer, table.schema, compression=codec)
        writer.write_table(table.slice(0, 3))  # two row groups
        writer.write_table(table.slice(3))
        writer.close()
        sizes[codec] = buffer.tell()
        parquet = pq.ParquetFile(io.BytesIO(buffer.getvalue()))
        assert parquet.metadata.num_rows == 5 and parquet.metadata.num_row_groups == 2, codec
        assert parquet.schema_arrow.names == ["id", "x", "label", "flag"], codec
        back = [r for batch in parquet.iter_batches(batch_size=2) for r in batch.to_pylist()]
        assert back == records, (codec, back)
    return {"bytes_by_codec": sizes}


def trimmed_parts_absent() -> dict[str, Any]:
    import pyarrow.fs
    present = [m for m in cfg["trimmed_modules"] if importlib.util.find_spec(m) is not None]
    assert not present, f"trimmed but importable: {present}"
    assert isinstance(pyarrow.fs.LocalFileSystem(), pyarrow.fs.FileSystem)
    if "pyarrow._s3fs" in cfg["trimmed_modules"]:
        s3 = None
        with contextlib.suppress(ImportError):
            s3 = pyarrow.fs.S3FileSystem
        assert s3 is None, "pyarrow.fs.S3FileSystem is still available"
    return {"not_importable": cfg["trimmed_modules"],
            "pyarrow.fs unavailable": sorted(getattr(pyarrow.fs, "_not_imported", []))}


def use_parquet_reader() -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    tabular = timed("import functions.common.tabular", lambda: importlib.import_module("functions.common.tabular"))
    from functions.common.manifest import Feature
    path = os.path.join(cfg["work"], "rows.parquet")
    pq.write_table(pa.table({"a": [1.5, None, 3.0], "b": [1, 2, 3], "note": ["x", "y", "z"]}), path)
    features = [Feature(name="a", type="number"), Feature(name="b", type="number")]
    reader = tabular.ParquetReader(path, features)
    chunks = list(reader.chunks(2))
    assert [c.line_numbers for c in chunks] == [[1, 2], [3]], [c.line_numbers for c in chunks]
    cells = [row for c in chunks for row in c.cells]
    assert cells == [[1.5, 1], [None, 2], [3.0, 3]], cells
    assert chunks[0].raw[0] == {"a": 1.5, "b": 1, "note": "x"}
    broken = os.path.join(cfg["work"], "broken.parquet")
    with open(broken, "wb") as f:
        f.write(b"PAR1 this is not parquet")
    try:
        tabular.ParquetReader(broken, features)
    except tabular.WholeFileRejected as exc:
        assert exc.code == "wrong_format", exc.code
    else:
        raise AssertionError("a corrupt file was accepted")
    return {"chunks": len(chunks), "columns": reader.columns}


class Sink:
    """An in-memory output sink with the commit/abort protocol scoring.OutputWriter writes through."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def commit(self) -> dict[str, int]:
        return {"bytes": len(self.data)}

    def abort(self) -> None:
        self.data.clear()


class Store:
    def __init__(self) -> None:
        self.sinks: dict[str, Sink] = {}

    def sink(self, key: str) -> Sink:
        return self.sinks.setdefault(key, Sink())


def use_scoring_parquet_output() -> dict[str, Any]:
    import io
    import types

    import numpy as np
    import pyarrow.parquet as pq
    scoring = timed("import functions.batch.scoring", lambda: importlib.import_module("functions.batch.scoring"))
    from functions.common.manifest import Feature
    from functions.common.tabular import FileFormat, ParquetReader

    path = os.path.join(cfg["work"], "rows.parquet")  # written by the ParquetReader check
    reader = ParquetReader(path, [Feature(name="a", type="number"), Feature(name="b", type="number")])
    (chunk,) = list(reader.chunks(10))
    model = types.SimpleNamespace(manifest=types.SimpleNamespace(classes=["no", "yes"]))
    source = scoring.Source(bucket="bucket", key="incoming/rows.parquet")
    store = Store()
    writer = scoring.OutputWriter(model, store, source, FileFormat.from_key(source.key), reader)
    chunk_result = scoring.ChunkResult(good=np.array([0, 2]), predictions=np.array(["no", "yes"]),
                                       probabilities=np.array([[0.75, 0.25], [0.125, 0.875]]), rejected={1: "null"})
    counts = scoring.Counts()
    writer.write_chunk(scoring.Scored(chunk, chunk_result, writer.scored_text(chunk, chunk_result)), counts)
    writer.commit(counts)
    scored = pq.ParquetFile(io.BytesIO(bytes(store.sinks[writer.scored_key].data)))
    names = scored.schema_arrow.names
    assert names == ["a", "b", "note", "prediction", "probability_no", "probability_yes"], names
    rows = scored.read().to_pylist()
    assert [r["prediction"] for r in rows] == ["no", "yes"] and rows[1]["probability_yes"] == 0.875, rows
    return {"scored_columns": names, "scored_bytes": len(store.sinks[writer.scored_key].data)}


def layers_in_place() -> None:
    import numpy
    import pyarrow
    here = {"numpy": numpy.__file__, "pyarrow": pyarrow.__file__}
    assert here["numpy"].startswith(cfg["below"]["runtime_layer"] + os.sep), here
    assert here["pyarrow"].startswith(cfg["layer"] + os.sep), here


check("forbidden packages absent", absent)
check("numpy (runtime layer) and pyarrow", use_numpy_from_runtime_layer)
check("Parquet write/read round trip (BytesIO, all codecs)", parquet_round_trip)
check("trimmed modules absent, pyarrow.fs works", trimmed_parts_absent)
check("functions.common.tabular ParquetReader", use_parquet_reader)
check("functions.batch.scoring OutputWriter (Parquet out)", use_scoring_parquet_output)
check("numpy from the runtime layer, pyarrow from this one", layers_in_place)
finish()
