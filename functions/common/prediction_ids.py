"""Prediction ids: each scored row's id carries its own proof, so feedback is checked without a lookup.

Format ``p1.<payload>.<mac>``: the payload is base64url (unpadded) of the compact JSON
``[model, version, request_id, row, prediction]``; the mac is the first 22 characters of
base64url(HMAC-SHA256(key, "p1." + payload)), about 131 bits. The mac is checked, in constant time,
before the payload is decoded at all, so a forged id is never parsed. An id is at most 512 characters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from .errors import ConfigurationError, InvalidPredictionId

PREFIX = "p1."
MAC_CHARS = 22
MAX_ID_CHARS = 512
MIN_KEY_BYTES = 16
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")

Label = bool | int | float | str

__all__ = ["InvalidPredictionId", "PredictionRef", "configured_key", "issue", "verify"]


@dataclass(frozen=True)
class PredictionRef:
    """What a verified prediction id says: which model version scored which row of which request, and its answer."""

    model: str
    version: str
    request_id: str
    row: int
    prediction: Label


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _mac(key: bytes, signed: str) -> str:
    return _b64(hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest())[:MAC_CHARS]


def issue(key: bytes, model: str, version: str, request_id: str, row_index: int, prediction: Label) -> str:
    """The id of one scored row. ValueError when it would exceed MAX_ID_CHARS (very long names or labels)
    or the prediction is not a finite JSON scalar: such a row gets no id rather than one that never verifies."""
    document = json.dumps([model, version, request_id, int(row_index), prediction], separators=(",", ":"),
                          ensure_ascii=True, allow_nan=False)
    signed = PREFIX + _b64(document.encode("ascii"))
    prediction_id = f"{signed}.{_mac(key, signed)}"
    if len(prediction_id) > MAX_ID_CHARS:
        raise ValueError(f"a prediction id would be {len(prediction_id)} characters; the limit is {MAX_ID_CHARS}")
    return prediction_id


def verify(key: bytes, prediction_id: Any) -> PredictionRef:
    """The reference an id carries, or InvalidPredictionId when it is forged, altered or malformed."""
    signed, mac = _split(prediction_id)
    if not hmac.compare_digest(_mac(key, signed), mac):
        raise InvalidPredictionId("prediction_id was not issued by this service (its proof does not match)",
                                  field="prediction_id")
    return _decode(signed[len(PREFIX):])


def _split(prediction_id: Any) -> tuple[str, str]:
    if not isinstance(prediction_id, str):
        raise InvalidPredictionId("prediction_id must be a string", field="prediction_id")
    if len(prediction_id) > MAX_ID_CHARS:
        raise InvalidPredictionId(f"prediction_id is longer than {MAX_ID_CHARS} characters", field="prediction_id")
    parts = prediction_id.split(".")
    if (len(parts) != 3 or parts[0] + "." != PREFIX or len(parts[2]) != MAC_CHARS
            or not all(_B64URL.match(p) for p in parts[1:])):
        raise InvalidPredictionId("prediction_id is not of the form p1.<payload>.<proof>", field="prediction_id")
    return f"{parts[0]}.{parts[1]}", parts[2]


def _decode(payload: str) -> PredictionRef:
    # Only ids carrying a valid mac get here: a failure is a key shared with a bad issuer, still refused.
    try:
        fields = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, binascii.Error):
        raise InvalidPredictionId("prediction_id carries no readable reference", field="prediction_id") from None
    if not (isinstance(fields, list) and len(fields) == 5 and all(isinstance(f, str) for f in fields[:3])
            and type(fields[3]) is int and fields[3] >= 0 and isinstance(fields[4], (bool, int, float, str))):
        raise InvalidPredictionId("prediction_id carries no readable reference", field="prediction_id")
    return PredictionRef(*fields)


def key_from_hex(text: str) -> bytes:
    """A fixed local key (setting PREDICTION_ID_KEY) as bytes; ConfigurationError when too short or not hex."""
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigurationError("PREDICTION_ID_KEY must be hex") from None
    if len(key) < MIN_KEY_BYTES:
        raise ConfigurationError(f"PREDICTION_ID_KEY must hold at least {MIN_KEY_BYTES} bytes")
    return key


@cache
def key_from_secret(secret_arn: str) -> bytes:
    """The stack's generated key (setting PREDICTION_ID_SECRET_ARN), read once per execution environment."""
    from . import aws

    with aws.translated(f"reading the prediction id key {secret_arn}"):
        text = aws.client("secretsmanager").get_secret_value(SecretId=secret_arn)["SecretString"]
    key = str(text).encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigurationError(f"the prediction id key holds fewer than {MIN_KEY_BYTES} bytes")
    return key


def configured_key(key_hex: str | None, secret_arn: str | None) -> bytes | None:
    """The key the settings name (a local hex key wins), or None when prediction ids are off."""
    if key_hex:
        return key_from_hex(key_hex)
    if secret_arn:
        return key_from_secret(secret_arn)
    return None
