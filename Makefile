# batchgate: `make run` starts the gateway (sandbox mode without CONFIG), `make test` runs every test.
# Both set up everything they need: the virtualenv, pinned dependencies and generated code.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PROTO := protos/batchgate/v1/batchgate.proto
GEN := service/gen
GEN_STAMP := $(GEN)/.generated
DESCRIPTOR := build/batchgate.pb
# The client package (client/): its own stubs, generated from the same protos/, and its install.
CLIENT_STUBS := build/client-stubs.stamp
CLIENT_INSTALLED := $(VENV)/.client-installed

.PHONY: all install proto lint typecheck-client redis-server run test unit integration e2e bench bench-smoke bench-soak bench-bulk soak clean

all: proto

install: $(INSTALLED) $(CLIENT_INSTALLED)

$(INSTALLED): requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $@

# One command derives all generated code (Python stubs and Envoy's descriptor set) from protos/.
proto: $(GEN_STAMP) $(CLIENT_STUBS) $(CLIENT_INSTALLED)

# googleapis-common-protos ships google/longrunning/operations.proto as operations_proto.proto but
# registers it in Python (and Envoy's descriptor set must name it) under the canonical name: protoc
# reads a copy under that name from build/proto-include. The service's stubs for the
# google.longrunning.Operations service are the ones that package ships (operations_pb2_grpc).
PROTO_INCLUDE := build/proto-include
PROTOC_INCLUDES = -Iprotos -I$(PROTO_INCLUDE) \
	-I$$($(PY) -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))') \
	-I$$($(PY) -c 'import google.api, os; print(os.path.dirname(os.path.dirname(google.api.__path__[0])))')

$(GEN_STAMP): $(PROTO) $(INSTALLED)
	rm -rf $(GEN) $(PROTO_INCLUDE) && mkdir -p $(GEN) $(PROTO_INCLUDE)/google/longrunning
	cp $$($(PY) -c 'import google.longrunning, os; print(os.path.join(google.longrunning.__path__[0], "operations_proto.proto"))') \
		$(PROTO_INCLUDE)/google/longrunning/operations.proto
	$(PY) -m grpc_tools.protoc $(PROTOC_INCLUDES) --python_out=$(GEN) --grpc_python_out=$(GEN) $(PROTO)
	# Envoy's descriptor set: every type an Any in an answer can hold (the operation's metadata,
	# response and error details), google.rpc's error details included, or the transcoder answers 502.
	$(PY) -m grpc_tools.protoc $(PROTOC_INCLUDES) --include_imports --include_source_info \
		--descriptor_set_out=$(DESCRIPTOR) $(PROTO) google/rpc/error_details.proto
	# Stubs live inside the service package: make the stub's import of its messages relative.
	sed -i 's/^from batchgate\.v1 import/from . import/' $(GEN)/batchgate/v1/batchgate_pb2_grpc.py
	touch $(GEN)/__init__.py $(GEN)/batchgate/__init__.py $(GEN)/batchgate/v1/__init__.py $@

# The client's copy lives in client/batchgate_client/_proto with relative imports (it must not need
# the service); its package build runs the same generator, so a pip install of client/ has them too.
$(CLIENT_STUBS): $(PROTO) $(INSTALLED) client/gen_stubs.py
	mkdir -p build
	$(PY) client/gen_stubs.py
	touch $@

# The client, editable, puts the `batchgate` command into the virtualenv. The .pth file puts this
# checkout on the path, so `batchgate config check` finds the service's config rules from anywhere.
# `compat` makes the editable install a plain path entry, which type checkers follow (an import
# hook, setuptools' default, they cannot), so `make lint` checks examples against it.
$(CLIENT_INSTALLED): $(CLIENT_STUBS) client/pyproject.toml client/setup.py
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
		--config-settings editable_mode=compat -e ./client
	$(PY) -c 'import sys, sysconfig; open(sysconfig.get_paths()["purelib"] + "/batchgate-checkout.pth", "w").write(sys.argv[1] + "\n")' "$(CURDIR)"
	touch $@

# The rate-limit tests start their own redis-server (Debian's package): install it when missing.
redis-server:
	@command -v redis-server >/dev/null || { \
		echo "redis-server missing: apt-get install -y redis-server"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q >/dev/null || true; apt-get install -y -q redis-server >/dev/null; }
	@command -v redis-server >/dev/null

run: proto
	$(PY) -m gateway.run

# Lint: layers import only downward (import-linter), ruff's rules and its formatting, and the
# client's types.
lint: proto typecheck-client
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The client package under mypy --strict (client/pyproject.toml), then client/examples/ as a service
# author's CI would check it, against the installed package: mypy --strict and pyright (strict).
# misuse.py holds mistakes each checker must report (an ignore it no longer needs is an error).
typecheck-client: proto
	cd client && $(abspath $(VENV))/bin/mypy
	$(VENV)/bin/mypy --config-file client/examples/mypy.ini client/examples
	$(VENV)/bin/pyright --pythonpath $(abspath $(PY)) -p client/examples

test: lint redis-server
	$(PY) -m pytest -q

unit: proto
	$(PY) -m pytest -q tests/unit

integration: proto redis-server
	$(PY) -m pytest -q tests/integration

e2e: proto redis-server
	$(PY) -m pytest -q tests/e2e

# Benchmark (not part of `make test`): gateway overhead over a direct provider call.
bench: proto redis-server
	$(PY) -m bench.run

# Only what a rate-limit check adds (embedded store and Redis), interleaved rounds, ~2 min.
bench-limits: proto redis-server
	$(PY) -m bench.run --limits-only

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
