# The two commands of the README: `make test` and `make demo`. Both set up .venv first (pip only).
# `make docs` builds the documentation site (docs/, mkdocs.yml) into data/site.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Extra arguments, e.g. `make demo DEMO_ARGS=--full` for every prompt instead of a stratified sample.
DEMO_ARGS ?=
BENCHMARK_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Telemetry off (dagster.yaml also says so for Dagster instances).
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export DAGSTER_DISABLE_TELEMETRY := true

# Debian's chromium for the UI tests (Playwright drives it; nothing is downloaded by the test tool itself).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian's PostgreSQL server binaries (any version; Debian 12 ships 15) for the PostgreSQL pipeline test, which
# starts its own throwaway server on 127.0.0.1 (tests/pipelines/test_postgres.py).
POSTGRES_INITDB := $(or $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb)),/usr/lib/postgresql/15/bin/initdb)

.PHONY: setup test demo benchmark docs lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	# torch first and alone: the CPU build on disk; any other torch request pulls a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

$(CHROMIUM):
	$(SUDO) apt-get install -y -q chromium || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium)

$(POSTGRES_INITDB):
	$(SUDO) apt-get install -y -q postgresql || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q postgresql)

# LiteLLM's proxy in a scratch venv of its own (benchmarks/litellm_peer.py; ~1 min from the package index), for the
# tests of the LiteLLM plug-in (integrations/litellm_uniroute) against a real LiteLLM proxy. `make test` does not
# build it first: the first test that needs it does (the litellm_venv fixture), while the other workers go on.
LITELLM := data/bench/litellm/venv/bin/litellm

$(LITELLM): | setup
	$(BIN)/python -c 'import benchmarks.rollout_litellm as b; b.ensure_litellm_venv(b.LITELLM_ROOT)'

# Files run on 3 workers (--dist loadfile keeps a file's module fixtures on one): most tests wait on servers and
# subprocesses, so 3 workers on 2 cores took the suite from 11 to 7 minutes here.
test: setup lint $(CHROMIUM) $(POSTGRES_INITDB)
	$(BIN)/pytest -n 3 --dist loadfile

# The main job: the pipeline's whole story (profile, cluster map, router v1; onboard 4 LLMs on half their validation
# prompts: router v2; the nightly run asks the rest: router v3).
demo: setup
	$(BIN)/python -m pipelines.demo $(DEMO_ARGS)

# The routing-quality benchmark (issue 3's protocol) on a stratified sample; BENCHMARK_ARGS=--full for all.
benchmark: setup
	$(BIN)/python -m benchmarks.routing_quality $(BENCHMARK_ARGS)

# The docs site, offline (Material theme, no plugin that fetches); --strict fails on a broken link or anchor and on a
# page left out of mkdocs.yml's nav (tests/test_docs.py builds it the same way).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict  # into data/site (mkdocs.yml site_dir)

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache
