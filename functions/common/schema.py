"""Turn request rows into ONNX inputs, refusing anything the feature schema does not allow.

Rows come as objects keyed by feature name or as arrays in schema order. Checks run column
by column so that the common case (all rows good) costs a few vectorised passes.

A keyed row may also carry the columns the model was fitted with but never reads (the
manifest's ``ignored_columns``: an ID, a date); they are ignored. Any other key is refused.
A null category is read as the fitted imputer's fill (``missing_category``); an unseen one is
passed to the encoder when the manifest says the encoder accepts it.
"""

from __future__ import annotations

import difflib
import itertools
import math
import operator
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .errors import InvalidInput, echo
from .manifest import Feature, OnnxSignature

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NUMBER_TYPES = frozenset({int, float})
FEW_ROWS = 16  # up to this many rows, checking cells in Python beats numpy's fixed cost per call
SUGGESTION_CANDIDATES = 8  # unknown keys compared with the missing names per refused row: bounds the work
SUGGESTION_CUTOFF = 0.75


class RowSchema:
    """Validates instances against an ordered feature schema and builds ONNX feeds."""

    def __init__(self, features: Sequence[Feature], signature: OnnxSignature, max_rows: int,
                 ignored: Iterable[str] = ()) -> None:
        self.features = list(features)
        self.names = [f.name for f in self.features]
        self._name_set = frozenset(self.names)
        # A keyed row's values in feature order, picked in C (a tuple even for one feature).
        self._pick = operator.itemgetter(*self.names) if len(self.names) > 1 else lambda row: (row[self.names[0]],)
        self.ignored = tuple(ignored)
        self._ignored_set = frozenset(self.ignored)
        self._categories = [frozenset(f.categories) if f.categories and f.unknown_categories == "refuse" else None
                            for f in self.features]
        self.signature = signature
        self.max_rows = max_rows
        self._dtype = np.dtype(signature.input_dtype)

    def to_feeds(self, instances: Any) -> dict[str, np.ndarray]:
        rows = self._ordered_rows(instances)
        if self.signature.input_mode == "tensor":
            matrix = self._all_numbers_fast(rows)
            if matrix is not None:
                return {self.signature.inputs[0]: matrix}
        columns = list(zip(*rows, strict=True))
        values = [self._column(j, col) for j, col in enumerate(columns)]
        if self.signature.input_mode == "tensor":
            return {self.signature.inputs[0]: np.column_stack(values)}
        return {name: v.reshape(-1, 1) for name, v in zip(self.signature.inputs, values, strict=True)}

    def json_schema(self) -> dict[str, Any]:
        """The JSON Schema (2020-12, as OpenAPI 3.1 reads it) of the 'instances' this class accepts.

        Generated from the manifest so that clients and fuzzers see what the code enforces: each
        feature's type, the finite range of the model's input dtype, its categories and whether it
        may be null; rows as objects keyed by feature name or as arrays in feature order."""
        cells = [self._cell_schema(f) for f in self.features]
        properties: dict[str, Any] = dict(zip(self.names, cells, strict=True))
        properties.update({c: {"title": c, "description": "read by no step of the model: ignored"}
                           for c in self.ignored})
        keyed = {"type": "object", "title": "Row by feature name", "properties": properties,
                 "required": self.names, "additionalProperties": False}
        ordered = {"type": "array", "title": "Row in feature order", "prefixItems": cells, "items": False,
                   "minItems": len(cells), "maxItems": len(cells),
                   "description": "Values in this order: " + ", ".join(self.names)}
        return {"type": "array", "minItems": 1, "maxItems": self.max_rows, "items": {"anyOf": [keyed, ordered]},
                "description": "Rows to score: objects keyed by feature name, or arrays in the feature order"}

    def _cell_schema(self, feature: Feature) -> dict[str, Any]:
        if feature.type == "category":
            text: dict[str, Any] = {"type": ["string", "null"] if feature.nullable else "string",
                                    "title": feature.name}
            if feature.unknown_categories == "refuse":
                text["enum"] = [*(feature.categories or ()), *([None] if feature.nullable else [])]
            else:
                text["description"] = f"known: {', '.join((feature.categories or [])[:20])}; others accepted"
            return text
        # Request rows are held to float32's range whatever the model's dtype (see _number_column).
        cell: dict[str, Any] = {"type": ["number", "null"] if feature.nullable else "number",
                                "minimum": -_FLOAT32_MAX, "maximum": _FLOAT32_MAX, "title": feature.name}
        if feature.minimum is not None and feature.maximum is not None:
            cell["description"] = f"seen in training from {feature.minimum:g} to {feature.maximum:g}"
        return cell

    # -- rows -------------------------------------------------------------------------------

    def _ordered_rows(self, instances: Any) -> list[Sequence[Any]]:
        if not isinstance(instances, list):
            raise InvalidInput("'instances' must be an array of rows", code="wrong_type", field="instances")
        if not instances:
            raise InvalidInput("'instances' is empty: send at least one row", code="empty_instances",
                               field="instances")
        if len(instances) > self.max_rows:
            raise InvalidInput(f"{len(instances)} rows sent; at most {self.max_rows} are allowed per request",
                               code="too_many_rows", field="instances")
        width = len(self.names)
        names = self.names
        rows: list[Sequence[Any]] = []
        for i, row in enumerate(instances):
            if type(row) is dict:
                if (len(row) != width or row.keys() != self._name_set) and not self._extra_keys_ignored(row):
                    self._raise_key_error(i, row)
                rows.append(self._pick(row))
            elif type(row) is list:
                if len(row) != width:
                    raise InvalidInput(f"row has {len(row)} values; the model takes {width} features in the "
                                       f"order {names}", code="wrong_length", field=f"instances[{i}]")
                rows.append(row)
            else:
                raise InvalidInput("each row must be an object keyed by feature name or an array of values",
                                   code="wrong_type", field=f"instances[{i}]")
        return rows

    def _extra_keys_ignored(self, row: dict[str, Any]) -> bool:
        """Every feature is there and every other key is a column the model ignores."""
        return (bool(self._ignored_set) and len(row) <= len(self.names) + len(self._ignored_set)
                and row.keys() >= self._name_set and row.keys() - self._name_set <= self._ignored_set)

    def _raise_key_error(self, i: int, row: dict[str, Any]) -> None:
        missing = [n for n in self.names if n not in row]
        extra = [k for k in row if k not in self._name_set]
        close = suggest_name(extra, missing)
        if close is not None:
            key, name = close
            raise InvalidInput(f"unknown feature {echo(key)}: did you mean {name!r}?",
                               code="misspelled_feature", field=f"instances[{i}].{key}")
        if missing:
            raise InvalidInput(f"feature {missing[0]!r} is missing", code="missing_feature",
                               field=f"instances[{i}].{missing[0]}")
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise InvalidInput(f"unknown feature {echo(extra[0])}{more}: the model takes {self.names}",
                           code="unknown_feature", field=f"instances[{i}].{extra[0]}")

    # -- matrices (batch files already parsed as numbers) --------------------------------------

    def matrix_problems(self, matrix: np.ndarray) -> dict[int, str]:
        """Rows of an all-numeric matrix that the schema refuses, with the reason for each."""
        problems: dict[int, str] = {}
        bound = _FLOAT32_MAX if self._dtype == np.float32 else float(np.finfo(np.float64).max)
        if not matrix.size or -bound <= matrix.min() <= matrix.max() <= bound:
            return problems  # the common case in two reductions: NaN and infinity fail the comparisons
        finite = np.isfinite(matrix)
        for i in np.flatnonzero(~finite.all(axis=1)).tolist():
            j = int(np.flatnonzero(~finite[i])[0])
            problems[i] = f"non_finite: feature {self.names[j]!r} must be finite (NaN and infinity are refused)"
        if self._dtype == np.float32:
            big = finite & (np.abs(np.where(finite, matrix, 0.0)) > _FLOAT32_MAX)
            for i in np.flatnonzero(big.any(axis=1)).tolist():
                j = int(np.flatnonzero(big[i])[0])
                problems.setdefault(i, f"out_of_range: feature {self.names[j]!r} is out of range for float32")
        return problems

    def feeds_from_matrix(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        """ONNX feeds from rows that passed :meth:`matrix_problems` (all features numeric)."""
        values = matrix.astype(self._dtype, copy=False)
        if self.signature.input_mode == "tensor":
            return {self.signature.inputs[0]: values}
        return {name: values[:, [j]] for j, name in enumerate(self.signature.inputs)}

    # -- columns ----------------------------------------------------------------------------

    def _all_numbers_fast(self, rows: list[Sequence[Any]]) -> np.ndarray | None:
        """The common case in one vectorised pass: every cell a finite number in range.

        Anything else (nulls, strings, NaN...) returns None and the column-by-column path
        finds and names the first bad cell."""
        cells = itertools.chain.from_iterable(rows)
        if len(rows) <= FEW_ROWS:
            if not all(type(v) in _NUMBER_TYPES and -_FLOAT32_MAX <= v <= _FLOAT32_MAX for v in cells):
                return None  # NaN fails both comparisons
            return np.array(rows, dtype=np.float64).astype(self._dtype, copy=False)
        if not set(map(type, cells)) <= _NUMBER_TYPES:
            return None
        try:
            matrix = np.array(rows, dtype=np.float64)
        except OverflowError:
            return None
        if not np.isfinite(matrix).all() or np.abs(matrix).max() > _FLOAT32_MAX:
            return None
        return matrix.astype(self._dtype, copy=False)

    def _column(self, j: int, col: tuple[Any, ...]) -> np.ndarray:
        feature = self.features[j]
        if feature.type == "category":
            return self._category_column(j, feature, col)
        return self._number_column(j, feature, col)

    def _number_column(self, j: int, feature: Feature, col: tuple[Any, ...]) -> np.ndarray:
        allowed = _NUMBER_TYPES | {type(None)} if feature.nullable else _NUMBER_TYPES
        if not set(map(type, col)) <= allowed:
            i, v = next((i, v) for i, v in enumerate(col) if type(v) not in allowed)
            if v is None:
                raise InvalidInput(f"feature {feature.name!r} may not be null", code="null_value",
                                   field=self._field(i, j))
            raise InvalidInput(f"feature {feature.name!r} must be a number, got {_json_type(v)}",
                               code="wrong_type", field=self._field(i, j))
        try:
            arr = np.array(col, dtype=np.float64)
        except OverflowError:
            i = next(i for i, v in enumerate(col) if type(v) is int and abs(v) > _FLOAT32_MAX)
            raise InvalidInput(f"feature {feature.name!r} is out of range", code="out_of_range",
                               field=self._field(i, j)) from None
        finite = np.isfinite(arr)
        if not finite.all():
            for bad in np.flatnonzero(~finite).tolist():
                if not (feature.nullable and col[bad] is None):
                    raise InvalidInput(f"feature {feature.name!r} must be finite (NaN and infinity are refused)",
                                       code="non_finite", field=self._field(bad, j))
        if np.abs(arr[finite]).max(initial=0.0) > _FLOAT32_MAX:
            i = int(np.flatnonzero(finite & (np.abs(np.nan_to_num(arr)) > _FLOAT32_MAX))[0])
            raise InvalidInput(f"feature {feature.name!r} is out of range for float32", code="out_of_range",
                               field=self._field(i, j))
        return arr.astype(self._dtype, copy=False)

    def _category_column(self, j: int, feature: Feature, col: tuple[Any, ...]) -> np.ndarray:
        categories = self._categories[j]
        if not set(map(type, col)) <= {str}:
            allowed = (str, type(None)) if feature.nullable else (str,)
            bad = next(((i, v) for i, v in enumerate(col) if type(v) not in allowed), None)
            if bad is not None:
                i, v = bad
                code = "null_value" if v is None else "wrong_type"
                raise InvalidInput(f"feature {feature.name!r} must be one of its categories (a string), "
                                   f"got {_json_type(v)}", code=code, field=self._field(i, j))
            col = tuple(feature.missing_category if v is None else v for v in col)
        if categories is None:  # the fitted encoder encodes unseen categories itself
            return np.array(col, dtype=object)
        unknown = set(col) - categories
        if unknown:
            i = next(i for i, v in enumerate(col) if v in unknown)
            shown = sorted(categories)[:20]
            raise InvalidInput(f"unknown category {echo(col[i])} for feature {feature.name!r}; known: {shown}",
                               code="unknown_category", field=self._field(i, j))
        return np.array(col, dtype=object)

    def _field(self, i: int, j: int) -> str:
        return f"instances[{i}].{self.names[j]}"


def suggest_name(unknown: Iterable[str], names: Sequence[str],
                 limit: int = SUGGESTION_CANDIDATES) -> tuple[str, str] | None:
    """The first unknown key that looks like a misspelling of one of ``names``, with that name.

    At most ``limit`` keys are compared (each with every name), and keys too long to reach the
    cutoff are skipped without a comparison, so a row with a flood of unknown keys costs one
    pass over them, never a similarity search per key."""
    if not names:
        return None
    # ratio = 2 * matches / (len(a) + len(b)) <= 2 * len(b) / (len(a) + len(b)): a longer key cannot reach the cutoff.
    longest = max(len(n) for n in names) * (2 / SUGGESTION_CUTOFF - 1)
    compared = 0
    for key in unknown:
        if len(key) > longest:
            continue
        close = difflib.get_close_matches(key, names, n=1, cutoff=SUGGESTION_CUTOFF)
        if close:
            return key, close[0]
        compared += 1
        if compared >= limit:
            return None
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number" if math.isfinite(value) else "non-finite number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
