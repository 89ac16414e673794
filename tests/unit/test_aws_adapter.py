"""The one AWS adapter: SDK errors leave functions/ as the project's own classes."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from functions.common import aws
from functions.common.errors import (
    AwsError,
    BundleError,
    ObjectChanged,
    ObjectMissing,
    RegistryConflict,
    SlimserveError,
    WriteConflict,
)


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "from the service"}}, "SomeOperation")


@pytest.mark.parametrize(("code", "kind"), [
    ("NoSuchKey", ObjectMissing), ("NoSuchVersion", ObjectMissing), ("404", ObjectMissing),
    ("PreconditionFailed", ObjectChanged), ("412", ObjectChanged),
    ("ConditionalCheckFailedException", WriteConflict), ("TransactionCanceledException", WriteConflict),
    ("ExecutionAlreadyExists", WriteConflict), ("AccessDenied", AwsError),
])
def test_each_sdk_error_becomes_one_of_ours(code: str, kind: type[AwsError]) -> None:
    with pytest.raises(kind) as raised, aws.translated("reading s3://bucket/key"):
        raise client_error(code)
    assert type(raised.value) is kind and isinstance(raised.value, SlimserveError)
    assert "s3://bucket/key" in raised.value.message


def test_a_connection_failure_is_an_aws_error() -> None:
    with pytest.raises(AwsError, match="EndpointConnectionError"), aws.translated("calling S3"):
        raise EndpointConnectionError(endpoint_url="https://s3.example")


def test_a_caller_names_its_own_error_for_a_case() -> None:
    conflict = RegistryConflict("the champion changed; read again")
    with pytest.raises(RegistryConflict) as raised, aws.translated("registry", {WriteConflict: conflict}):
        raise client_error("ConditionalCheckFailedException")
    assert raised.value is conflict
    with pytest.raises(BundleError, match="AccessDenied"), aws.translated("bundle", {AwsError: BundleError}):
        raise client_error("AccessDenied")


def test_our_own_errors_and_others_pass_through() -> None:
    with pytest.raises(KeyError), aws.translated("anything"):
        raise KeyError("not from the SDK")


def test_is_not_found() -> None:
    assert aws.is_not_found(client_error("NoSuchKey")) and aws.is_not_found(ObjectMissing("gone"))
    assert not aws.is_not_found(client_error("AccessDenied")) and not aws.is_not_found(ValueError())
