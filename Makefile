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

.PHONY: all install proto redis-server run test unit integration e2e bench bench-smoke bench-soak soak clean

all: proto

install: $(INSTALLED)

$(INSTALLED): requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $@

# One command derives all generated code (Python stubs and Envoy's descriptor set) from protos/.
proto: $(GEN_STAMP)

$(GEN_STAMP): $(PROTO) $(INSTALLED)
	rm -rf $(GEN) && mkdir -p $(GEN) build
	$(PY) -m grpc_tools.protoc -Iprotos \
		-I$$($(PY) -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))') \
		-I$$($(PY) -c 'import google.api, os; print(os.path.dirname(os.path.dirname(google.api.__path__[0])))') \
		--python_out=$(GEN) --grpc_python_out=$(GEN) \
		--include_imports --include_source_info --descriptor_set_out=$(DESCRIPTOR) $(PROTO)
	# Stubs live inside the service package: make the stub's import of its messages relative.
	sed -i 's/^from batchgate\.v1 import/from . import/' $(GEN)/batchgate/v1/batchgate_pb2_grpc.py
	touch $(GEN)/__init__.py $(GEN)/batchgate/__init__.py $(GEN)/batchgate/v1/__init__.py $@

# The rate-limit tests start their own redis-server (Debian's package): install it when missing.
redis-server:
	@command -v redis-server >/dev/null || { \
		echo "redis-server missing: apt-get install -y redis-server"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q >/dev/null || true; apt-get install -y -q redis-server >/dev/null; }
	@command -v redis-server >/dev/null

run: proto
	$(PY) -m gateway.run

test: proto redis-server
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

bench-smoke: proto redis-server
	$(PY) -m bench.run --smoke

bench-soak: proto
	$(PY) -m bench.run --rss-soak 200000

# 60 s at steady concurrency under mixed injected faults: lost requests, crashes, RSS, retries.
soak: proto
	$(PY) -m bench.soak --seconds 60

clean:
	rm -rf $(VENV) build $(GEN)
