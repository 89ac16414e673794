"""The synthesized stack in the emulated account: what `slimserve up` creates from the template `cdk synth`
writes, so that the local loop runs the stack's own definitions, names and settings.

The template is synthesized in-process once and cached under the state folder, keyed by a hash of the
`cdk/` and `functions/` sources and the context. Resources are named by their logical ids (buckets:
lowercased), and template values are rendered to the names and ARNs moto gives them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from functions.common.errors import ConfigurationError

from .apigw import FrontDoor
from .emulation import REGION

ACCOUNT = "123456789012"  # moto's default account: the ARNs a definition names must be the ones moto makes
REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("cdk", "functions")  # what the template is made from (with the context and the files below)
SOURCE_FILES = ("cdk.json", "pipeline/training/sagemaker_jobs.py")  # the training jobs' requests come from it
STACK_FILE = "template.json"

# Context of the local loop: moto runs sagemaker:createTrainingJob (not .sync); releases bake for seconds.
LOCAL_CONTEXT = {"slimserve:trainingIntegration": "request", "slimserve:batchScoring": "false",
                 "slimserve:releaseBakeSeconds": "30", "slimserve:releaseMinCanaryRequests": "20"}

# --- synth ----------------------------------------------------------------------------------------------


def sources_hash(context: Mapping[str, Any], root: Path = REPO_ROOT) -> str:
    """What names one synth: every source file under cdk/ and functions/, SOURCE_FILES and the context."""
    digest = hashlib.sha256(json.dumps(dict(context), sort_keys=True).encode())
    paths = [*(root / f for f in SOURCE_FILES), *sorted(p for folder in SOURCES for p in (root / folder).rglob("*.py"))]
    for path in paths:
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def synthesized_template(context: Mapping[str, Any], state_dir: Path,
                         say: Callable[[str], None] = print) -> dict[str, Any]:
    """The stack's template for ``context``, synthesized once per sources and context (cached in ``state_dir``)."""
    cache = Path(state_dir) / "synth" / sources_hash(context) / STACK_FILE
    if cache.is_file():
        return dict(json.loads(cache.read_text()))
    os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "18,20")
    from cdk.app import STACK_ID, build_app

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="slimserve-synth-") as work:
        layer = Path(work) / "layer"
        (layer / "python").mkdir(parents=True)  # never deployed from here: an empty layer synthesizes
        out = Path(work) / "cdk.out"
        try:
            build_app(outdir=str(out), context=context, layer_dir=layer).synth()
        except RuntimeError as exc:  # jsii's ValidationFailed: cdk-nag's findings do not stop the local loop
            if "ValidationFailed" not in str(exc):
                raise
        template = (out / f"{STACK_ID}.template.json").read_text()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(template)
    say(f"synthesized the stack in {time.perf_counter() - started:.1f} s (cached in {cache.parent})")
    return dict(json.loads(template))


# --- rendering template values ----------------------------------------------------------------------

PSEUDO = {"AWS::Partition": "aws", "AWS::AccountId": ACCOUNT, "AWS::URLSuffix": "amazonaws.com",
          "AWS::StackName": "SlimserveServing", "AWS::NoValue": None}


def bucket_name(logical_id: str) -> str:
    """A bucket's name in the emulated account: its logical id, lowercased (a valid bucket name)."""
    return logical_id.lower()


def render(value: Any, template: Mapping[str, Any], region: str = REGION) -> Any:
    """A template value as deploy time would see it in moto's account: pseudo parameters; a Ref as the
    resource's name (a bucket's lowercased id, a topic's or state machine's ARN, any other its logical id);
    an Arn as the ARN named so (a function's is the name the local Lambda dispatcher answers to)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, list):
        return [render(v, template, region) for v in value]
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return str(separator).join(str(render(p, template, region)) for p in parts)
    if "Ref" in value:
        if value["Ref"] == "AWS::Region":
            return region
        if value["Ref"] in PSEUDO:
            return PSEUDO[value["Ref"]]
        return _ref(value["Ref"], template, region)
    if "Fn::GetAtt" in value:
        logical_id, attribute = value["Fn::GetAtt"]
        return _attribute(logical_id, attribute, template, region)
    if "Fn::FindInMap" in value:
        mapping, first, second = value["Fn::FindInMap"]
        return template["Mappings"][mapping][render(first, template, region)][second]
    if "Fn::Sub" in value:
        return _substitute(value["Fn::Sub"], template, region)
    if "Fn::Select" in value:
        index, items = value["Fn::Select"]
        return render(items, template, region)[int(index)]
    if "Fn::Split" in value:
        separator, text = value["Fn::Split"]
        return str(render(text, template, region)).split(separator)
    if len(value) == 1 and next(iter(value)).startswith("Fn::"):
        raise ConfigurationError(f"cannot render {json.dumps(value)[:200]} for the emulated account")
    return {k: render(v, template, region) for k, v in value.items()}


def _substitute(value: Any, template: Mapping[str, Any], region: str) -> str:
    """Fn::Sub: ${Name} as a Ref, ${Name.Attribute} as a GetAtt, ${Var} from its own map."""
    text, variables = (value, {}) if isinstance(value, str) else value

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in variables:
            return str(render(variables[name], template, region))
        if "." in name and not name.startswith("AWS::"):
            return str(render({"Fn::GetAtt": name.split(".", 1)}, template, region))
        return str(render({"Ref": name}, template, region))

    return re.sub(r"\$\{([^}!][^}]*)\}", one, str(text))


def _kind(logical_id: str, template: Mapping[str, Any]) -> str:
    return str(template["Resources"][logical_id]["Type"])


def _ref(logical_id: str, template: Mapping[str, Any], region: str) -> str:
    kind = _kind(logical_id, template)
    if kind == "AWS::S3::Bucket":
        return bucket_name(logical_id)
    if kind == "AWS::SNS::Topic":
        return f"arn:aws:sns:{region}:{ACCOUNT}:{logical_id}"
    if kind == "AWS::StepFunctions::StateMachine":
        return f"arn:aws:states:{region}:{ACCOUNT}:stateMachine:{logical_id}"
    if kind == "AWS::SQS::Queue":
        return f"https://sqs.{region}.amazonaws.com/{ACCOUNT}/{logical_id}"
    return logical_id


def _attribute(logical_id: str, attribute: str, template: Mapping[str, Any], region: str) -> str:
    kind = _kind(logical_id, template)
    arns = {"AWS::Lambda::Function": f"arn:aws:lambda:{region}:{ACCOUNT}:function:{logical_id}",
            "AWS::IAM::Role": f"arn:aws:iam::{ACCOUNT}:role/{logical_id}",
            "AWS::S3::Bucket": f"arn:aws:s3:::{bucket_name(logical_id)}",
            "AWS::DynamoDB::Table": f"arn:aws:dynamodb:{region}:{ACCOUNT}:table/{logical_id}",
            "AWS::SQS::Queue": f"arn:aws:sqs:{region}:{ACCOUNT}:{logical_id}",
            "AWS::SNS::Topic": f"arn:aws:sns:{region}:{ACCOUNT}:{logical_id}",
            "AWS::StepFunctions::StateMachine": f"arn:aws:states:{region}:{ACCOUNT}:stateMachine:{logical_id}"}
    if attribute == "Arn" and kind in arns:
        return arns[kind]
    if attribute in ("Name", "TopicName", "QueueName"):
        return logical_id
    if attribute == "QueueUrl":
        return _ref(logical_id, template, region)
    raise ConfigurationError(f"cannot render {logical_id}.{attribute} ({kind}) for the emulated account")


def machine_definition(template: Mapping[str, Any], logical_id: str, region: str = REGION) -> str:
    """The definition of one state machine of the template, rendered for moto's interpreter."""
    body = template["Resources"][logical_id]["Properties"]["DefinitionString"]
    return str(render(body, template, region))


# --- the stack in the emulated account --------------------------------------------------------------

# Output keys of the stack (CDK adds a hash to a nested construct's output id): what the CLI reads from a
# deployed stack's outputs, and from the emulated one's. Values: the output id without its hash.
OUTPUT_NAMES = {"model": "ModelName", "table": "RegistryTableName", "model_bucket": "ModelStoreModelBucketName",
                "data_bucket": "TrainingDataBucketName", "artifacts_bucket": "TrainingArtifactsBucketName",
                "release_machine": "ReleaseStateMachineArn", "retraining_machine": "RetrainingStateMachineArn",
                "validation_function": "ValidationFunctionName", "api_url": "ServingApiUrl",
                "topic": "ReleaseTopicArn", "feedback_table": "FeedbackTableName"}
_HASH = re.compile(r"[0-9A-F]{8}")


def output_value(outputs: Mapping[str, str], name: str) -> str | None:
    """The output whose id is ``name``, with or without the hash CDK appends to a nested construct's ids."""
    for key, value in outputs.items():
        if key == name or (key.startswith(name) and _HASH.fullmatch(key[len(name):])):
            return value
    return None


def stack_endpoints(outputs: Mapping[str, str]) -> dict[str, str]:
    """The names the CLI works with (OUTPUT_NAMES' keys), from a stack's outputs; a missing one is named."""
    found = {field_name: output_value(outputs, name) for field_name, name in OUTPUT_NAMES.items()}
    missing = [OUTPUT_NAMES[k] for k, v in found.items() if v is None]
    if missing:
        raise ConfigurationError(f"the stack has no output {', '.join(missing)}: deploy this version of the stack")
    return {k: str(v) for k, v in found.items()}


@dataclass(frozen=True)
class FunctionSpec:
    """One Lambda function of the template: its handler and its environment, rendered."""

    logical_id: str
    module: str
    attribute: str
    environment: dict[str, str]


class FunctionRuntime:
    """Handler modules imported with their function's environment, as Lambda's cold start does; a module
    two functions share with different settings is re-imported (under a lock) when the other one runs."""

    def __init__(self, overrides: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.overrides = {k: dict(v) for k, v in (overrides or {}).items()}
        self.loaded: dict[str, tuple[tuple[str, str], ...]] = {}
        self.lock = threading.Lock()

    def handler(self, spec: FunctionSpec) -> Callable[[dict[str, Any], Any], Any]:
        def run(event: dict[str, Any], context: Any) -> Any:
            return getattr(self.module(spec), spec.attribute)(event, context)
        return run

    def module(self, spec: FunctionSpec) -> Any:
        import sys

        from .server import load_function

        environment = {**spec.environment, **self.overrides.get(spec.logical_id, {})}
        key = tuple(sorted(environment.items()))
        with self.lock:
            if self.loaded.get(spec.module) != key:
                load_function(spec.module, "", **environment)
                self.loaded[spec.module] = key
            return sys.modules[spec.module]


class EmulatedStack:
    """A synthesized template, read for the emulated account: its resources' names, functions and rules."""

    def __init__(self, template: Mapping[str, Any], region: str = REGION) -> None:
        self.template, self.region = template, region

    def resources(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == resource_type}

    def resource_id(self, prefix: str, resource_type: str) -> str:
        """The logical id of the one resource of this type whose id starts with ``prefix`` (its construct path)."""
        found = [k for k in self.resources(resource_type) if k.startswith(prefix)]
        if len(found) != 1:
            raise ConfigurationError(f"expected one {resource_type} under {prefix}, found {found}")
        return found[0]

    def render(self, value: Any) -> Any:
        return render(value, self.template, self.region)

    def outputs(self) -> dict[str, str]:
        """The stack's outputs as the emulated account would report them."""
        return {k: str(self.render(v["Value"])) for k, v in self.template.get("Outputs", {}).items()}

    def endpoints(self) -> dict[str, str]:
        return stack_endpoints(self.outputs())

    def bucket_names(self) -> list[str]:
        return [bucket_name(k) for k in self.resources("AWS::S3::Bucket")]

    def state_machine_arns(self) -> dict[str, str]:
        return {k: str(self.render({"Ref": k})) for k in self.resources("AWS::StepFunctions::StateMachine")}

    def functions(self) -> dict[str, FunctionSpec]:
        specs = {}
        for logical_id, resource in self.resources("AWS::Lambda::Function").items():
            properties = resource["Properties"]
            module, _, attribute = str(properties["Handler"]).rpartition(".")
            variables = self.render(properties.get("Environment", {}).get("Variables", {}))
            specs[logical_id] = FunctionSpec(logical_id, module, attribute,
                                             {k: str(v) for k, v in variables.items()})
        return specs

    def function_id(self, handler: str) -> str:
        """The logical id of the one function with this handler (module.attribute)."""
        found = [k for k, f in self.functions().items() if f"{f.module}.{f.attribute}" == handler]
        if len(found) != 1:
            raise ConfigurationError(f"expected one function with handler {handler}, found {found}")
        return found[0]

    def handlers(self, runtime: FunctionRuntime) -> dict[str, Callable[[dict[str, Any], Any], Any]]:
        """Function logical id -> the real handler with its settings: what lambda_dispatch runs."""
        return {logical_id: runtime.handler(spec) for logical_id, spec in self.functions().items()}

    def front_door(self) -> FrontDoor:
        """The API the stack deploys in front of its functions: the HTTP API (IAM or JWT) or the REST API."""
        if not self.resources("AWS::ApiGatewayV2::Api"):
            return FrontDoor("rest")
        jwt = [r["Properties"] for r in self.resources("AWS::ApiGatewayV2::Authorizer").values()
               if r["Properties"].get("AuthorizerType") == "JWT"]
        if not jwt:
            return FrontDoor("http", "iam")
        return FrontDoor("http", "jwt", str(self.render(jwt[0].get("JwtConfiguration", {}).get("Issuer", ""))))

    def api_routes(self) -> dict[tuple[str, str], str]:
        """(method, path) -> the logical id of the function the API invokes for it (an alias's function)."""
        routes = {}
        for resource in self.resources("AWS::ApiGatewayV2::Route").values():
            method, _, path = str(resource["Properties"]["RouteKey"]).partition(" ")
            integration = self.template["Resources"][self._referenced(resource["Properties"]["Target"])]
            routes[(method, path)] = self._function(integration["Properties"]["IntegrationUri"])
        for resource in self.resources("AWS::ApiGateway::Method").values():
            properties = resource["Properties"]
            routes[(properties["HttpMethod"], self._rest_path(properties["ResourceId"]))] = \
                self._function(properties.get("Integration", {}).get("Uri"))
        return {route: function for route, function in routes.items() if function}

    def _referenced(self, value: Any) -> str:
        """The logical id of the first resource a template value names (Ref or Fn::GetAtt), or ''."""
        if isinstance(value, dict):
            if "Ref" in value and value["Ref"] in self.template["Resources"]:
                return str(value["Ref"])
            if "Fn::GetAtt" in value:
                return str(value["Fn::GetAtt"][0])
            value = list(value.values())
        if isinstance(value, list):
            return next((found for found in map(self._referenced, value) if found), "")
        return ""

    def _function(self, uri: Any) -> str:
        """The function an integration invokes (through an alias, its function), or ''."""
        target = self._referenced(uri)
        if target and _kind(target, self.template) == "AWS::Lambda::Alias":
            target = self._referenced(self.template["Resources"][target]["Properties"]["FunctionName"])
        return target if target and _kind(target, self.template) == "AWS::Lambda::Function" else ""

    def _rest_path(self, resource_id: Any) -> str:
        """A REST API resource's path, from its PathPart and its parents' (the root: `/`)."""
        logical_id = self._referenced(resource_id)
        if _kind(logical_id, self.template) != "AWS::ApiGateway::Resource":
            return "/"
        properties = self.template["Resources"][logical_id]["Properties"]
        return self._rest_path(properties["ParentId"]).rstrip("/") + "/" + str(properties["PathPart"])

    def asset_uris(self) -> set[str]:
        """The S3 objects of the CDK bootstrap bucket the state machines name (the training jobs' source)."""
        found: set[str] = set()
        for logical_id in self.resources("AWS::StepFunctions::StateMachine"):
            found.update(re.findall(r"s3://cdk-[a-z0-9]+-assets-[^\"\s]+", self.machine_definition(logical_id)))
        return found

    def machine_definition(self, logical_id: str) -> str:
        return machine_definition(self.template, logical_id, self.region)

    def create(self, s3: Any, dynamodb: Any, sns: Any, stepfunctions: Any, sqs: Any = None,
               secretsmanager: Any = None) -> None:
        """Create the buckets, tables, topics, queues, generated secrets and state machines of the template in
        the emulated account."""
        for logical_id, resource in self.resources("AWS::S3::Bucket").items():
            s3.create_bucket(Bucket=bucket_name(logical_id))  # us-east-1: no location constraint
            if resource["Properties"].get("VersioningConfiguration", {}).get("Status") == "Enabled":
                s3.put_bucket_versioning(Bucket=bucket_name(logical_id),
                                         VersioningConfiguration={"Status": "Enabled"})
        for logical_id, resource in self.resources("AWS::DynamoDB::Table").items():
            properties = resource["Properties"]
            extra = {k: properties[k] for k in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes") if k in properties}
            dynamodb.create_table(TableName=logical_id, KeySchema=properties["KeySchema"],
                                  AttributeDefinitions=properties["AttributeDefinitions"],
                                  BillingMode=properties.get("BillingMode", "PAY_PER_REQUEST"), **extra)
        for logical_id in self.resources("AWS::SNS::Topic"):
            sns.create_topic(Name=logical_id)
        for logical_id in self.resources("AWS::SQS::Queue") if sqs is not None else ():
            sqs.create_queue(QueueName=logical_id)  # the URL a Ref renders to
        for logical_id, resource in self.resources("AWS::SecretsManager::Secret").items() if secretsmanager else ():
            generate = resource["Properties"].get("GenerateSecretString", {})
            value = secretsmanager.get_random_password(  # as deploy generates it (e.g. the prediction id key)
                PasswordLength=int(generate.get("PasswordLength", 32)),
                ExcludePunctuation=bool(generate.get("ExcludePunctuation", False)))["RandomPassword"]
            secretsmanager.create_secret(Name=logical_id, SecretString=value)  # the name a Ref renders to
        for logical_id, resource in self.resources("AWS::StepFunctions::StateMachine").items():
            stepfunctions.create_state_machine(name=logical_id, definition=self.machine_definition(logical_id),
                                               roleArn=str(self.render(resource["Properties"]["RoleArn"])))

    def rules(self) -> Iterator[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
        """Each enabled rule with an event pattern: (logical id, pattern, targets rendered)."""
        for logical_id, resource in self.resources("AWS::Events::Rule").items():
            properties = resource["Properties"]
            if "EventPattern" in properties and properties.get("State", "ENABLED") == "ENABLED":
                yield logical_id, dict(properties["EventPattern"]), list(self.render(properties["Targets"]))

    def scheduled_rules(self) -> list[str]:
        """Rules started by a schedule (not run locally: nothing emulates EventBridge's clock)."""
        return [k for k, v in self.resources("AWS::Events::Rule").items() if "ScheduleExpression" in v["Properties"]]


def target_input(target: Mapping[str, Any], event: Mapping[str, Any]) -> str:
    """What EventBridge sends a rule's target for ``event``: the event, a fixed input, or the transformer's."""
    if "Input" in target:
        return str(target["Input"])
    transformer = target.get("InputTransformer")
    if not transformer:
        return json.dumps(event)
    values = {name: _json_path(event, path) for name, path in transformer.get("InputPathsMap", {}).items()}
    text, out, quoted, i = str(transformer["InputTemplate"]), [], False, 0
    while i < len(text):
        match = re.match(r"<([A-Za-z0-9_.-]+)>", text[i:])
        if match and match.group(1) in values:
            value = values[match.group(1)]
            # Inside a JSON string the value goes in as text; outside, as a JSON value.
            out.append(json.dumps(value if isinstance(value, str) else json.dumps(value))[1:-1] if quoted
                       else json.dumps(value))
            i += match.end()
            continue
        if text[i] == "\\" and quoted:
            out.append(text[i:i + 2])
            i += 2
            continue
        quoted ^= text[i] == '"'
        out.append(text[i])
        i += 1
    return "".join(out)


def _json_path(event: Mapping[str, Any], path: str) -> Any:
    value: Any = event
    for part in path.removeprefix("$").strip(".").split("."):
        if part:
            value = value.get(part) if isinstance(value, Mapping) else None
    return value


def install_rules(stack: EmulatedStack, router: Any, invoke: Callable[[str, dict[str, Any]], Any],
                  start_execution: Callable[[str, str], Any]) -> list[str]:
    """Add the stack's rules to a LocalRouter: a function target runs through ``invoke(function, event)``,
    a state machine target through ``start_execution(arn, input)``. Returns the rules' ids."""
    added = []
    for logical_id, pattern, targets in stack.rules():
        def deliver(event: dict[str, Any], targets: list[dict[str, Any]] = targets) -> list[Any]:
            answers = []
            for target in targets:
                arn, payload = str(target["Arn"]), target_input(target, event)
                if ":function:" in arn:
                    answers.append(invoke(arn, json.loads(payload)))
                elif ":stateMachine:" in arn:
                    answers.append(start_execution(arn, payload))
            return answers
        router.add_rule(logical_id, pattern, deliver)
        added.append(logical_id)
    return added

