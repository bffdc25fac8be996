# Task runner. `make help` lists the targets.
SHELL := /bin/bash
# Everything runs in the project's virtualenv (hack/bootstrap.sh creates it); VENV=... points elsewhere.
VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
PYTEST ?= $(PYTHON) -m pytest
TOOLS_ENV = eval "$$(hack/build-tools.sh --print-env)"

.PHONY: help bootstrap lint test test-unit test-integration test-chart test-k8s e2e check generate crds images up down

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

bootstrap: ## install everything the tests need (apt, pip, Go-built tools; cached)
	hack/bootstrap.sh

lint: ## ruff check, ruff format --check, mypy --strict, lint-imports (the sidecar's layers), generated files current
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy
	$(VENV)/bin/lint-imports
	$(PYTHON) hack/generate.py --check

test-unit: ## pure logic: builders, rewriting, schemas
	$(PYTEST) tests/unit

test-integration: ## sidecar and stand-in ComfyUI over real HTTP (promtool evaluates the dashboard queries)
	$(TOOLS_ENV); $(PYTEST) tests/integration

test-chart: ## helm lint/template, schema validation of the rendered chart
	$(TOOLS_ENV); $(PYTEST) tests/chart

test: test-unit test-integration test-chart ## the fast tiers

test-k8s: ## the real-API-server tier (builds Kubernetes from Go modules once, cached)
	hack/build-tools.sh
	$(TOOLS_ENV); $(PYTEST) tests/k8s

e2e: ## images built and run in Docker; real pods on kind (outside CI, skips naming what is missing)
	hack/build-tools.sh helm kind k8s etcd node
	$(TOOLS_ENV); $(PYTEST) tests/e2e

images: ## build the operator and sidecar images (tag: IMAGE_TAG, default dev)
	hack/images.sh

check: lint test test-k8s e2e ## everything CI runs

generate: ## regenerate the CRDs (crds/, helm/crds/), docs/crd-reference.md, golden files, Helm values tables
	$(PYTHON) hack/generate.py --write

crds: generate ## alias of generate

up: bootstrap ## kind cluster + images + helm install + example instance + one prompt end to end
	hack/up.sh

down: ## delete the kind cluster
	hack/down.sh
