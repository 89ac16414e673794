"""CodeRelease: code reaches alias `live` by a CodeDeploy canary, watched by the alias alarms.

Alias `live` belongs to code: `cdk deploy` publishes a new version (the function's `current_version`, whose
hash follows the code asset and the configuration) and CodeDeploy shifts the alias to it by canary; an
alias alarm, a failed hook or a failed deployment rolls the alias back. Models never move the alias (they
are routed inside the function by the registry), and the two kinds of release never overlap: the
BeforeAllowTraffic hook takes the served model's release lock (owner `codedeploy:<deployment id>`) or
fails, stopping the code release; AfterAllowTraffic releases it (`functions/release/hooks.py`).

The hooks are two small functions, not the release function: CodeDeploy's hook event carries no action
and no phase, and each hook may touch only the lock of its model and report to this deployment group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_codedeploy as codedeploy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from functions.common.settings import CodeDeployHookSettings

from .checks import check_range
from .function import FunctionProps, SlimserveFunction
from .nag import ack, arn_token

BEFORE_HANDLER = "functions.release.hooks.before_allow_traffic_handler"
AFTER_HANDLER = "functions.release.hooks.after_allow_traffic_handler"
_OWNER = "CodeReleaseProps"
_INVOKED_BY = "CodeDeploy (a lifecycle hook: a hook that never reports fails the deployment at its timeout)"
_CODEDEPLOY_POLICY = "arn:<AWS::Partition>:iam::aws:policy/service-role/AWSCodeDeployRoleForLambdaLimited"


@dataclass(frozen=True)
class CodeReleaseProps:
    alias: lambda_.Alias
    """Alias `live`, on the function's `current_version`."""
    alarms: Sequence[cloudwatch.IAlarm]
    """The alias alarms (errors, throttles, p99 duration): any in ALARM rolls the code release back."""
    model_name: str
    """The model the function serves: the hooks take and release its release lock."""
    table: dynamodb.ITable
    """The model registry, where the lock lives."""
    layer: lambda_.ILayerVersion
    deployment_config: codedeploy.ILambdaDeploymentConfig = field(
        default_factory=lambda: codedeploy.LambdaDeploymentConfig.CANARY_10_PERCENT_5_MINUTES)
    lock_ttl_seconds: int = 1800
    """A code release stopped before AfterAllowTraffic leaves the lock; it frees itself after this."""
    architecture: lambda_.Architecture = field(default_factory=lambda: lambda_.Architecture.X86_64)

    def validate(self) -> None:
        if not self.alarms:
            raise ValueError(f"{_OWNER}.alarms must hold the alias alarms: without them a bad canary is never "
                             "rolled back")
        if not self.model_name:
            raise ValueError(f"{_OWNER}.model_name must name the served model whose release lock the hooks take")
        check_range(_OWNER, "lock_ttl_seconds", self.lock_ttl_seconds, 600, 24 * 3600,
                    hint="at least the canary's bake; at most a day of blocked model releases")


class CodeRelease(Construct):
    def __init__(self, scope: Construct, construct_id: str, props: CodeReleaseProps) -> None:
        super().__init__(scope, construct_id)
        props.validate()
        self.props = props
        settings = CodeDeployHookSettings(registry_table=props.table.table_name, model_name=props.model_name,
                                          lock_ttl_seconds=props.lock_ttl_seconds)
        self.before_hook = self._hook("BeforeTrafficHook", BEFORE_HANDLER, settings,
                                      "take the model's release lock", ["dynamodb:PutItem", "dynamodb:GetItem"])
        self.after_hook = self._hook("AfterTrafficHook", AFTER_HANDLER, settings,
                                     "release the model's release lock", ["dynamodb:DeleteItem"])
        self.application = codedeploy.LambdaApplication(self, "Application")
        # pre_hook/post_hook grant PutLifecycleEventHookExecutionStatus on this group's ARN only, and the
        # group's role may invoke exactly these two functions.
        self.deployment_group = codedeploy.LambdaDeploymentGroup(
            self, "DeploymentGroup",
            application=self.application,
            alias=props.alias,
            deployment_config=props.deployment_config,
            alarms=list(props.alarms),
            auto_rollback=codedeploy.AutoRollbackConfig(
                failed_deployment=True, stopped_deployment=True, deployment_in_alarm=True),
            pre_hook=self.before_hook,
            post_hook=self.after_hook,
        )
        role = self.deployment_group.role
        ack(role, f"AwsSolutions-IAM4[Policy::{_CODEDEPLOY_POLICY}]",
            "CodeDeploy's own service role policy for Lambda: alias updates and hook invocations")
        for hook in (self.before_hook, self.after_hook):
            ack(role, f"AwsSolutions-IAM5[Resource::{arn_token(hook)}:*]",
                "grant_invoke: this hook function's own versions only")

    def _hook(self, construct_id: str, handler: str, settings: CodeDeployHookSettings, does: str,
              actions: list[str]) -> SlimserveFunction:
        fn = SlimserveFunction(self, construct_id, FunctionProps(
            handler=handler,
            description=f"slimserve code release hook: {does}",
            settings=settings,
            layers=[self.props.layer],
            memory_size=256,
            timeout_seconds=60,
            reserved_concurrency=2,
            architecture=self.props.architecture,
            invoked_by=_INVOKED_BY,
        ))
        # The lock item of the served model: IAM can name the partition (the model), not the sort key.
        fn.add_to_role_policy(iam.PolicyStatement(
            sid="ReleaseLock", actions=actions, resources=[self.props.table.table_arn],
            conditions={"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [self.props.model_name]}}))
        return fn
