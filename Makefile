.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

LOCK := requirements/dev.lock

install: $(STAMP) ## Create .venv from the lock (exact versions, hashes checked) with the project (editable)

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

lock: install ## Update requirements/*.lock: the newest versions pyproject.toml allows, with their hashes
	$(PY) -m piptools compile --quiet --upgrade --extra dev --generate-hashes --allow-unsafe \
		--strip-extras --no-emit-index-url --no-emit-find-links -o requirements/dev.lock pyproject.toml
	$(PY) -m piptools compile --quiet --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links -c requirements/dev.lock -o requirements/runtime.lock pyproject.toml

stack-up: install ## Start the local Kafka broker and Redis server on 127.0.0.1 (idempotent); SCORER_STACK=cluster for 3 Kafka nodes + a Redis Cluster
	@bash scripts/stack.sh up

stack-down: ## Stop the Kafka broker and Redis server that stack-up started (the cluster's with SCORER_STACK=cluster)
	@bash scripts/stack.sh down

stack-status: ## Say whether the local Kafka broker and Redis server are running (SCORER_STACK=cluster: every cluster node)
	@bash scripts/stack.sh status

test: install ## Run every test, the integration tests against the real local stack
	@bash scripts/test.sh

test-cluster: install ## Run the state and failover tests against the cluster stack (SCORER_STACK=cluster)
	@bash scripts/test-cluster.sh

lint: install ## Lint, check formatting and types
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

demo: install ## Set everything up, train a model, stream a replay through it, show scores
	@bash scripts/demo.sh

bench-train: install ## Benchmark: generate 1.86M sessions, check them, train; time and memory per stage
	$(PY) -m bench.train

bench-api: install ## Benchmark: /predict and a 10,000-row batch on one uvicorn process, against a pandas+sklearn baseline
	$(PY) -m bench.api

bench-stream: stack-up ## Benchmark: worker throughput (1 and 2 processes) and latency on the local stack (SCORER_STACK=cluster: on the cluster stack)
	eval "$$(bash scripts/stack.sh env)" && $(PY) -m bench.stream

bench-cost: stack-up ## Benchmark: instructions per event of the worker and of Redis (callgrind): one Redis, then a Redis Cluster of 3 masters
	$(PY) -m bench.cost
	$(PY) -m bench.cost --masters 3

clean: ## Remove generated data, models and test output (not the venv or the stack)
	rm -rf data models test-artifacts .pytest_cache

.PHONY: help install lock stack-up stack-down stack-status test test-cluster lint demo bench-train bench-api bench-stream bench-cost clean
