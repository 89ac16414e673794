"""The project's exception classes and the one mapping from them to HTTP answers."""

from __future__ import annotations

from typing import Any

ECHO_LIMIT = 64  # characters of a caller's value quoted back in an error or a log line
FIELD_LIMIT = 256
MESSAGE_LIMIT = 1024


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out: errors stay small whatever the input."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text) - limit} more characters)"


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """A caller's value as quoted in an error message: its repr, cut to about ``limit`` characters."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}...({len(value) - limit} more characters)"
    return clip(repr(value), limit)


class SlimserveError(Exception):
    """Base class: every error a client or operator may see carries a code and a status."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        message = clip(message, MESSAGE_LIMIT)
        super().__init__(message)
        self.message = message
        self.field = None if field is None else clip(field, FIELD_LIMIT)
        if code is not None:
            self.code = code

    def to_body(self, request_id: str | None) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error, "request_id": request_id}


class InvalidInput(SlimserveError):
    """The request is well-formed HTTP but its content breaks the model's schema."""

    status = 400
    code = "invalid_input"


class PayloadTooLarge(SlimserveError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(SlimserveError):
    status = 415
    code = "unsupported_media_type"


class NotFound(SlimserveError):
    status = 404
    code = "not_found"


class MethodNotAllowed(SlimserveError):
    """The path exists but not with this method; the answer carries an Allow header."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: tuple[str, ...]) -> None:
        super().__init__(message, field="method")
        self.allow = allow


class ModelUnavailable(SlimserveError):
    """No verified model is loaded: the service fails closed rather than guess."""

    status = 503
    code = "model_unavailable"


class BundleError(SlimserveError):
    """A model bundle is missing, corrupt, tampered with or inconsistent."""

    status = 503
    code = "bundle_invalid"


class BundleBuildError(SlimserveError):
    """A bundle cannot be written (unsupported estimator, parity failure, bad sample data)."""

    code = "bundle_refused"


class RegistryConflict(SlimserveError):
    """A registry write lost to another writer, or asked for a transition the lifecycle forbids."""

    status = 409
    code = "registry_conflict"


class UnknownVersion(SlimserveError):
    status = 404
    code = "unknown_version"


class ConfigurationError(SlimserveError):
    """A required setting is missing or malformed."""

    status = 500
    code = "configuration_error"


class AwsError(SlimserveError):
    """An AWS call failed; raised by functions/common/aws.py, the one place that reads ClientError."""

    status = 502
    code = "aws_error"


class ObjectMissing(AwsError):
    """The object, version, item or resource asked for does not exist."""

    status = 404
    code = "not_found"


class ObjectChanged(AwsError):
    """A conditional read found the object replaced since it was announced (If-Match failed)."""

    status = 412
    code = "object_changed"


class WriteConflict(AwsError):
    """A conditional write lost (a condition failed, or the name is already taken)."""

    status = 409
    code = "write_conflict"


class LockHeld(SlimserveError):
    """A model's release lock is held by another owner (a release, a rollback or a code deployment)."""

    status = 409
    code = "lock_held"


class NotAdmitted(SlimserveError):
    """A version asked to serve that the validation gate did not admit, or that is not a candidate."""

    status = 409
    code = "not_admitted"


class NoChampion(SlimserveError):
    """The model has no champion yet: nothing to compare with or roll back from."""

    status = 409
    code = "no_champion"


class NothingToRollBack(SlimserveError):
    """A rollback found no earlier known-good version to serve again."""

    status = 409
    code = "nothing_to_roll_back"


class UnknownModel(SlimserveError):
    status = 404
    code = "unknown_model"


class InvalidPredictionId(SlimserveError):
    """A prediction id this service did not issue: forged, altered, truncated or not an id at all."""

    status = 400
    code = "invalid_prediction_id"


class LabelNotInClasses(SlimserveError):
    """A feedback label the model cannot have predicted (not one of its manifest's classes, or not a number)."""

    status = 400
    code = "label_not_in_classes"


class DuplicateLabel(SlimserveError):
    """A prediction already has its label: the first one stands, nothing is stored twice."""

    status = 409
    code = "duplicate_label"


class ExplainUnsupported(SlimserveError):
    """Explanations asked of a bundle that carries none (a model with no exact explanation, or an older bundle)."""

    status = 400
    code = "explain_unsupported"


INTERNAL_ERROR_BODY = {"code": "internal_error", "message": "internal error"}
