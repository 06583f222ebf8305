.DEFAULT_GOAL := help
SHELL := /bin/bash
PY ?= .venv/bin/python

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

stack-up: ## Start the local Kafka broker and Redis server on 127.0.0.1 (idempotent)
	@bash scripts/stack.sh up

stack-down: ## Stop the Kafka broker and Redis server that stack-up started
	@bash scripts/stack.sh down

stack-status: ## Say whether the local Kafka broker and Redis server are running
	@bash scripts/stack.sh status

.PHONY: help stack-up stack-down stack-status
