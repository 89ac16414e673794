"""CodeDeploy lifecycle hooks of a code release (`cdk deploy` shifting alias `live` by canary).

BeforeAllowTraffic takes the served model's release lock (owner `codedeploy:<deployment id>`), so no
model release runs while new code takes traffic and no code release starts while a model release holds
the lock; AfterAllowTraffic releases it. CodeDeploy's hook event carries only `DeploymentId` and
`LifecycleEventHookExecutionId` (no phase, no action), so each phase is its own function with its own
handler here. Each reports its verdict with PutLifecycleEventHookExecutionStatus: Failed stops the code
release and CodeDeploy rolls alias `live` back.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..common import aws
from ..common.errors import SlimserveError
from ..common.registry import Registry
from ..common.runtime import Runtime
from ..common.settings import CodeDeployHookSettings

HookStatus = Literal["Succeeded", "Failed"]
OWNER_PREFIX = "codedeploy:"

rt = Runtime.for_settings(CodeDeployHookSettings)
logger = rt.logger
settings = CodeDeployHookSettings.from_env()


class HookEvent(BaseModel):
    """What CodeDeploy sends a lifecycle hook."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    deployment_id: str = Field(alias="DeploymentId", pattern=r"^[A-Za-z0-9-]{1,128}$")
    hook_execution_id: str = Field(alias="LifecycleEventHookExecutionId", min_length=1, max_length=4096)

    @property
    def owner(self) -> str:
        return f"{OWNER_PREFIX}{self.deployment_id}"


def parse(event: Any) -> HookEvent:
    try:
        return HookEvent.model_validate(event)
    except ValidationError as exc:
        where = ".".join(map(str, exc.errors()[0].get("loc", ()))) or "event"
        raise SlimserveError(f"not a CodeDeploy hook event: {where}", code="bad_request", field=where) from None


def report(codedeploy: Any, hook: HookEvent, status: HookStatus) -> None:
    """Tell CodeDeploy the hook's verdict (it waits for this call, not for the function's answer)."""
    with aws.translated(f"CodeDeploy deployment {hook.deployment_id}"):
        codedeploy.put_lifecycle_event_hook_execution_status(
            deploymentId=hook.deployment_id, lifecycleEventHookExecutionId=hook.hook_execution_id, status=status)


def before_allow_traffic(registry: Registry, codedeploy: Any, model: str, ttl_seconds: int,
                         hook: HookEvent) -> HookStatus:
    """Take the model's release lock for the code release; a lock held by a model release fails the hook."""
    status: HookStatus = "Succeeded"
    try:
        registry.take_lock(model, hook.owner, ttl_seconds)
        logger.info("code release holds the model's release lock", extra={"model": model, "owner": hook.owner})
    except SlimserveError as exc:  # LockHeld, or a registry that cannot say: no new code meanwhile
        status = "Failed"
        logger.error("code release stopped: the model's release lock could not be taken",
                     extra={"model": model, "owner": hook.owner, "error": exc.code, "reason": str(exc)})
    report(codedeploy, hook, status)
    return status


def after_allow_traffic(registry: Registry, codedeploy: Any, model: str, hook: HookEvent) -> HookStatus:
    """Release the lock (idempotent). The new code already serves all traffic, so a lock that could not be
    released is logged, not a failure: it frees itself when it expires."""
    try:
        released = registry.release_lock(model, hook.owner)
        logger.info("code release let go of the model's release lock",
                    extra={"model": model, "owner": hook.owner, "released": released})
    except SlimserveError as exc:
        logger.error("the model's release lock was not released; it frees itself when it expires",
                     extra={"model": model, "owner": hook.owner, "error": exc.code, "reason": str(exc)})
    report(codedeploy, hook, "Succeeded")
    return "Succeeded"


@cache
def registry() -> Registry:
    return Registry(aws.client("dynamodb"), settings.registry_table)


def codedeploy() -> Any:
    """The client the verdicts go to (one seam: moto's CodeDeploy does not take hook statuses)."""
    return aws.client("codedeploy")


@rt.handler(metrics=False)
def before_allow_traffic_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    hook = parse(event)
    return {"status": before_allow_traffic(registry(), codedeploy(), settings.model_name,
                                           settings.lock_ttl_seconds, hook)}


@rt.handler(metrics=False)
def after_allow_traffic_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    hook = parse(event)
    return {"status": after_allow_traffic(registry(), codedeploy(), settings.model_name, hook)}
