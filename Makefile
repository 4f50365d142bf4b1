# candleflow — two commands do everything on a fresh machine with Python 3.11:
#   make up     create .venv from the lock, start the local stack, run the pipeline once
#   make test   the whole test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch's CPU wheel is served from a local wheel folder on this machine kind (the registry's
# plain torch is the multi-GB CUDA build); uv ignores pip's config, so pass it explicitly.
WHEELS ?= /opt/wheels
FIND_LINKS := $(if $(wildcard $(WHEELS)),--find-links $(WHEELS),)
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: up down status test test-fast lint lock venv clean
.DEFAULT_GOAL := help

help:
	@echo "make up      start the local stack and run the pipeline once (UI on :8080, admin/admin)"
	@echo "make test    run the whole test suite"
	@echo "make down    stop what make up started"
	@echo "make status  which local services run"
	@echo "make lint    ruff (incl. the AIR rules)"
	@echo "make lock    re-compile requirements.lock from requirements.txt"

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check "$$(grep -E '^uv==' requirements.lock)"
	# --compile-bytecode: this machine sets PYTHONDONTWRITEBYTECODE, so without it every process
	# recompiles torch/GX/Airflow sources on import (seconds per task).
	$(BIN)/uv pip sync --compile-bytecode --python $(BIN)/python $(FIND_LINKS) requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

lock:
	$(BIN)/uv pip compile requirements.txt -o requirements.lock --python-version 3.11 $(FIND_LINKS)

up: venv
	$(BIN)/python -m candleflow.demo

down:
	@test -x $(BIN)/python && $(BIN)/python -m candleflow.stack down || true

status: venv
	$(BIN)/python -m candleflow.stack status

test: venv
	$(BIN)/python -m pytest tests

lint: venv
	$(BIN)/ruff check .

clean: down
	rm -rf .stack
