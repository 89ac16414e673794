"""The one adapter to the AWS SDK: cached clients and the translation of its errors into ours.

Nothing else in functions/ parses a ClientError: callers wrap their calls in ``translated`` and
catch the project's own classes (ObjectMissing, ObjectChanged, WriteConflict, AwsError).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from typing import Any

from .errors import AwsError, ObjectChanged, ObjectMissing, SlimserveError, WriteConflict

NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchVersion", "NoSuchBucket", "404", "NotFound",
                             "ResourceNotFoundException", "ExecutionDoesNotExist"})
CHANGED_CODES = frozenset({"PreconditionFailed", "412"})
CONFLICT_CODES = frozenset({"ConditionalCheckFailedException", "TransactionCanceledException",
                            "ExecutionAlreadyExists"})

# What a caller wants instead of the generic class: an instance (raised as is) or a class built
# from the generic message. Looked up by the translated error's class, most specific first.
Replacements = Mapping[type[AwsError], SlimserveError | type[SlimserveError]]


@cache
def client(service: str) -> Any:
    """One client per service per execution environment (created on first use, then reused)."""
    import boto3

    return boto3.client(service)  # type: ignore[call-overload]


def error_code(exc: BaseException) -> str:
    """The service's error code of a ClientError ('' for anything else)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, ObjectMissing) or error_code(exc) in NOT_FOUND_CODES


def translate(exc: BaseException, what: str) -> AwsError:
    """The project's error for an SDK error met while doing ``what`` (e.g. 's3://bucket/key')."""
    code = error_code(exc)
    if code in NOT_FOUND_CODES:
        return ObjectMissing(f"{what} does not exist ({code})")
    if code in CHANGED_CODES:
        return ObjectChanged(f"{what} changed since it was announced ({code})")
    if code in CONFLICT_CODES:
        return WriteConflict(f"{what}: a conditional write lost ({code})")
    return AwsError(f"{what} failed: {code or type(exc).__name__}")


@contextmanager
def translated(what: str, instead: Replacements | None = None) -> Iterator[None]:
    """Run AWS calls; an SDK error leaves as the project's error (or the caller's replacement)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        error = translate(exc, what)
        for kind, replacement in (instead or {}).items():
            if isinstance(error, kind):
                raise (replacement(error.message) if isinstance(replacement, type) else replacement) from exc
        raise error from exc
