"""Release Lambda: one step of a model release per call, named by ``action``.

Event: {"action": "lock"|"unlock"|"admit"|"set_weight"|"compare"|"promote"|"rollback"|"first_release"|
        "set_shadow"|"clear_shadow", "model": ..., "version": ..., and the action's own fields}.
A refusal raises the project's error; its class name (LockHeld, NotAdmitted, UnknownModel, UnknownVersion, ...)
is the error the state machine catches.

A model the registry has never seen is refused with UnknownModel before anything is written, except where a
step may meet a model before its first version: `unlock` (refused only when there is no lock to let go of),
`import_bundle` (it registers that version) and a `lock` that says `may_be_new` (the retraining machine's).
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, ClassVar, Literal

from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ..common import aws
from ..common.errors import SlimserveError
from ..common.registry import Registry
from ..common.runtime import Runtime
from ..common.settings import ReleaseSettings
from . import importer, service

rt = Runtime.for_settings(ReleaseSettings)
logger = rt.logger
settings = ReleaseSettings.from_env()

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # a model or version name, as the manifest allows
LOCK_TTL_LIMIT_SECONDS = 60 * 24 * 3600  # above any run: Step Functions and SageMaker stop well before


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    known_model: ClassVar[bool] = True
    """The step refuses a model the registry has never seen (UnknownModel), before it reads or writes."""

    model: str = Field(pattern=NAME, max_length=128)

    def needs_known_model(self) -> bool:
        return self.known_model


class _VersionStep(_Step):
    version: str = Field(pattern=NAME, max_length=128)


class Lock(_Step):
    action: Literal["lock"]
    owner: str = Field(min_length=1, max_length=1024)
    ttl_seconds: int | None = Field(default=None, gt=0, le=LOCK_TTL_LIMIT_SECONDS)
    """How long the lock holds if never released (default: the settings'); a long run asks for its own length."""
    may_be_new: bool = False
    """The run may register the model's first version (retraining): no UnknownModel for a model not seen yet."""

    def needs_known_model(self) -> bool:
        return not self.may_be_new


class Unlock(_Step):
    action: Literal["unlock"]
    owner: str = Field(min_length=1, max_length=1024)
    known_model: ClassVar[bool] = False  # a retraining run that made no version must still let go


class Admit(_VersionStep):
    action: Literal["admit"]


class SetWeight(_VersionStep):
    action: Literal["set_weight"]
    weight: int = Field(ge=0, le=100)


class Compare(_VersionStep):
    action: Literal["compare"]
    since: str = Field(min_length=10, max_length=40)
    min_requests: int = Field(default=100, ge=0)
    extended: bool = False


class Promote(_VersionStep):
    action: Literal["promote"]
    reason: str = Field(default="the canary passed every stage", max_length=1024)


class Rollback(_VersionStep):
    action: Literal["rollback"]
    reason: str = Field(min_length=1, max_length=1024)
    figures: dict[str, Any] = Field(default_factory=dict)


class FirstRelease(_VersionStep):
    action: Literal["first_release"]


class SetShadow(_VersionStep):
    """Run an admitted version beside the served model on ``share`` percent of requests, never answering."""

    action: Literal["set_shadow"]
    share: int = Field(default=service.DEFAULT_SHADOW_SHARE, ge=0, le=100)
    owner: str = Field(default="set_shadow", min_length=1, max_length=1024)
    """Whose release lock the change is made under: a run that holds the lock passes its own name."""


class ClearShadow(_Step):
    action: Literal["clear_shadow"]
    owner: str = Field(default="clear_shadow", min_length=1, max_length=1024)


class ImportBundle(_Step):
    """The retraining machine's export job output: unpacked into the model bucket, registered as a candidate."""

    action: Literal["import_bundle"]
    known_model: ClassVar[bool] = False  # it registers the version, maybe the model's first
    artifact_uri: str = Field(pattern=r"^s3://[^/]+/.+\.tar\.gz$", max_length=2048)
    model_bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


Step = Annotated[Lock | Unlock | Admit | SetWeight | Compare | Promote | Rollback | FirstRelease | SetShadow
                 | ClearShadow | ImportBundle, Field(discriminator="action")]
STEP = TypeAdapter(Step)


@cache
def registry() -> Registry:
    return Registry(aws.client("dynamodb"), settings.registry_table)


def parse(event: Any) -> Any:
    try:
        return STEP.validate_python(event)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first.get("loc", ()))) or "event"
        raise SlimserveError(f"bad release step: {where}: {first.get('msg', '')}", code="bad_request",
                             field=where) from None


def run(step: Any) -> dict[str, Any]:
    reg = registry()
    if step.needs_known_model():
        reg.require_model(step.model)
    match step:
        case Lock():
            return service.lock(reg, step.model, step.owner, step.ttl_seconds or settings.lock_ttl_seconds)
        case Unlock():
            return service.unlock(reg, step.model, step.owner)
        case Admit():
            return service.admit(reg, step.model, step.version)
        case SetWeight():
            return service.set_weight(reg, step.model, step.version, step.weight)
        case Compare():
            return service.compare(reg, settings, aws.client("cloudwatch"), step.model, step.version, step.since,
                                   step.min_requests, step.extended)
        case Promote():
            return service.promote(reg, step.model, step.version, step.reason)
        case Rollback():
            return service.rollback(reg, settings, step.model, step.version, step.reason, step.figures)
        case FirstRelease():
            return service.first_release(reg, step.model, step.version)
        case SetShadow():
            return service.set_shadow(reg, step.model, step.version, step.share, owner=step.owner,
                                      max_share=settings.max_shadow_share, lock_ttl_seconds=settings.lock_ttl_seconds)
        case ClearShadow():
            return service.clear_shadow(reg, step.model, owner=step.owner, lock_ttl_seconds=settings.lock_ttl_seconds)
        case ImportBundle():
            return importer.import_bundle(reg, aws.client("s3"), step.model, step.artifact_uri, step.model_bucket)
    raise SlimserveError(f"unknown release step {type(step).__name__}")


@rt.handler(metrics=False)  # no metrics of its own: the registry and notices say what it did
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    step = parse(event)
    result = run(step)
    logger.info("release step", extra={"action": step.action, "model": step.model,
                                       "version": getattr(step, "version", None), "result": result})
    return result


@rt.handler(metrics=False)
def import_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """The retraining machine's import function: `import_bundle` only (its role cannot move routing)."""
    step = parse(event)
    if not isinstance(step, ImportBundle):
        raise SlimserveError(f"the import function runs import_bundle only, not {step.action}", code="bad_request")
    result = run(step)
    logger.info("bundle imported", extra={"model": step.model, "result": result})
    return result
