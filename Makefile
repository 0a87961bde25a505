# customkd — `make help` lists the targets. Variables pass through to the CLI.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
CUSTOMKD := $(VENV)/bin/customkd
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

# Only what you set is passed on: every other setting is the config dataclasses' default
# (featcache/config.py, trainer/config.py). TEACHER and DATA name the cache, so they have values here
# (the same as extract's defaults: a test checks).
TEACHER ?= efficientnet_lite0
DATA ?= elpv
# caches/<last part of DATA>-<TEACHER>.zarr with ':' and '/' as '-' (report/config.py default_cache: a test keeps them equal)
CACHE ?= caches/$(subst :,-,$(notdir $(patsubst %/,%,$(DATA))))-$(subst /,-,$(subst :,-,$(TEACHER))).zarr
CONFIG ?=
UNLABELED ?=
VIEWS ?=
TEACHER_SIZE ?=
TAP ?=
STUDENT ?=
METHOD ?=
SETTING ?=
EPOCHS ?=
IMG_SIZE ?=
RUN ?=
ARGS ?=
DEVICE ?=
# torchrun: NPROC processes per node (extract: one shard owner each; distill: DDP ranks)
NPROC ?= 1
NNODES ?= 1
NODE_RANK ?= 0
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?= 29500
ifeq ($(NPROC)$(NNODES),11)
LAUNCH := $(CUSTOMKD)
else
LAUNCH := $(VENV)/bin/torchrun --nproc_per_node=$(NPROC) --nnodes=$(NNODES) --node_rank=$(NODE_RANK) \
	--master_addr=$(MASTER_ADDR) --master_port=$(MASTER_PORT) -m customkd.cli
endif

# glibc's default allocator makes PyTorch page-fault heavily on CPU (docs/design.md §9); keep freed memory.
export GLIBC_TUNABLES ?= glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736

.PHONY: help install lock extract distill demo test lint format bench report clean-caches

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'
	@echo "Variables: TEACHER DATA CACHE UNLABELED VIEWS TEACHER_SIZE TAP CONFIG STUDENT METHOD SETTING EPOCHS IMG_SIZE RUN ARGS"
	@echo "           NPROC NNODES NODE_RANK MASTER_ADDR MASTER_PORT (torchrun)"
	@echo "           REPORT_ARGS (make report; e.g. '--seeds 0,1 --epochs 2 --regimes main --variants student,kd,customkd')"

# pip -qq and no Python warnings: the install prints errors only (setuptools' editable-install notice is not one)
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	PYTHONWARNINGS=ignore $(PY) -m pip install -qq --upgrade pip
	PYTHONWARNINGS=ignore $(PY) -m pip install -qq -e '.[dev]' -c constraints.txt
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## Create .venv and install the pinned set (once; again when pyproject.toml or constraints.txt change)

lock: $(STAMP) ## Pin the installed dependency set into constraints.txt (after changing pyproject.toml)
	@{ sed -n '1,2p' constraints.txt; $(PY) -m pip freeze --exclude-editable; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt

extract: $(STAMP) ## Extract teacher features: TEACHER DATA CACHE UNLABELED VIEWS TEACHER_SIZE TAP CONFIG ARGS
	$(LAUNCH) extract --teacher $(TEACHER) --data $(DATA) --out $(CACHE) $(if $(CONFIG),--config $(CONFIG)) \
		$(foreach u,$(UNLABELED),--unlabeled $(u)) $(if $(VIEWS),--views $(VIEWS)) \
		$(if $(TEACHER_SIZE),--teacher-size $(TEACHER_SIZE)) $(if $(TAP),--tap $(TAP)) $(ARGS)

distill: $(STAMP) ## Train a student from a cache: CACHE STUDENT METHOD SETTING EPOCHS IMG_SIZE RUN CONFIG ARGS
	$(LAUNCH) distill --cache $(CACHE) $(if $(CONFIG),--config $(CONFIG)) $(if $(STUDENT),--student $(STUDENT)) \
		$(if $(METHOD),--method $(METHOD)) $(if $(SETTING),--setting $(SETTING)) $(if $(EPOCHS),--epochs $(EPOCHS)) \
		$(if $(IMG_SIZE),--image-size $(IMG_SIZE)) $(if $(RUN),--out $(RUN)) $(ARGS)

demo: ## The embedded default end to end: make extract, then make distill with 10 % of the labels (SSL)
	$(MAKE) extract
	$(MAKE) distill ARGS="--label-fraction 0.1 $(ARGS)"

test: $(STAMP) ## Run the test suite
	$(PY) -m pytest -q tests

bench: $(STAMP) ## Benchmark suite, ratios measured side by side (CPU; DEVICE=cuda on a GPU): table + bench/results/latest.json
	$(PY) -m bench.run $(if $(DEVICE),--device $(DEVICE))

report: $(STAMP) ## 3 regimes x methods x 5 seeds and a teacher comparison on one store (one extraction per teacher): docs/results.md, figures, README table
	$(CUSTOMKD) report --cache $(CACHE) --teacher $(TEACHER) --data $(DATA) $(if $(VIEWS),--views $(VIEWS)) $(REPORT_ARGS)

lint: $(STAMP) ## Check style with ruff
	$(VENV)/bin/ruff check customkd tests bench

format: $(STAMP) ## Rewrite style with ruff
	$(VENV)/bin/ruff check --fix customkd tests bench
	$(VENV)/bin/ruff format customkd tests bench
