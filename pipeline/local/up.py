"""`slimserve up`: the emulated account kept running, with the stack's own resources, and the commands that
use it (release, rollback, status, retrain), which reach a deployed stack the same way through its outputs.

`up` runs moto's server in this process (so moto's Step Functions interpreter runs the synthesized release and
retraining machines, their Lambda tasks answered by the real handlers through the local dispatcher), puts
what the handlers emit as EMF into moto's CloudWatch, evaluates the role alarms on a timer into a local
EventBridge router (the stack's rules: champion alarm -> rollback function, drift alarm -> retraining machine),
and serves the local API in front of the real handlers (inference, routed by the registry, and feedback) as
the stack's front door (REST API, or HTTP API with IAM or JWT) hands them their events. `<state-dir>/up.json`
tells the other commands where it all is.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from functions.common.errors import ConfigurationError, SlimserveError, UnknownModel

from .apigw import FrontDoor
from .emulation import FAKE_CREDENTIALS, REGION, STATE_MACHINES
from .stack import LOCAL_CONTEXT, EmulatedStack, FunctionRuntime, install_rules, stack_endpoints, synthesized_template

UP_FILE = "up.json"
DEFAULT_STATE_DIR = ".slimserve"
INFERENCE_HANDLER = "functions.inference.handler.lambda_handler"
Say = Callable[[str], None]


class EmulationNotRunning(SlimserveError):
    """No `slimserve up` answers where the state folder says one runs."""

    status = 503
    code = "emulation_not_running"


@dataclass(frozen=True)
class UpOptions:
    port: int = 8080
    moto_port: int = 5000
    host: str = "127.0.0.1"
    model: str | None = None
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    context: Mapping[str, str] = field(default_factory=dict)
    """CDK context over the local defaults (LOCAL_CONTEXT), e.g. slimserve:releaseBakeSeconds."""
    routing_ttl_seconds: str | None = None
    """Over the stack's ROUTING_TTL_SECONDS of the inference function (None: the stack's)."""
    alarm_interval_seconds: float = 10.0


def up_context(options: UpOptions) -> dict[str, str]:
    model = {"slimserve:modelName": options.model} if options.model else {}
    return {**LOCAL_CONTEXT, **model, **options.context}


def run_up(options: UpOptions, say: Say = print, serving: Callable[[], None] | None = None) -> int:
    """Start everything, write up.json, call ``serving`` (e.g. to turn signals into KeyboardInterrupt), serve
    until interrupted (KeyboardInterrupt), then clean up."""
    import logging

    from moto.server import ThreadedMotoServer

    state_dir = Path(options.state_dir)
    with contextlib.suppress(EmulationNotRunning):
        other = running_up(state_dir)
        raise ConfigurationError(f"slimserve up already runs for {state_dir} (pid {other['pid']}, "
                                 f"{other['endpoint_url']}): stop it first, or give another --state-dir")
    state_dir.mkdir(parents=True, exist_ok=True)
    stack = EmulatedStack(synthesized_template(up_context(options), state_dir, say))
    endpoints = stack.endpoints()
    os.environ.update(FAKE_CREDENTIALS)  # fake credentials before any client: nothing reaches a real account
    for noisy in ("werkzeug", "moto"):  # moto's server logs every call, its interpreter each unsupported detail
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # The interpreter logs a Choice's test of an absent path as an error; a run's real failure is in its history.
    logging.getLogger("moto.stepfunctions.parser").setLevel(logging.CRITICAL)
    moto = ThreadedMotoServer(ip_address=options.host, port=options.moto_port, verbose=False)
    moto.start()
    try:
        moto_port = moto.get_host_and_port()[1]
        endpoint = f"http://{options.host}:{moto_port}"
        os.environ["MOTO_PORT"] = str(moto_port)  # where moto's Step Functions interpreter calls the services
        os.environ["AWS_ENDPOINT_URL"] = endpoint  # every client of this process, the handlers' too
        _configure_moto(endpoint, dict(STATE_MACHINES))
        with contextlib.ExitStack() as running:
            api = running.enter_context(_emulation(stack, options, endpoint, say))
            api_url = f"http://{options.host}:{api.server_address[1]}"
            up_file = state_dir / UP_FILE
            _write_json(up_file, {**endpoints, "api_url": api_url, "endpoint_url": endpoint, "pid": os.getpid(),
                                  "region": REGION, "buckets": sorted(stack.bucket_names()),
                                  "state_machines": stack.state_machine_arns()})
            running.callback(up_file.unlink, missing_ok=True)
            _say_running(say, endpoints, api_url, endpoint, up_file, stack.front_door())
            try:
                if serving is not None:
                    serving()
                api.serve_forever()
            except KeyboardInterrupt:
                say("stopping")
    finally:
        moto.stop()
    return 0


def _configure_moto(endpoint: str, config: dict[str, Any]) -> None:
    """moto's server takes its configuration at /moto-api/config (here: run state machines, no Docker)."""
    from urllib.request import Request, urlopen

    request = Request(f"{endpoint}/moto-api/config", data=json.dumps(config).encode(), method="POST",
                      headers={"Content-Type": "application/json"})
    with urlopen(request, timeout=30) as response:
        response.read()


@contextlib.contextmanager
def _emulation(stack: EmulatedStack, options: UpOptions, endpoint: str, say: Say) -> Iterator[Any]:
    """The stack's resources, the dispatcher, EMF forwarding, the alarm timer and the local API."""
    import boto3

    from functions.common import aws

    from .alarms import AlarmEvaluator, LocalRouter
    from .lambdas import forward_emf, lambda_dispatch
    from .server import make_server

    aws.client.cache_clear()
    clients = {name: boto3.client(name, region_name=REGION)  # type: ignore[call-overload]
               for name in ("s3", "dynamodb", "sns", "sqs", "stepfunctions", "cloudwatch", "secretsmanager")}
    stack.create(clients["s3"], clients["dynamodb"], clients["sns"], clients["stepfunctions"], clients["sqs"],
                 clients["secretsmanager"])
    serving = stack.function_id(INFERENCE_HANDLER)
    overrides = {serving: {"ROUTING_TTL_SECONDS": options.routing_ttl_seconds}} if options.routing_ttl_seconds else {}
    runtime = FunctionRuntime(overrides)
    model = stack.endpoints()["model"]
    with contextlib.ExitStack() as running:
        dispatcher = running.enter_context(lambda_dispatch(stack.handlers(runtime)))
        running.enter_context(forward_emf(clients["cloudwatch"]))
        training = _local_training_jobs(stack, clients["s3"])
        if training is not None:
            running.enter_context(training)
        else:
            say("note: no local stand-in for SageMaker training jobs here: retraining runs create jobs that "
                "never write a model")
        router = LocalRouter()

        def start(arn: str, payload: str) -> Any:
            return clients["stepfunctions"].start_execution(stateMachineArn=arn, input=payload)["executionArn"]

        install_rules(stack, router, dispatcher.invoke, start)
        for rule in stack.scheduled_rules():
            say(f"note: rule {rule} runs on a schedule, which the emulation does not keep")
        evaluator = AlarmEvaluator(clients["cloudwatch"], router, model)
        _register_alarms(clients["cloudwatch"], model)
        stop = threading.Event()
        timer = threading.Thread(target=_evaluate_alarms, args=(evaluator, stop, options.alarm_interval_seconds, say),
                                 name="slimserve-alarms", daemon=True)
        timer.start()
        running.callback(timer.join)
        running.callback(stop.set)
        functions = stack.functions()
        routes = {route: runtime.handler(functions[function]) for route, function in stack.api_routes().items()}
        api = make_server(runtime.handler(functions[serving]), options.host, options.port,
                          front_door=stack.front_door(), routes=routes)
        running.callback(api.server_close)
        say(f"emulated account at {endpoint}: {len(stack.bucket_names())} buckets, the registry table, "
            f"{len(stack.state_machine_arns())} state machines, {len(router.rules)} EventBridge rules")
        yield api


def _local_training_jobs(stack: EmulatedStack, s3: Any) -> contextlib.AbstractContextManager[Any] | None:
    """The local stand-in that makes moto's CreateTrainingJob run the training job scripts, where present,
    with the jobs' source bundle where `cdk deploy` would have put the stack's asset."""
    try:
        from . import sagemaker  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None
    from urllib.parse import urlparse

    for uri in sorted(stack.asset_uris()):
        bucket = urlparse(uri).netloc
        if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
            s3.create_bucket(Bucket=bucket)
        sagemaker.put_source_bundle(s3, uri)
    return sagemaker.local_training_jobs()  # type: ignore[no-any-return]


def _register_alarms(cloudwatch: Any, model: str) -> None:
    """The role alarms in moto's CloudWatch (which never evaluates them): `status` reads their state there."""
    from .alarms import model_alarms

    for name, spec in model_alarms(model).items():
        cloudwatch.put_metric_alarm(
            AlarmName=name, Namespace=spec.namespace, MetricName=spec.metric_name, Period=spec.period_seconds,
            EvaluationPeriods=spec.datapoints, Threshold=spec.threshold, ComparisonOperator=spec.comparison,
            Dimensions=[{"Name": spec.dimension, "Value": model}] + [{"Name": k, "Value": v}
                                                                     for k, v in spec.fixed_dimensions],
            **({"ExtendedStatistic": spec.statistic} if spec.statistic.startswith("p")
               else {"Statistic": spec.statistic}))
        cloudwatch.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="no data: an idle role is healthy")


def _evaluate_alarms(evaluator: Any, stop: threading.Event, interval: float, say: Say) -> None:
    """Every ``interval`` seconds: the role alarms, from the serving metrics; a change is put on the router."""
    while not stop.wait(interval):
        try:
            for event in evaluator.evaluate():
                detail = event["detail"]
                say(f"alarm {detail['alarmName']}: {detail['previousState']['value']} -> {detail['state']['value']}")
                evaluator.cloudwatch.set_alarm_state(AlarmName=detail["alarmName"], StateValue=detail["state"]["value"],
                                                     StateReason=detail["state"]["reason"][:1023])
        except Exception as exc:  # a failed evaluation is retried at the next tick, as CloudWatch would
            say(f"alarm evaluation failed: {type(exc).__name__}: {exc}")


def _say_running(say: Say, endpoints: Mapping[str, str], api_url: str, endpoint: str, up_file: Path,
                 front_door: FrontDoor) -> None:
    model = endpoints["model"]
    token = front_door.example_token()
    auth = f" -H 'Authorization: Bearer {token}'" if token else ""
    say(f"slimserve up: model {model}\n"
        f"  local API       {api_url}   (the stack's routes: inference, routed by the registry; feedback)\n"
        f"  front door      {front_door.describe()}\n"
        + (f"  example token   {token}   (unsigned: iss {front_door.issuer}, sub local-user)\n" if token else "")
        + f"  AWS endpoint    {endpoint}   (moto: registry {endpoints['table']}, bucket {endpoints['model_bucket']})\n"
        f"  state           {up_file}\n"
        f"try:\n"
        f"  curl -s {api_url}/health{auth}\n"
        f"  slimserve release --bundle BUNDLE_DIR --holdout HOLDOUT.csv\n"
        f"  curl -s -X POST {api_url}/predict -H 'Content-Type: application/json'{auth} "
        f"-d '{{\"instances\": [[...]]}}'\n"
        f"  slimserve status\n"
        f"Ctrl-C to stop")


def _write_json(path: Path, body: Mapping[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(body, indent=2))
    partial.replace(path)


# --- where the commands act: the running `up`, or a deployed stack ---------------------------------------

@dataclass(frozen=True)
class Target:
    """The names the commands use (stack outputs) and how to say where they act."""

    endpoints: dict[str, str]
    where: str
    local: bool

    def __getitem__(self, name: str) -> str:
        return self.endpoints[name]


def running_up(state_dir: Path) -> Target:
    """The `slimserve up` the state folder names; every client of this process is pointed at its account."""
    up_file = Path(state_dir) / UP_FILE
    hint = "start it with `slimserve up` (in another terminal)"
    if not up_file.is_file():
        raise EmulationNotRunning(f"no emulated account is running ({up_file} not found): {hint}")
    state = json.loads(up_file.read_text())
    if not _answers(int(state["pid"]), str(state["endpoint_url"])):
        raise EmulationNotRunning(f"the emulated account of {up_file} (pid {state['pid']}) is gone: {hint}")
    os.environ.update(FAKE_CREDENTIALS)
    os.environ["AWS_ENDPOINT_URL"] = str(state["endpoint_url"])
    return Target(endpoints={k: str(v) for k, v in state.items() if isinstance(v, (str, int))},
                  where=f"the emulated account ({state['endpoint_url']})", local=True)


def _answers(pid: int, endpoint: str) -> bool:
    from urllib.error import URLError
    from urllib.request import urlopen

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process by that id: the endpoint decides
    try:
        with urlopen(f"{endpoint}/moto-api/config", timeout=5) as response:
            return bool(200 <= response.status < 300)
    except (URLError, OSError):
        return False


def deployed_stack(stack_name: str, cloudformation: Any = None) -> Target:
    """A deployed stack, read through its outputs (the credentials and region of the default session)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = cloudformation or boto3.client("cloudformation")
    try:
        (stack,) = client.describe_stacks(StackName=stack_name)["Stacks"]
    except (ClientError, BotoCoreError) as exc:
        raise ConfigurationError(f"cannot read stack {stack_name}: {exc}") from exc
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return Target(endpoints=stack_endpoints(outputs), where=f"stack {stack_name}", local=False)


# --- the commands' work ---------------------------------------------------------------------------

def release_bundle(target: Target, bundle: Path, holdout: Path, say: Say = print,
                   poll_seconds: float | None = None) -> dict[str, Any]:
    """Upload the bundle and holdout, let the validation function judge the candidate, then run the stack's
    release machine and follow it. Returns the outcome (first_release, promoted, rolled_back, refused)."""
    import boto3

    from functions.common.manifest import MANIFEST_FILE, Manifest

    from .emulation import upload_bundle

    manifest = Manifest.model_validate_json((Path(bundle) / MANIFEST_FILE).read_bytes())
    if manifest.name != target["model"]:
        hint = f"start `slimserve up --model {manifest.name}`" if target.local else "deploy a stack for it"
        raise UnknownModel(f"{target.where} serves model {target['model']!r}, the bundle is {manifest.name!r}: {hint}")
    if not Path(holdout).is_file():
        raise ConfigurationError(f"the holdout {holdout} is not a file")
    s3 = boto3.client("s3")
    uri = upload_bundle(s3, bundle, target["model_bucket"], create_bucket=False)
    holdout_key = f"holdout/{manifest.name}/{Path(holdout).name}"
    s3.put_object(Bucket=target["model_bucket"], Key=holdout_key, Body=Path(holdout).read_bytes())
    say(f"uploaded {manifest.name} {manifest.version} to {uri} ({target.where})")
    verdict = invoke(target["validation_function"], {"candidate_uri": uri,
                                                     "holdout_uri": f"s3://{target['model_bucket']}/{holdout_key}"})
    say(f"gate: {'ADMITTED' if verdict['admitted'] else 'REFUSED'} ({verdict.get('summary', '')})")
    state_input = {"model": manifest.name, "version": manifest.version}
    return {**state_input, **follow(target["release_machine"], state_input, say, poll_seconds)}


def invoke(function: str, event: Mapping[str, Any]) -> dict[str, Any]:
    """One synchronous Lambda invoke; a function error becomes the project's error with its message."""
    import boto3

    answer = boto3.client("lambda").invoke(FunctionName=function, Payload=json.dumps(event).encode())
    payload = json.loads(answer["Payload"].read() or b"{}")
    if answer.get("FunctionError"):
        raise SlimserveError(f"{function} failed: {payload.get('errorType')}: {payload.get('errorMessage')}",
                             code="function_error")
    return dict(payload)


def follow(machine_arn: str, state_input: Mapping[str, Any], say: Say = print,
           poll_seconds: float | None = None, name: str | None = None) -> dict[str, Any]:
    """Start an execution, print each state as it is entered, and return how it ended: the output (with
    ``outcome``) when it succeeded, else ``{"outcome": "refused"|"failed", "error", "cause"}``."""
    import boto3

    client = boto3.client("stepfunctions")
    poll = poll_seconds if poll_seconds is not None else (0.2 if os.environ.get("AWS_ENDPOINT_URL") else 5.0)
    started = client.start_execution(stateMachineArn=machine_arn, input=json.dumps(dict(state_input)),
                                      name=name or f"cli-{uuid.uuid4()}")
    arn = started["executionArn"]
    say(f"execution {arn}")
    seen = 0
    while True:
        described = client.describe_execution(executionArn=arn)
        events = [e for page in client.get_paginator("get_execution_history").paginate(executionArn=arn)
                  for e in page["events"]]
        for event in events[seen:]:
            entered = event.get("stateEnteredEventDetails")
            if entered:
                say(f"  {entered['name']}")
        seen = len(events)
        if described["status"] != "RUNNING":
            break
        time.sleep(poll)
    return ended(described)


def ended(described: Mapping[str, Any]) -> dict[str, Any]:
    if described["status"] == "SUCCEEDED":
        return dict(json.loads(described.get("output") or "{}"))
    error = str(described.get("error", described["status"]))
    refused = error in {"NotAdmitted", "LockHeld", "UnknownVersion", "UnknownModel", "NoChampion"} \
        or error.endswith("InputRefused")
    return {"outcome": "refused" if refused else "failed", "error": error, "cause": described.get("cause", "")}


def outcome_line(what: str, outcome: Mapping[str, Any]) -> str:
    """`release cancer v2: rolled_back (errors: ...)`: the outcome and why."""
    reason = outcome.get("reason") or (outcome.get("compare") or {}).get("reason") \
        if outcome["outcome"] == "rolled_back" else None
    if outcome["outcome"] in ("refused", "failed"):
        reason = f"{outcome['error']}: {outcome.get('cause', '')}".strip(": ")
    return f"{what}: {outcome['outcome']}" + (f" ({reason})" if reason else "")


def start_retraining(target: Target, data: Path, column: str, model: str | None, say: Say = print,
                     seed: int = 7, poll_seconds: float | None = None) -> dict[str, Any]:
    """Split the table as training does, upload train/validation/holdout to the data bucket and the holdout to
    the model bucket (the gate's), then run the stack's retraining machine and follow it."""
    import io

    import boto3

    from pipeline.training.contract import read_table
    from pipeline.training.data import DataRefused, split, usable, validate_data
    from pipeline.training.sagemaker_jobs import run_id_for

    name = model or target["model"]
    if name != target["model"]:
        raise UnknownModel(f"{target.where} retrains model {target['model']!r}, not {name!r}")
    frame = read_table(Path(data))
    report = validate_data(frame, column, None)
    if report["fatal"]:
        raise DataRefused("; ".join(report["fatal"]))
    run_id = run_id_for(str(Path(data).resolve()))
    prefix = f"{name}/{run_id}"
    s3 = boto3.client("s3")
    for part, rows in split(usable(frame, report), column, report["task"], seed).items():
        body = io.BytesIO()
        rows.to_parquet(body, index=False)
        s3.put_object(Bucket=target["data_bucket"], Key=f"{prefix}/{part}/{part}.parquet", Body=body.getvalue())
        if part == "holdout":
            s3.put_object(Bucket=target["model_bucket"], Key=f"holdout/{name}/{run_id}.csv",
                          Body=rows.to_csv(index=False).encode())
    say(f"uploaded {Path(data).name} as s3://{target['data_bucket']}/{prefix}/ (train, validation, holdout)")
    state_input = {"model": name, "run_id": run_id, "data_prefix": prefix, "hyperparameters": {"target": column},
                   "holdout_uri": f"s3://{target['model_bucket']}/holdout/{name}/{run_id}.csv"}
    return follow(target["retraining_machine"], state_input, say, poll_seconds, name=run_id)


def describe_alarms(model: str) -> dict[str, str]:
    """The state of each alarm named for the model (`slimserve-<model>-*`), where the account keeps them."""
    import boto3

    alarms = boto3.client("cloudwatch").describe_alarms(AlarmNamePrefix=f"slimserve-{model}-")["MetricAlarms"]
    return {a["AlarmName"]: a["StateValue"] for a in alarms}
