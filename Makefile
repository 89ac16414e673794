# slimserve: every target installs what it needs into .venv (and node_modules for the CDK CLI).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20

.PHONY: demo test test-fast layer synth bench fuzz load lint checkov clean

# Serving code runs the Lambda layers' exact versions everywhere: their pinned lists constrain the venv.
SERVING_PINS := layers/runtime/requirements.txt layers/parquet/requirements.txt

$(VENV)/.installed: pyproject.toml $(SERVING_PINS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]" $(addprefix -c ,$(SERVING_PINS))
	touch $@

# checkov's own pins clash with the project's, so it has a virtualenv of its own; the stamp names the version.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

$(CHECKOV_STAMP):
	rm -rf $(CHECKOV_VENV)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)
	touch $@

## checkov: install checkov (pinned) into .venv-checkov; the infrastructure tests run it on every template
checkov: $(CHECKOV_STAMP)

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $@

# The layer build's code: the script, its package and the import checks it runs under python3.12.
LAYER_BUILD := layers/build.py $(wildcard layers/slimserve_layers/*.py layers/slimserve_layers/import_checks/*.py) \
	cdk/constructs/code_asset.py

# A failed build still writes its report: remove it, so the next make builds again.
layers/build/runtime-report.json: $(VENV)/.installed $(LAYER_BUILD) layers/runtime/requirements.txt
	$(PY) layers/build.py || { rm -f $@; exit 1; }

# Stacked on the runtime layer (its numpy, the combined 250 MB check, the import test with both).
layers/build/parquet-report.json: $(VENV)/.installed $(LAYER_BUILD) layers/parquet/requirements.txt layers/build/runtime-report.json
	$(PY) layers/build.py --recipe parquet || { rm -f $@; exit 1; }

## demo: train, bundle, serve and call a model on the local emulation (no AWS account, no Docker)
demo: $(VENV)/.installed
	$(VENV)/bin/slimserve demo

## test: the lint checks, then the whole suite (unit, infrastructure, integration, end-to-end)
test: $(VENV)/.installed $(CHECKOV_STAMP) node_modules/.installed layers/build/runtime-report.json layers/build/parquet-report.json
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest

## test-fast: everything not marked slow
test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow"

## layer: build the Lambda layers (python3.12, x86_64) without Docker: runtime, then parquet (pyarrow)
layer: $(VENV)/.installed
	$(PY) layers/build.py
	$(PY) layers/build.py --recipe parquet

## synth: synthesize the CloudFormation templates offline into cdk.out/
synth: $(VENV)/.installed node_modules/.installed layers/build/runtime-report.json layers/build/parquet-report.json
	npx cdk synth --quiet

## bench: serving latency, throughput and package size against scikit-learn; the warm handler as Lambda runs
## it (python3.12, the built layer, Tracer on: sampled and unsampled, and off) beside its floors; then cold start as Lambda
## pays it (python3.12, the built layer read-only, bundle from a local S3, Tracer on) against scikit-learn
bench: $(VENV)/.installed layers/build/runtime-report.json
	$(PY) benchmarks/serving.py
	$(PY) benchmarks/handler.py $(HANDLER_ARGS)
	$(PY) benchmarks/coldstart.py $(COLDSTART_ARGS)

## fuzz: schemathesis (all checks) against the local API's OpenAPI document, >= 2,000 cases on two bundles
fuzz: $(VENV)/.installed
	$(PY) benchmarks/fuzz.py

## load: requests/s, p50/p99 and errors at 1, 8 and 32 clients on the local API, then server memory over a soak
load: $(VENV)/.installed
	$(PY) benchmarks/load.py $(LOAD_ARGS)

## lint: ruff, mypy, the import contracts in .importlinter (a Lambda package imports only itself and
## functions.common), and no block of 8 or more duplicated lines in functions/ or cdk/
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy functions pipeline cdk layers/slimserve_layers
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/pylint --disable=all --enable=duplicate-code --min-similarity-lines=8 --score=n functions cdk

clean:
	rm -rf cdk.out layers/build demo-output .pytest_cache
