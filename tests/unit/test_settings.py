"""The one settings base: what the constructs deploy (to_env) is what the functions read (from_env)."""

from __future__ import annotations

import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from functions.common.errors import ConfigurationError
from functions.common.settings import (
    EPHEMERAL_MAX_MIB,
    EPHEMERAL_MIN_MIB,
    BatchSettings,
    InferenceSettings,
    ValidationSettings,
)

TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40)
SHA = st.text("0123456789abcdef", min_size=64, max_size=64)
SECONDS = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)

BATCH = st.builds(
    BatchSettings, model_uri=TEXT, model_manifest_sha256=st.none() | SHA, max_rows=st.integers(1, 10**9),
    ort_threads=st.integers(1, 64), retry_load_seconds=SECONDS, chunk_rows=st.integers(1, 100_000),
    max_file_bytes=st.integers(1, 10**12), distributed_threshold_bytes=st.integers(1, 10**12),
    state_machine_arn=st.none() | TEXT,
    ephemeral_storage_mib=st.none() | st.integers(EPHEMERAL_MIN_MIB, EPHEMERAL_MAX_MIB))
INFERENCE = st.builds(InferenceSettings, model_uri=TEXT, model_manifest_sha256=st.none() | SHA,
                      max_body_bytes=st.integers(1, 10**9), retry_load_seconds=SECONDS)
VALIDATION = st.builds(ValidationSettings, registry_table=TEXT)


@given(st.one_of(BATCH, INFERENCE, VALIDATION))
def test_what_is_deployed_reads_back_equal(settings: BatchSettings | InferenceSettings | ValidationSettings) -> None:
    env = settings.to_env()
    assert type(settings).from_env(env) == settings
    assert all(isinstance(v, str) and v for v in env.values())


def test_names_are_the_fields_upper_cased_and_unset_values_are_left_out() -> None:
    env = BatchSettings(model_uri="s3://models/m/v1/").to_env()
    assert env["MODEL_URI"] == "s3://models/m/v1/" and env["CHUNK_ROWS"] == "5000"
    assert "MODEL_MANIFEST_SHA256" not in env and "STATE_MACHINE_ARN" not in env
    assert (env["POWERTOOLS_SERVICE_NAME"], env["POWERTOOLS_METRICS_NAMESPACE"]) == ("slimserve-batch", "Slimserve")


def test_the_validation_function_needs_its_registry_table() -> None:
    with pytest.raises(ConfigurationError, match="REGISTRY_TABLE"):
        ValidationSettings.from_env({})
    assert ValidationSettings.from_env({"REGISTRY_TABLE": "models"}).registry_table == "models"


@pytest.mark.parametrize("kind", [BatchSettings, InferenceSettings, ValidationSettings])
def test_every_optional_setting_defaults_to_none(kind: type[BatchSettings]) -> None:
    """What to_env leaves out must read back as None: an optional field cannot default to anything else."""
    hints = typing.get_type_hints(kind)
    optional = [name for name in kind.model_fields if type(None) in typing.get_args(hints[name])]
    assert optional or kind is ValidationSettings  # the check below looks at something
    for name in optional:
        assert kind.model_fields[name].default is None, name


def test_an_empty_variable_counts_as_unset() -> None:
    settings = BatchSettings.from_env({"MODEL_URI": "s3://b/p/", "STATE_MACHINE_ARN": ""})
    assert settings.state_machine_arn is None


def test_unknown_settings_are_refused_when_building_the_environment() -> None:
    with pytest.raises(ValueError, match="scoring_bucket"):
        BatchSettings(model_uri="s3://b/p/", scoring_bucket="b")  # type: ignore[call-arg]


@pytest.mark.parametrize(("max_file_bytes", "explicit", "mib"), [
    (100 * 1024**2, None, EPHEMERAL_MIN_MIB),
    (2 * 1024**3, None, 2048 + 256),  # one file of the limit plus headroom
    (50 * 1024**3, None, EPHEMERAL_MAX_MIB),  # capped at what Lambda allows
    (5 * 1024**3, 1024, 1024),  # an explicit size wins
])
def test_ephemeral_storage_has_room_for_one_spooled_file(max_file_bytes: int, explicit: int | None,
                                                         mib: int) -> None:
    settings = BatchSettings(model_uri="s3://b/p/", max_file_bytes=max_file_bytes, ephemeral_storage_mib=explicit)
    assert settings.ephemeral_storage == mib
