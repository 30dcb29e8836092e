# fmstack: `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
PYTEST_ARGS ?=
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-unit test-integration lint format models bench bench-pretrain bench-distill bench-serve chart clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

setup: ## Create the venv, install torch then fmstack, fetch data and weights (idempotent)
	@scripts/setup.sh

demo: ## The main job on an embedded local Ray: pretrain, fine-tune, distill, register, evaluate
	@scripts/demo.sh

test: setup ## Set up, then run every test tier (unit, integration, e2e)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-unit: setup ## Unit tests only (no Ray, seconds)
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

test-integration: setup ## Integration tests (one local Ray cluster, real DeepSpeed)
	$(PY) -m pytest -q -m integration $(PYTEST_ARGS)

models: setup ## Train the registry's sentiment models that the README measures (about 2 hours on 2 cores)
	fmstack finetune --config configs/finetune/smollm2-rotten-tomatoes.yaml
	fmstack distill --config configs/distill/minilm-from-smollm2.yaml
	fmstack distill --config configs/distill/minilm-student.yaml
	fmstack distill --config configs/distill/minilm-student.yaml --set distillation.alpha=0 \
	  --set distillation.augment.copies=0 --set train.epochs=8 --set checkpoint.run_name=minilm-student-labels-only \
	  --set registry.name=sentiment-student-labels-only

lint: ## ruff (lint and format check) and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: ## Apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup ## Every benchmark side by side with its baseline, one report (ARGS=--full for the full size)
	$(PY) -m benchmarks $(ARGS)

bench-pretrain: setup ## Training tokens/s (ZeRO 0/2/3, fp32/bf16) vs a plain PyTorch loop, and the machine's ceilings
	$(PY) -m benchmarks.pretrain --size quick

bench-distill: setup ## Distilled student vs teacher, int8 and labels-only baseline (registry models)
	$(PY) -m benchmarks.distill --teacher models:/sentiment@candidate --student models:/sentiment-student@candidate --baseline models:/sentiment-student-labels-only@candidate

bench-serve: setup ## /v1/classify on Ray Serve (full, distilled; batching on/off) vs a plain FastAPI server
	$(PY) -m benchmarks.serve --full models:/sentiment@candidate --distilled models:/sentiment-student@candidate

chart: ## Regenerate the chart's Serve config, then lint the chart (helm/fmstack)
	{ echo '# Built by `make chart` (fmstack serve build) from configs/serve/sentiment.yaml.'; \
	  $(VENV)/bin/fmstack serve build --config configs/serve/sentiment.yaml --set registry=/data/registry \
	    --set http.host=0.0.0.0 --set auth.enabled=true; } > helm/fmstack/files/serve-config.yaml.tmp
	mv helm/fmstack/files/serve-config.yaml.tmp helm/fmstack/files/serve-config.yaml
	$(VENV)/bin/helm lint --strict helm/fmstack

clean: ## Remove local runs and caches (keeps the venv and the data cache)
	rm -rf runs .pytest_cache .ruff_cache .mypy_cache
