"""The gate's logic: score the holdout with the candidate, the champion and a trivial baseline
(onnxruntime and numpy only), then admit the candidate only if every check passes.

Every refusal has its own reason code: holdout_empty, holdout_mislabelled, bundle_invalid,
incompatible_schema, not_better_than_baseline, worse_than_champion, worse_on_slice,
parity_failed, over_latency_budget, over_size_budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..common import metrics as m
from ..common.bundle import Model
from ..common.errors import InvalidInput, SlimserveError
from ..common.manifest import Feature, Manifest
from ..common.tabular import FileFormat, WholeFileRejected, open_records


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str | None = Field(default=None, description="holdout label column (default: the bundle's target)")
    primary_metric: str | None = Field(default=None, description="default roc_auc (binary), macro_f1, rmse")
    tolerance: float = Field(default=0.005, ge=0, description="how much worse than the champion is still fine")
    slices: list[str] = Field(default_factory=list, description="holdout columns to check slice by slice")
    min_slice_rows: int = Field(default=30, ge=1)
    max_parity_diff: float = Field(default=1e-4, gt=0)
    max_quantized_diff: float = Field(default=0.05, gt=0, description="an int8 bundle: max abs difference "
                                      "from the float graph it came from (its own parity)")
    min_quantized_agreement: float = Field(default=0.99, ge=0, le=1, description="an int8 bundle: share of "
                                           "labels it keeps from the float graph")
    latency_budget_ms: float = Field(default=100.0, gt=0, description="absolute p99 single-row ceiling, set far "
                                     "above machine noise; with a champion the relative rule decides")
    latency_ratio: float = Field(default=1.5, ge=1, description="candidate p99 may be this many times the "
                                 "champion's, both measured in the same run, interleaved")
    latency_slack_ms: float = Field(default=0.5, ge=0, description="added to the relative allowance: "
                                    "sub-millisecond timings differ by noise alone")
    size_budget_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    latency_samples: int = Field(default=300, ge=20)


@dataclass
class Holdout:
    """Rows hold the cells of ``columns``: the candidate's features, then any the champion reads besides."""

    rows: list[list[Any]]
    labels: np.ndarray
    slices: dict[str, np.ndarray] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)

    def rows_for(self, manifest: Manifest) -> list[list[Any]]:
        """The rows as ``manifest``'s model reads them: its own features, in its own order."""
        names = manifest.feature_names
        if not self.columns or names == self.columns:
            return self.rows
        at = [self.columns.index(n) for n in names]
        return [[r[j] for j in at] for r in self.rows]


class GateRefusal(SlimserveError):
    """The candidate is refused before every check could run; ``reason`` is the report's code."""

    status = 422
    code = "gate_refused"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail, code=reason)
        self.reason, self.detail = reason, detail


@dataclass
class Check:
    name: str
    passed: bool
    reason: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.name, "passed": self.passed, "reason": None if self.passed else self.reason,
                "detail": self.detail}


# -- holdout -----------------------------------------------------------------------------------------

def read_holdout(stream: IO[bytes], name: str, manifest: Manifest, config: GateConfig,
                 champion: Manifest | None = None) -> Holdout:
    """Rows (feature cells), labels and slice values from a CSV / JSON Lines / Parquet holdout.

    The rows hold every column the candidate or the champion reads: a candidate may read fewer."""
    target = config.target or manifest.target
    if not target:
        raise GateRefusal("holdout_mislabelled", "no target column: set one in the gate config or the bundle")
    features = [*manifest.features, *(f for f in (champion.features if champion else [])
                                      if f.name not in set(manifest.feature_names))]
    extra = [target, *config.slices]
    columns = [*features, *(Feature.model_construct(name=c, type="category", nullable=True, categories=[],
                                                    minimum=None, maximum=None) for c in extra)]
    try:
        with open_records(stream, FileFormat.from_key(name), columns, **markers(manifest)) as reader:
            cells = [readable(c, e) for chunk in reader.chunks(5000)
                     for c, e in zip(chunk.cells, chunk.errors, strict=True)]
    except WholeFileRejected as exc:
        reason = "holdout_empty" if exc.code == "empty_file" else "holdout_mislabelled" if target in exc.message \
            else "incompatible_schema"
        raise GateRefusal(reason, f"holdout: {exc.message}") from None
    if not cells:
        raise GateRefusal("holdout_empty", "the holdout has no rows")
    n = len(features)
    labels = _labels([c[n] for c in cells], manifest)
    slices = {s: np.array([str(c[n + 1 + k]) for c in cells], dtype=object) for k, s in enumerate(config.slices)}
    return Holdout(rows=[c[:n] for c in cells], labels=labels, slices=slices, columns=[f.name for f in features])


def markers(manifest: Manifest) -> dict[str, Any]:
    """The text the bundle was built to read as missing, for the holdout's text cells too."""
    found = getattr(manifest, "missing_markers", None)
    return {} if found is None else {"missing_markers": found}


def readable(cells: list[Any] | None, error: str | None) -> list[Any]:
    if error is not None or cells is None:
        raise GateRefusal("incompatible_schema", f"holdout row unreadable for this model: {error}")
    return cells


def _labels(values: list[Any], manifest: Manifest) -> np.ndarray:
    if any(v is None for v in values):
        raise GateRefusal("holdout_mislabelled", "some holdout rows have no label")
    if manifest.task == "regression":
        try:
            return np.array([float(v) for v in values])
        except (TypeError, ValueError):
            raise GateRefusal("holdout_mislabelled", "regression labels must be numbers") from None
    classes = list(manifest.classes or [])
    by_text = {_label_text(c): c for c in classes}
    by_value = {v: c for c in classes if (v := _label_value(c)) is not None}
    found = {v: _class_of(v, by_text, by_value) for v in set(values)}
    unknown = sorted(str(v) for v, c in found.items() if c is None)
    if unknown:
        raise GateRefusal("holdout_mislabelled", f"labels {unknown[:5]} are not classes of the model "
                                                 f"{list(by_text)}")
    labels = np.array([found[v] for v in values], dtype=object)
    if len(set(labels.tolist())) < 2:
        raise GateRefusal("holdout_mislabelled", "the holdout has a single class: nothing can be compared")
    return labels


def _class_of(value: Any, by_text: dict[str, Any], by_value: dict[float, Any]) -> Any:
    """The model's class for a holdout label: the same text, else the same number where both are
    numbers (a CSV written by pandas holds class 6 as ``6.0``)."""
    if _label_text(value) in by_text:
        return by_text[_label_text(value)]
    number = _label_value(value)
    return None if number is None else by_value.get(number)


def _label_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _label_value(value: Any) -> float | None:
    """A label as a number, or None when it is not one (booleans are not numbers here)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if np.isfinite(number) else None


# -- scoring -----------------------------------------------------------------------------------------

@dataclass
class Scores:
    labels: np.ndarray
    proba: np.ndarray | None


def score(model: Model, holdout: Holdout, who: str) -> Scores:
    try:
        feeds = model.schema.to_feeds(holdout.rows_for(model.manifest))
    except InvalidInput as exc:
        raise GateRefusal("incompatible_schema", f"{who} cannot read the holdout: {exc.message} ({exc.field})") \
            from None
    labels, proba = model.score(feeds)
    return Scores(labels, proba)


def baseline(manifest: Manifest, holdout: Holdout) -> Scores:
    """The trivial model: class frequencies (classification) or the mean (regression)."""
    n = len(holdout.labels)
    if manifest.task == "regression":
        return Scores(np.full(n, float(np.mean(holdout.labels.astype(float)))), None)
    classes = list(manifest.classes or [])
    prior = np.array([np.mean(holdout.labels == c) for c in classes])
    return Scores(np.array([classes[int(np.argmax(prior))]] * n, dtype=object), np.tile(prior, (n, 1)))


def evaluate(manifest: Manifest, labels: np.ndarray, scores: Scores,
             mask: np.ndarray | None = None) -> dict[str, float]:
    y, predicted = (labels, scores.labels) if mask is None else (labels[mask], scores.labels[mask])
    if manifest.task == "regression":
        return m.regression_metrics(y.astype(float), predicted.astype(float))
    assert scores.proba is not None
    proba = scores.proba if mask is None else scores.proba[mask]
    return m.classification_metrics(y, predicted, proba, list(manifest.classes or []))


def primary_metric(manifest: Manifest, config: GateConfig) -> str:
    if config.primary_metric:
        return config.primary_metric
    if manifest.task == "regression":
        return "rmse"
    return "roc_auc" if len(manifest.classes or []) == 2 else "macro_f1"


@dataclass(frozen=True)
class Latency:
    """p99 single-row latency in ms of the candidate and, when there is one, the champion, measured in
    the same run."""

    candidate_p99_ms: float
    champion_p99_ms: float | None = None


def interleaved_p99_ms(candidate: Model, champion: Model | None, holdout: Holdout, samples: int,
                       clock: Callable[[], float] = time.perf_counter) -> Latency:
    """Single-row calls alternating between the models (which goes first alternates too), so that
    whatever load the machine has falls on both alike."""
    models = [candidate] if champion is None else [candidate, champion]
    feeds = [[m.schema.to_feeds([row]) for row in holdout.rows_for(m.manifest)[:50]] for m in models]
    for model, mine in zip(models, feeds, strict=True):
        for f in mine[:10]:
            model.score(f)  # warm-up
    timings: list[list[float]] = [[] for _ in models]
    for i in range(samples):
        order = range(len(models)) if i % 2 == 0 else reversed(range(len(models)))
        for k in order:
            start = clock()
            models[k].score(feeds[k][i % len(feeds[k])])
            timings[k].append((clock() - start) * 1e3)
    p99 = [float(np.percentile(t, 99)) for t in timings]
    return Latency(p99[0], p99[1] if champion is not None else None)


LatencyProbe = Callable[[Model, Model | None, Holdout, int], Latency]
"""Measures p99 single-row latency (candidate, champion or None, holdout, samples); tests pass fixed
figures, the gate uses `interleaved_p99_ms`."""


def latency_check(latency: Latency, config: GateConfig) -> Check:
    """Relative to the champion measured in the same run; always under the absolute ceiling."""
    cand, champ = latency.candidate_p99_ms, latency.champion_p99_ms
    ceiling = config.latency_budget_ms
    if champ is None:
        return Check("latency", cand <= ceiling, "over_latency_budget",
                     f"p99 single-row {cand:.3f} ms (no champion: absolute budget {ceiling:g} ms)")
    allowed = min(champ * config.latency_ratio + config.latency_slack_ms, ceiling)
    return Check("latency", cand <= allowed, "over_latency_budget",
                 f"p99 single-row {cand:.3f} ms vs champion {champ:.3f} ms in the same run (allowed "
                 f"{config.latency_ratio:g}x + {config.latency_slack_ms:g} ms = {allowed:.3f} ms, absolute "
                 f"budget {ceiling:g} ms)")


# -- the verdict -------------------------------------------------------------------------------------

def judge(candidate: Model, champion: Model | None, holdout: Holdout, config: GateConfig,
          bundle_bytes: int, measure_latency: LatencyProbe | None = None) -> dict[str, Any]:
    manifest = candidate.manifest
    metric = primary_metric(manifest, config)
    lower = metric in m.LOWER_IS_BETTER
    checks: list[Check] = []
    schema_issue = incompatibility(candidate.manifest, champion.manifest) if champion else None
    checks.append(Check("schema", schema_issue is None, "incompatible_schema",
                        schema_issue or (schema_detail(manifest, champion.manifest) if champion else
                                         "no champion to compare with")))
    cand_scores = score(candidate, holdout, "the candidate")
    results: dict[str, Any] = {"candidate": evaluate(manifest, holdout.labels, cand_scores),
                               "baseline": evaluate(manifest, holdout.labels, baseline(manifest, holdout))}
    if metric not in results["candidate"]:
        raise GateRefusal("incompatible_schema", f"unknown primary metric {metric!r}")
    cand, base = results["candidate"][metric], results["baseline"][metric]
    checks.append(Check("beats_baseline", _better(cand, base, 0.0, lower), "not_better_than_baseline",
                        f"{metric} {cand:.4f} vs trivial baseline {base:.4f}"))
    slices: dict[str, Any] = {}
    if champion is not None and schema_issue is None:
        champ_scores = score(champion, holdout, "the champion")
        results["champion"] = evaluate(champion.manifest, holdout.labels, champ_scores)
        champ = results["champion"][metric]
        checks.append(Check("vs_champion", _not_worse(cand, champ, config.tolerance, lower), "worse_than_champion",
                            f"{metric} {cand:.4f} vs champion {champ:.4f} (tolerance {config.tolerance})"))
        slices, worse = _slices(manifest, holdout, cand_scores, champ_scores, metric, config, lower)
        checks.append(Check("slices", not worse, "worse_on_slice",
                            f"worse on {worse}" if worse else f"no slice worse beyond {config.tolerance}"
                            + ("" if slices else " (no slices declared)")))
    checks.append(parity_check(manifest, config))
    latency = (measure_latency or interleaved_p99_ms)(candidate, champion if schema_issue is None else None,
                                                      holdout, config.latency_samples)
    checks.append(latency_check(latency, config))
    checks.append(Check("size", bundle_bytes <= config.size_budget_bytes, "over_size_budget",
                        f"bundle {bundle_bytes:,} bytes (budget {config.size_budget_bytes:,})"))
    failed = [c for c in checks if not c.passed]
    return {"admitted": not failed, "reasons": [c.reason for c in failed],
            "summary": "admitted" if not failed else "refused: " + ", ".join(c.reason for c in failed),
            "primary_metric": metric, "rows": len(holdout.labels), "metrics": results, "slices": slices,
            "latency_p99_ms": latency.candidate_p99_ms, "champion_latency_p99_ms": latency.champion_p99_ms,
            "bundle_bytes": bundle_bytes, "checks": [c.as_dict() for c in checks],
            "candidate": {"name": manifest.name, "version": manifest.version},
            "champion": None if champion is None else {"name": champion.manifest.name,
                                                       "version": champion.manifest.version}}


def parity_check(manifest: Manifest, config: GateConfig) -> Check:
    """Parity of the graph that is served: the float graph against scikit-learn, or an int8 graph
    against the float graph it came from (with its own budget and label agreement)."""
    q = manifest.quantization
    if q is None:
        diff = manifest.parity.max_abs_diff
        return Check("parity", diff <= config.max_parity_diff, "parity_failed",
                     f"sklearn/ONNX max abs diff {diff:.3g} (budget {config.max_parity_diff:g})")
    agreement = 1.0 if q.parity.label_agreement is None else q.parity.label_agreement
    passed = q.parity.max_abs_diff <= config.max_quantized_diff and agreement >= config.min_quantized_agreement
    return Check("parity", passed, "parity_failed",
                 f"int8/float ONNX max abs diff {q.parity.max_abs_diff:.3g} (budget {config.max_quantized_diff:g}), "
                 f"labels agree {agreement:.2%} (at least {config.min_quantized_agreement:.0%}); float graph vs "
                 f"sklearn {manifest.parity.max_abs_diff:.3g}")


def refused(reason: str, detail: str, candidate: Manifest | None) -> dict[str, Any]:
    return {"admitted": False, "reasons": [reason], "summary": f"refused: {reason}",
            "checks": [Check(reason, False, reason, detail).as_dict()],
            "candidate": None if candidate is None else {"name": candidate.name, "version": candidate.version}}


def _better(a: float, b: float, margin: float, lower: bool) -> bool:
    return a < b - margin if lower else a > b + margin


def _not_worse(a: float, b: float, tolerance: float, lower: bool) -> bool:
    return a <= b + tolerance if lower else a >= b - tolerance


def _slices(manifest: Manifest, holdout: Holdout, cand: Scores, champ: Scores, metric: str, config: GateConfig,
            lower: bool) -> tuple[dict[str, Any], list[str]]:
    report: dict[str, Any] = {}
    worse: list[str] = []
    for column, values in holdout.slices.items():
        for value in sorted(set(values.tolist())):
            mask = values == value
            if mask.sum() < config.min_slice_rows:
                continue
            c, h = evaluate(manifest, holdout.labels, cand, mask), evaluate(manifest, holdout.labels, champ, mask)
            name = f"{column}={value}"
            report[name] = {"rows": int(mask.sum()), "candidate": c[metric], "champion": h[metric]}
            if not (np.isnan(c[metric]) or np.isnan(h[metric])) and not _not_worse(c[metric], h[metric],
                                                                                     config.tolerance, lower):
                worse.append(name)
    return report, worse


def incompatibility(candidate: Manifest, champion: Manifest) -> str | None:
    """Why rows the champion takes would not fit the candidate, or None. A candidate may read fewer
    columns (a dropped ID column): callers' rows still carry them."""
    if candidate.task != champion.task:
        return f"task {candidate.task} vs champion's {champion.task}"
    old_features = {f.name: f for f in champion.features}
    added = [n for n in candidate.feature_names if n not in old_features]
    if added:
        return f"the candidate needs features {added[:5]} the champion does not take " \
               f"(the champion's features are {champion.feature_names[:30]})"
    for new in candidate.features:
        old = old_features[new.name]
        if new.type != old.type:
            return f"feature {new.name!r} is {new.type}, was {old.type}"
        lost = [] if _open_categories(new) else sorted(set(old.categories or []) - set(new.categories or []))
        if lost:
            return f"feature {new.name!r} no longer accepts categories {lost[:5]}"
        if old.nullable and not new.nullable:
            return f"feature {new.name!r} no longer accepts null"
    if candidate.classes != champion.classes:
        return f"classes {candidate.classes} vs champion's {champion.classes}"
    return None


def schema_detail(candidate: Manifest, champion: Manifest) -> str:
    dropped = [n for n in champion.feature_names if n not in set(candidate.feature_names)]
    if dropped:
        return f"reads {len(dropped)} fewer of the champion's columns ({dropped[:10]}); every row the champion " \
               "takes still fits"
    return "same features, types and categories as the champion"


def _open_categories(feature: Feature) -> bool:
    """Whether the model takes categories it never saw (an encoder that ignores unknown ones)."""
    return getattr(feature, "unknown_categories", None) == "accept"
