"""The body of POST /predict, read with the standard library: the JSON object, its three fields, and
every refusal as the error codes and messages the API has always given (functions/inference/openapi.py
describes the same body to clients)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..common.errors import InvalidInput, SlimserveError, echo

MAX_ID_LENGTH = 256
FIELDS = ("instances", "id", "explain")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class PredictRequest:
    instances: list[dict[str, Any] | list[Any]]
    id: str | None = None
    explain: bool = False

    # A short repr keeps payloads out of any log or debug message that formats the request.
    def __repr__(self) -> str:
        return f"PredictRequest(<{len(self.instances)} rows>)"

    __str__ = __repr__


def parse_request(body: str) -> PredictRequest:
    """The request, or the InvalidInput that names the first thing wrong with it."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidInput("request body is not valid JSON", code="malformed_json", field="body") from None
    if _SURROGATE_ESCAPE.search(body) and not _encodable(document):
        # A lone UTF-16 surrogate escape is not text: refused as JSON, never passed on to the rows.
        raise InvalidInput("request body is not valid JSON", code="malformed_json", field="body")
    problems = request_problems(document)
    if problems:
        raise request_shape_error(problems)
    return PredictRequest(document["instances"], document.get("id"), document.get("explain", False))


def request_problems(document: Any) -> list[dict[str, Any]]:
    """What is wrong with a parsed body, in order: each field in turn, then the fields it should not have.
    Each problem has a type, a location and a message, as request_shape_error reads them."""
    if not isinstance(document, dict):
        return [_problem("model_type", (), "Input should be an object")]
    problems = []
    instances = document.get("instances", _ABSENT)
    if instances is _ABSENT:
        problems.append(_problem("missing", ("instances",), "Field required"))
    elif not isinstance(instances, list):
        problems.append(_problem("list_type", ("instances",), "Input should be a valid array"))
    else:
        for i, row in enumerate(instances):
            if not isinstance(row, (dict, list)):
                problems.append(_problem("dict_type", ("instances", i, "dict[str,any]"), "Input should be an object"))
                problems.append(_problem("list_type", ("instances", i, "list[any]"), "Input should be a valid array"))
        if not instances:
            problems.append(_problem("too_short", ("instances",),
                                     "List should have at least 1 item after validation, not 0"))
    caller_id = document.get("id")
    if caller_id is not None and not isinstance(caller_id, str):
        problems.append(_problem("string_type", ("id",), "Input should be a valid string"))
    elif caller_id is not None and len(caller_id) > MAX_ID_LENGTH:
        problems.append(_problem("string_too_long", ("id",),
                                 f"String should have at most {MAX_ID_LENGTH} characters"))
    if "explain" in document and type(document["explain"]) is not bool:
        problems.append(_problem("bool_type", ("explain",), "Input should be a valid boolean"))
    problems.extend(_problem("extra_forbidden", (key,), "Extra inputs are not permitted") for key in document
                    if key not in FIELDS)
    return problems


_ABSENT = object()


def _problem(kind: str, loc: tuple[str | int, ...], msg: str) -> dict[str, Any]:
    return {"type": kind, "loc": loc, "msg": msg}


def _encodable(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, list):
        return all(_encodable(v) for v in value)
    if isinstance(value, dict):
        return all(_encodable(k) and _encodable(v) for k, v in value.items())
    return True


def request_shape_error(errors: Any) -> SlimserveError:
    """Map the first complaint about the request body to one of our error codes."""
    errors = list(errors)
    # An empty 'instances' is named only when nothing else is wrong, as the row validator would name it.
    first = next((e for e in errors if e.get("type") != "too_short"), errors[0] if errors else {"type": "", "loc": ()})
    kind = first.get("type", "")
    loc = list(first.get("loc", ()))
    # Union members show up in the location (e.g. 'dict[str,any]'); they name no field.
    loc = [p for p in loc if not (isinstance(p, str) and "[" in p)]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "body"
    if kind == "json_invalid":
        return InvalidInput("request body is not valid JSON", code="malformed_json", field="body")
    if kind == "too_short" and field == "instances":
        return InvalidInput("'instances' is empty: send at least one row", code="empty_instances", field=field)
    if kind == "missing":
        return InvalidInput(f"'{field}' is required", code="missing_field", field=field)
    if kind == "extra_forbidden":
        return InvalidInput(f"unknown field {echo(field)}: the body takes 'instances' and an optional 'id'",
                            code="unknown_field", field=field)
    if field == "body":
        return InvalidInput("request body must be a JSON object with 'instances'", code="wrong_type", field=field)
    return InvalidInput(f"'{field}' has the wrong type: {first.get('msg', '')}", code="wrong_type", field=field)
