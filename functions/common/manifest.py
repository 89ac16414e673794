"""The model bundle manifest: one record type read and written everywhere (functions/common/records.py)."""

from __future__ import annotations

import hashlib
import os
from typing import Any, Literal

from .records import Field, Record, check

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"

# Bumped whenever the manifest gains or changes a field. A loader reads every version up to its
# own and refuses a newer one. 2: features read by the fitted pipeline only (ignored_columns),
# nullability and openness with their reasons, missing_category, missing_markers, ONNX input names.
# 3: the typed feature profile (FeatureProfile); an older untyped profile is not read (drift skips it).
# 4: quantization (an int8 model.onnx records its parity against the float graph it came from).
FORMAT_VERSION = 4
PROFILE_QUANTILES = 101  # quantiles per numeric feature: the CDF at every percent, what KS and PSI read

# pandas' default missing-value strings (read_csv's na_values): what training and bundling read as missing.
PANDAS_MISSING_MARKERS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                          "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")

ClassLabel = bool | int | float | str


class Feature(Record):
    """One input column the fitted pipeline reads, in the order the model expects it."""

    name: str = Field(min_length=1)
    type: Literal["number", "category"]
    nullable: bool = False
    nullable_reason: str | None = Field(default=None, description="the step that handles a null, when nullable")
    minimum: float | None = None
    maximum: float | None = None
    categories: list[str] | None = Field(default=None, description="the categories the fitted encoder knows")
    unknown_categories: Literal["refuse", "accept"] = Field(
        default="refuse", description="accept: the fitted encoder encodes an unseen category itself")
    categories_reason: str | None = Field(default=None, description="the step that decides unknown_categories")
    missing_category: str | None = Field(default=None, description="the category a null is read as (an imputer's fill)")

    @check
    def _categories_only_for_categoricals(self) -> None:
        if self.type == "category" and not self.categories:
            raise ValueError(f"categorical feature {self.name!r} needs its categories")
        if self.type == "number" and (self.categories is not None or self.missing_category is not None
                                      or self.unknown_categories != "refuse"):
            raise ValueError(f"numeric feature {self.name!r} cannot list categories")
        if self.type == "category" and self.nullable and self.missing_category is None:
            raise ValueError(f"nullable categorical feature {self.name!r} needs the category a null is read as")


class OnnxSignature(Record):
    """How feature rows become ONNX inputs and which outputs hold the answer."""

    input_mode: Literal["tensor", "columns"]
    input_dtype: Literal["float32", "float64"] = "float32"
    inputs: list[str] = Field(min_length=1)
    prediction_output: str
    probability_output: str | None = None


class Parity(Record):
    rows: int = Field(ge=1)
    max_abs_diff: float = Field(ge=0)
    tolerance: float = Field(gt=0)
    label_agreement: float | None = Field(default=None, ge=0, le=1)


class Quantization(Record):
    """model.onnx is the int8 (dynamic) form of a float graph: ``parity`` there compares the int8 graph
    with that float graph, under its own tolerance; the manifest's own ``parity`` is the float graph's
    against scikit-learn."""

    scheme: Literal["int8-dynamic"] = "int8-dynamic"
    float_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="the float graph the int8 one came from")
    float_bytes: int = Field(ge=1)
    parity: Parity
    metric_losses: dict[str, float] = Field(default_factory=dict, description=(
        "how much worse each holdout figure became (accuracy, the primary metric; relative RMSE)"))


class NumericProfile(Record):
    """A numeric feature's training distribution: its quantiles at evenly spaced probabilities
    (0, 1/(n-1), ..., 1), enough to rebuild its CDF without any training row, and its null rate."""

    type: Literal["number"] = "number"
    count: int = Field(ge=1, description="non-null training values profiled")
    null_rate: float = Field(ge=0, le=1)
    quantiles: list[float] = Field(min_length=2)

    @check
    def _ordered(self) -> None:
        if any(b < a for a, b in zip(self.quantiles, self.quantiles[1:], strict=False)):
            raise ValueError("profile quantiles must be non-decreasing")


class CategoryProfile(Record):
    """A categorical feature's training distribution: each category's share of non-null rows, and its null rate."""

    type: Literal["category"] = "category"
    count: int = Field(ge=1, description="non-null training values profiled")
    null_rate: float = Field(ge=0, le=1)
    shares: dict[str, float] = Field(min_length=1)


class PredictionProfile(Record):
    """What the model answered on the holdout: class shares (classifiers) and score quantiles (the top
    class probability of a classifier, the predicted value of a regressor)."""

    count: int = Field(ge=1, description="holdout rows scored")
    class_shares: dict[str, float] | None = Field(default=None, description="predicted label (as text) -> share")
    score_quantiles: list[float] = Field(min_length=2)


class FeatureProfile(Record):
    """The baseline drift compares live inputs and predictions with, written at export."""

    rows: int = Field(ge=1, description="training rows profiled")
    features: dict[str, NumericProfile | CategoryProfile] = Field(discriminator="type")
    prediction: PredictionProfile | None = None


class Manifest(Record):
    format_version: int = Field(default=FORMAT_VERSION, ge=1, le=FORMAT_VERSION)
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    created_at: str
    task: Literal["classification", "regression"]
    estimator: str
    features: list[Feature] = Field(min_length=1)
    ignored_columns: list[str] = Field(default_factory=list, description=(
        "columns the model was fitted with but never reads (an ID, a date): a keyed row may carry them"))
    missing_markers: list[str] = Field(default_factory=lambda: list(PANDAS_MISSING_MARKERS), description=(
        "text cells read as missing when the training and bundling data were read"))
    classes: list[ClassLabel] | None = None
    onnx: OnnxSignature
    files: dict[str, str] = Field(description="file name -> sha256 hex digest")
    sizes: dict[str, int] = Field(default_factory=dict)
    parity: Parity = Field(description="the float graph against scikit-learn")
    quantization: Quantization | None = Field(default=None, description="set when model.onnx is int8")
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    target: str | None = Field(default=None, description="label column of the training data")
    training_data_fingerprint: str | None = None
    lineage: dict[str, str] = Field(default_factory=dict)
    thresholds: dict[str, float] = Field(default_factory=dict)
    profile: FeatureProfile | None = Field(default=None, description="training feature distributions, for drift")

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        # Formats 1 and 2 held an untyped profile (10 bins, no CDF): drift cannot read it, so it is left out.
        version = data.get("format_version", FORMAT_VERSION)
        if type(version) is int and version < 3 and "profile" in data:
            return {k: v for k, v in data.items() if k != "profile"}
        return data

    @check
    def _consistent(self) -> None:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        if set(self.ignored_columns) & set(names):
            raise ValueError("a column cannot be both a feature and ignored")
        if self.onnx.input_mode == "columns" and len(self.onnx.inputs) != len(names):
            raise ValueError("columns mode needs one ONNX input per feature, in feature order")
        if self.task == "classification":
            if not self.classes or len(self.classes) < 2:
                raise ValueError("a classifier needs at least two class labels")
            if self.onnx.probability_output is None:
                raise ValueError("a classifier needs a probability output")
        elif self.classes is not None:
            raise ValueError("a regressor has no class labels")
        if MODEL_FILE not in self.files:
            raise ValueError(f"files must list {MODEL_FILE}")
        for name, digest in self.files.items():
            if "/" in name or name.startswith(".") or name == MANIFEST_FILE:
                raise ValueError(f"bad file name in manifest: {name!r}")
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"bad sha256 for {name!r}")

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def onnx_inputs(self) -> dict[str, str]:
        """Feature name -> ONNX input name (columns mode; names may be sanitized in the graph)."""
        if self.onnx.input_mode == "tensor":
            return {}
        return dict(zip(self.feature_names, self.onnx.inputs, strict=True))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file, read in 1 MiB blocks (data sets can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
