"""ServingStack: model store + serving API + registry and validation gate + training (+ batch scoring when enabled).
Composes constructs only."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aws_cdk import Aspects, CfnOutput, Stack
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from ..constructs.alarms import SHADOW_AGREEMENT_THRESHOLD
from ..constructs.batch_scoring import BatchScoring, BatchScoringProps, BatchScoringSettings
from ..constructs.code_release import CodeRelease, CodeReleaseProps
from ..constructs.drift import Drift, DriftMonitorSettings, DriftProps
from ..constructs.feedback import Feedback, FeedbackProps, FeedbackSettings
from ..constructs.guardrails import FunctionGuardrails
from ..constructs.layers import DEFAULT_PARQUET_LAYER_DIR, DEFAULT_RUNTIME_LAYER_DIR, Layers, LayersProps
from ..constructs.model_registry import (
    ModelRegistry,
    ModelRegistryProps,
    ValidationGate,
    ValidationGateProps,
    ValidationGateSettings,
)
from ..constructs.model_store import ModelStore, ModelStoreProps
from ..constructs.monitoring import Monitoring
from ..constructs.release import Release, ReleaseMachineSettings, ReleaseProps
from ..constructs.retraining import Retraining, RetrainingProps, RetrainingSettings
from ..constructs.serving_api import CaptureProps, ServingApi, ServingApiProps
from ..constructs.serving_http_api import JwtAuth
from ..constructs.training import Training, TrainingProps, TrainingSettings

_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class ServingStackProps:
    model_name: str = "demo"
    """The model served and batch-scored: both follow its champion (and canary) in the registry."""
    api_key_required: bool = False
    api: Literal["rest", "http"] = "rest"
    """The front door (`-c slimserve:api=http`): the REST API, or the cheaper HTTP API without API keys."""
    jwt_auth: JwtAuth | None = None
    """JWT instead of IAM on the HTTP API's routes (`-c slimserve:apiAuth=jwt`); None: IAM."""
    capture: CaptureProps = field(default_factory=CaptureProps)
    """Request capture to the model bucket's capture/ (off by default); its expiry is `model_store`'s."""
    architecture: lambda_.Architecture = field(default_factory=lambda: lambda_.Architecture.X86_64)
    layer_dir: Path = DEFAULT_RUNTIME_LAYER_DIR
    parquet_layer_dir: Path = DEFAULT_PARQUET_LAYER_DIR
    """The parquet (pyarrow) layer of the batch functions; read only when batch scoring is on."""
    model_store: ModelStoreProps = field(default_factory=ModelStoreProps)
    registry: ModelRegistryProps = field(default_factory=ModelRegistryProps)
    validation: ValidationGateSettings = field(default_factory=ValidationGateSettings)
    batch: BatchScoringSettings | None = None
    """Batch scoring (S3 incoming/ → SQS → Lambda, Distributed Map for big CSVs); None leaves it out."""
    training: TrainingSettings = field(default_factory=TrainingSettings)
    """The SageMaker training jobs and their state machine (always on)."""
    release: ReleaseMachineSettings = field(default_factory=ReleaseMachineSettings)
    """Model releases by canary: stage weights, bake, the least canary traffic a comparison needs."""
    retraining: RetrainingSettings = field(default_factory=RetrainingSettings)
    """Retraining runs (train, import, gate, release): the schedule (off by default) and triggered runs' data."""
    drift: DriftMonitorSettings = field(default_factory=DriftMonitorSettings)
    """The drift function's schedule, window and minimum sample; its alarm starts retraining."""
    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    """Labels for prediction ids (POST /feedback, feedback/ files), the live accuracy alarm and the review queue."""
    shadow_agreement_below: float = SHADOW_AGREEMENT_THRESHOLD
    """The shadow agreement alarm's threshold (`-c slimserve:shadowAgreementBelow`): a share in (0, 1]."""

    def resolved_prefix(self) -> str:
        """The key prefix of the model's versions in the model bucket, `models/<model_name>/`."""
        if not _NAME_PART.match(self.model_name):
            raise ValueError(f"ServingStackProps.model_name must match {_NAME_PART.pattern}, got {self.model_name!r}")
        return f"models/{self.model_name}/"


class ServingStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, props: ServingStackProps, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        # Every Lambda function of the stack is traced, has reserved concurrency and retained logs, or synth stops.
        Aspects.of(self).add(FunctionGuardrails())
        # One set of layers: the gate and the batch functions load bundles exactly as inference does.
        self.layers = Layers(self, "Layers", LayersProps(
            architecture=props.architecture,
            runtime_dir=props.layer_dir,
            parquet_dir=props.parquet_layer_dir if props.batch is not None else None,
        ))
        CfnOutput(self, "ModelName", value=props.model_name,
                  description="The model this stack serves (its registry partition, its alarms' names)")
        self.monitoring = Monitoring(self, "Monitoring")
        self.model_store = ModelStore(self, "ModelStore", props.model_store)
        self.registry = ModelRegistry(self, "Registry", props.registry)
        # Serving follows the registry's routing item (champion, canary): no model is fixed at synth time.
        self.serving = ServingApi(self, "Serving", ServingApiProps(
            model_bucket=self.model_store.bucket,
            layer=self.layers.runtime,
            model_name=props.model_name,
            registry_table=self.registry.table,
            api_key_required=props.api_key_required,
            architecture=props.architecture,
            capture=props.capture,
            api=props.api,
            jwt_auth=props.jwt_auth,
        ))
        # Prediction ids, POST /feedback and the review queue join the serving function and its API.
        self.feedback = Feedback(self, "Feedback", FeedbackProps(
            model_name=props.model_name,
            model_bucket=self.model_store.bucket,
            serving=self.serving,
            layer=self.layers.runtime,
            monitoring=self.monitoring,
            architecture=props.architecture,
            settings=props.feedback,
        ))
        # Serving alarms: per model role on the handler's metrics, and on alias `live` and the API stage.
        self.role_alarms = self.monitoring.model_roles(self.serving, props.model_name)
        self.alias_alarms = self.monitoring.alias(self.serving, self.serving.function, self.serving.alias)
        self.api_alarm = self.monitoring.api_errors(self.serving, self.serving.api)
        # A shadow's errors and agreement: they notify only (a shadow is never served, nothing rolls back).
        self.shadow_alarms = self.monitoring.shadow(self.serving, props.model_name, props.shadow_agreement_below)
        # Code reaches alias `live` by canary, under the alias alarms and the model's release lock.
        self.code_release = CodeRelease(self, "CodeRelease", CodeReleaseProps(
            alias=self.serving.alias,
            alarms=self.alias_alarms,
            model_name=props.model_name,
            table=self.registry.table,
            layer=self.layers.runtime,
            architecture=props.architecture,
        ))
        self.validation = ValidationGate(self, "Validation", ValidationGateProps(
            model_bucket=self.model_store.bucket,
            table=self.registry.table,
            layer=self.layers.runtime,
            monitoring=self.monitoring,
            architecture=props.architecture,
            settings=props.validation,
        ))
        # Its buckets log to the model store's access-log bucket, like every other bucket of the stack.
        self.training = Training(self, "Training", TrainingProps(
            access_log_bucket=self.model_store.access_log_bucket,
            monitoring=self.monitoring,
            settings=props.training,
        ))
        self.release = Release(self, "Release", ReleaseProps(
            model_name=props.model_name,
            table=self.registry.table,
            layer=self.layers.runtime,
            monitoring=self.monitoring,
            architecture=props.architecture,
            settings=props.release,
        ))
        # Started by hand, by drift alarms (`slimserve-<model>-drift-*`) and by the schedule when one is set.
        self.retraining = Retraining(self, "Retraining", RetrainingProps(
            model_name=props.model_name,
            training=self.training,
            validation=self.validation,
            release=self.release,
            model_bucket=self.model_store.bucket,
            table=self.registry.table,
            layer=self.layers.runtime,
            monitoring=self.monitoring,
            architecture=props.architecture,
            settings=props.retraining,
        ))
        # Captured traffic against the champion's profile, hourly: the drift alarm starts the retraining above.
        self.drift = Drift(self, "Drift", DriftProps(
            model_name=props.model_name,
            model_store=self.model_store,
            table=self.registry.table,
            layer=self.layers.runtime,
            monitoring=self.monitoring,
            architecture=props.architecture,
            settings=props.drift,
        ))
        self.batch: BatchScoring | None = None
        if props.batch is not None:
            # Same model, registry, layer and log bucket as serving: each file is scored by the champion then.
            self.batch = BatchScoring(self, "Batch", BatchScoringProps(
                model_bucket=self.model_store.bucket,
                model_name=props.model_name,
                registry_table=self.registry.table,
                layer=self.layers.runtime,
                parquet_layer=self.layers.require_parquet(),
                access_log_bucket=self.model_store.access_log_bucket,
                monitoring=self.monitoring,
                architecture=props.architecture,
                settings=props.batch,
            ))
        # Last: the dashboard draws every function and dead-letter queue the alarms above watch.
        self.dashboard = self.monitoring.dashboard(
            props.model_name, self.serving.function, self.serving.api, batch=self.batch is not None,
            live_accuracy_threshold=props.feedback.live_accuracy_threshold)
