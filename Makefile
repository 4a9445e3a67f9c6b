# batchgate: `make run` starts the gateway (sandbox mode without CONFIG), `make test` runs every test.
# Both set up everything they need: the virtualenv, pinned dependencies and generated code.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')
GEN := service/gen
GEN_STAMP := $(GEN)/.generated
DESCRIPTOR := build/batchgate.pb
# The contract of the latest release, which `buf breaking` compares protos/ against (make proto-release).
BUF_BASELINE := protos/release.binpb
# The client package (client/): its own stubs, generated from the same protos/, and its install.
CLIENT_INSTALLED := $(VENV)/.client-installed

.PHONY: all install proto proto-release deploy-config lint typecheck typecheck-client redis-server promtool run test unit integration e2e mutate bench bench-ops bench-limits bench-bounds bench-render bench-smoke bench-soak bench-bulk soak clean

all: proto

install: $(INSTALLED) $(CLIENT_INSTALLED)

$(INSTALLED): requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $@

# One command derives all generated code from protos/ (gateway/codegen.py, which the Dockerfile runs
# too): the service's and the client's stubs, Envoy's descriptor set, the OpenAPI document the edge
# serves, and the googleapis .proto files buf reads.
proto: $(GEN_STAMP) $(CLIENT_INSTALLED)

$(GEN_STAMP): $(PROTOS) $(INSTALLED) gateway/codegen.py gateway/openapi.py gateway/envoy.yaml.tmpl client/gen_stubs.py
	$(PY) -m gateway.codegen
	touch $@

# The client, editable, puts the `batchgate` command into the virtualenv. The .pth file puts this
# checkout on the path, so `batchgate config check` finds the service's config rules from anywhere.
# `compat` makes the editable install a plain path entry, which type checkers follow (an import
# hook, setuptools' default, they cannot), so `make lint` checks examples against it.
$(CLIENT_INSTALLED): $(GEN_STAMP) client/pyproject.toml client/setup.py
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
		--config-settings editable_mode=compat -e ./client
	$(PY) -c 'import sys, sysconfig; open(sysconfig.get_paths()["purelib"] + "/batchgate-checkout.pth", "w").write(sys.argv[1] + "\n")' "$(CURDIR)"
	touch $@

# deploy/generated/: Envoy's config for Kubernetes and the files it reads, which deploy/kustomization.yaml
# turns into the batchgate-envoy ConfigMap (`kubectl apply -k deploy/`). Its Envoy balances over
# batchgate-service in NAMESPACE and serves its stats for Prometheus on 9902.
NAMESPACE ?= default
DEPLOY_GENERATED ?= deploy/generated
deploy-config: proto
	mkdir -p $(DEPLOY_GENERATED)
	$(PY) -m gateway.render --bind-host 0.0.0.0 --assets-dir /etc/envoy --stats-port 9902 \
		--upstream-dns batchgate-service.$(NAMESPACE).svc.cluster.local:50051 --out $(DEPLOY_GENERATED)/envoy.yaml
	cp $(DESCRIPTOR) build/openapi.json $(DEPLOY_GENERATED)/

# The rate-limit tests start their own redis-server (Debian's package): install it when missing.
redis-server:
	@command -v redis-server >/dev/null || { \
		echo "redis-server missing: apt-get install -y redis-server"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q >/dev/null || true; apt-get install -y -q redis-server >/dev/null; }
	@command -v redis-server >/dev/null

# The alert rules' tests (deploy/monitoring/) run Debian's promtool (package prometheus): install it
# when missing (only promtool is used).
promtool:
	@command -v promtool >/dev/null || { \
		echo "promtool missing: apt-get install -y --no-install-recommends prometheus"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q >/dev/null || true; apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
	@command -v promtool >/dev/null

run: proto
	$(PY) -m gateway.run

# Lint: layers import only downward (import-linter), ruff's rules and its formatting, the service's
# and the client's types; the gRPC contract (buf's rules, buf.yaml; nothing released broken); the
# Dockerfile (hadolint).
lint: proto typecheck typecheck-client
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf breaking protos --against $(BUF_BASELINE)
	$(VENV)/bin/hadolint Dockerfile

# When a release is cut: its contract becomes the one `buf breaking` compares against.
proto-release: proto
	$(VENV)/bin/buf build protos --exclude-source-info -o $(BUF_BASELINE)

# The service under mypy --strict ([tool.mypy] in pyproject.toml; the generated stubs are read for
# their types, not checked).
typecheck: proto
	$(VENV)/bin/mypy

# The client package under mypy --strict (client/pyproject.toml), then client/examples/ as a service
# author's CI would check it, against the installed package: mypy --strict and pyright (strict).
# misuse.py holds mistakes each checker must report (an ignore it no longer needs is an error).
typecheck-client: proto
	cd client && $(abspath $(VENV))/bin/mypy
	$(VENV)/bin/mypy --config-file client/examples/mypy.ini client/examples
	$(VENV)/bin/pyright --pythonpath $(abspath $(PY)) -p client/examples

# The ten slowest tests close the output: where the suite's time goes, in every CI log.
test: lint redis-server promtool
	$(PY) -m pytest -q --durations=10

unit: proto promtool
	$(PY) -m pytest -q tests/unit

integration: proto redis-server
	$(PY) -m pytest -q tests/integration

e2e: proto redis-server
	$(PY) -m pytest -q tests/e2e

# Mutation testing (not part of `make test` or CI: about an hour on two shared cores). mutmut changes
# the modules [tool.mutmut] in pyproject.toml names (access, rate limits, redaction, the error
# envelope) one small edit at a time, in a copy of the tree (mutants/), and runs the unit and
# integration tests that reach each edit, at low priority. A mutant no test notices "survived": the
# README's Mutation testing section lists them. `$(VENV)/bin/mutmut show NAME` shows one.
# Rerun when those modules change.
MUTATE_CHILDREN ?= 2
mutate: proto redis-server
	rm -rf mutants
	nice -n 10 $(VENV)/bin/mutmut run --max-children $(MUTATE_CHILDREN)
	$(VENV)/bin/mutmut export-cicd-stats
	$(PY) -c 'import json; s = json.load(open("mutants/mutmut-cicd-stats.json")); \
		caught = s["killed"] + s["timeout"]; scored = s["total"] - s["skipped"]; \
		print(f"mutation score: {caught}/{scored} = {100 * caught / scored:.1f}% caught, {s}")'
	$(VENV)/bin/mutmut results

# Benchmark (not part of `make test`): gateway overhead over a direct provider call, then cancel
# by selector at scale (bench-ops) and what a 100,000-batch operation's answer costs the event loop
# (bench-render).
bench: proto redis-server
	$(PY) -m bench.run
	$(PY) -m bench.operations
	$(PY) -m bench.operation_render

# Only cancel by selector: 10,000 batches dry and real, and 1,000 at a provider's 50 cancels/s (~1 min).
bench-ops: proto
	$(PY) -m bench.operations

# Only reading and rendering a done operation of 100,000 batches, in process, ~20 s.
bench-render: proto
	$(PY) -m bench.operation_render

# Only what a rate-limit check adds (embedded store and Redis), interleaved rounds, ~2 min.
bench-limits: proto redis-server
	$(PY) -m bench.run --limits-only

# Only what the per-caller bounds (issue 21) cost the single cancel: with against without, ~3 min.
bench-bounds: proto redis-server
	$(PY) -m bench.run --bounds-only

bench-smoke: proto redis-server
	$(PY) -m bench.run --smoke

bench-soak: proto
	$(PY) -m bench.run --rss-soak 200000

# One bulk cancel of 1,000 sandbox batches (no wait), timed, with the service's peak RSS.
bench-bulk: proto
	$(PY) -m bench.bulk --items 1000 --runs 3

# 60 s at steady concurrency under mixed injected faults: lost requests, crashes, RSS, retries.
soak: proto
	$(PY) -m bench.soak --seconds 60

clean:
	rm -rf $(VENV) build $(GEN) client/batchgate_client/_proto client/build client/*.egg-info
