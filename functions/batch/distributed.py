"""Files too big for one function: Step Functions Distributed Map over the CSV's rows.

The state machine reads the CSV with its S3 item reader, hands batches of rows to
``score_items`` (the same validation and scoring as a whole-file run), then ``finalize`` sums
the parts into one manifest. Part names derive from the batch content, so a retried batch
overwrites its own part instead of adding one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..common import aws, layout
from ..common.bundle import Model
from ..common.errors import WriteConflict
from ..common.tabular import Chunk, cells_from_text, markers_set
from .models import Scorer
from .scoring import Source, Store, already_done, csv_suffixes, manifest_key, now_iso, score_chunk, source_dict


class RunInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None
    size: int | None = None
    sequencer: str | None = None
    run_id: str
    # The bundle chosen when the run started: every chunk and the manifest use it, whatever the registry says later.
    model_uri: str | None = None
    model_manifest_sha256: str | None = None
    model_role: str | None = None

    def source(self) -> Source:
        return Source(self.bucket, self.key, self.version_id, self.etag, self.size, self.sequencer)


class BatchInput(BaseModel):
    """One chunk's copy of the run's input: the fields of MAP_BATCH_INPUT."""

    model_config = ConfigDict(extra="ignore")

    bucket: str
    key: str
    version_id: str | None = None
    run_id: str
    model_uri: str | None = None
    model_manifest_sha256: str | None = None


class ItemBatch(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    items: list[dict[str, str]] = Field(alias="Items", min_length=1)
    batch_input: BatchInput = Field(alias="BatchInput")


def start(sfn: Any, state_machine_arn: str, store: Store, source: Source, scorer: Scorer) -> dict[str, Any]:
    """Start (once) the map run for ``source`` pinned to ``scorer``'s bundle; the execution name is the
    run id, so a redelivered message finds the execution already there instead of starting a second one."""
    if already_done(store, source) is not None:
        return {"status": "duplicate"}
    run = {**source_dict(source), "run_id": source.run_id, **scorer.run_input()}
    try:
        with aws.translated(f"starting the map run {source.run_id}"):
            sfn.start_execution(stateMachineArn=state_machine_arn, name=source.run_id, input=json.dumps(run))
    except WriteConflict:
        return {"status": "already_started", "run_id": source.run_id}
    return {"status": "started", "run_id": source.run_id}


def part_id(items: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:20]


def score_items(model: Model, store: Store, batch: ItemBatch) -> dict[str, Any]:
    features = model.manifest.features
    markers = markers_set(model.manifest.missing_markers)
    columns = list(batch.items[0])
    chunk = Chunk(line_numbers=list(range(1, len(batch.items) + 1)), raw=batch.items)
    for item in batch.items:
        missing = [f.name for f in features if f.name not in item]
        if missing:
            chunk.cells.append(None)
            chunk.errors.append(f"missing_feature: feature {missing[0]!r} is missing")
        else:
            cells, error = cells_from_text(features, [item[f.name] for f in features], markers)
            chunk.cells.append(cells)
            chunk.errors.append(error)
    result = score_chunk(model, chunk)
    pid = part_id(batch.items)
    prefix = layout.run_prefix(batch.batch_input.run_id)
    classes = model.manifest.classes or []
    scored_key, rejected_key = f"{prefix}/scored/part-{pid}.csv", f"{prefix}/rejected/part-{pid}.jsonl"

    scored = io.StringIO()
    writer = csv.writer(scored, lineterminator="\n")
    writer.writerow([*columns, "prediction", *(f"probability_{c}" for c in classes)])
    for i, suffix in zip(result.good.tolist(), csv_suffixes(result.predictions, result.probabilities), strict=True):
        writer.writerow([batch.items[i].get(c, "") for c in columns] + next(csv.reader([suffix])))
    rejected = "".join(json.dumps({"part": pid, "item": i + 1, "reason": reason, "row": batch.items[i]}) + "\n"
                       for i, reason in sorted(result.rejected.items()))
    outputs = {}
    for key, text in ((scored_key, scored.getvalue()), (rejected_key, rejected)):
        sink = store.sink(key)
        sink.write(text.encode())
        outputs[key] = sink.commit()
    summary = {"part": pid, "model": {"name": model.manifest.name, "version": model.version},
               "rows": {"in": len(batch.items), "scored": len(result.good), "rejected": len(result.rejected)},
               "scored": {"key": scored_key, **outputs[scored_key]},
               "rejected": {"key": rejected_key, **outputs[rejected_key]}}
    store.put_json(f"{prefix}/parts/{pid}.json", summary)
    return summary


def finalize(store: Store, run: RunInput, scorer: Scorer) -> dict[str, Any]:
    """Sum the parts of a finished map run into the single run manifest (written last)."""
    clock = time.perf_counter()
    parts = [store.read_json(key) or {} for key in store.list_keys(layout.run_parts_prefix(run.run_id))]
    rows = {k: sum(p["rows"][k] for p in parts) for k in ("in", "scored", "rejected")}
    manifest = {"run_id": run.run_id, "source": source_dict(run.source()), "status": "complete",
                "format": "csv", "compression": None, "mode": "distributed_map",
                "model": scorer.describe(),
                "rows": rows, "parts": len(parts),
                "outputs": {"scored_parts": sorted((p["scored"] for p in parts), key=lambda o: o["key"]),
                            "rejected_parts": sorted((p["rejected"] for p in parts), key=lambda o: o["key"])},
                "finished_at": now_iso(), "seconds": round(time.perf_counter() - clock, 3)}
    store.put_json(manifest_key(run.source()), manifest)
    return manifest
