"""End-to-end fixtures: ONE real gateway (sandbox simulators + gRPC service + Envoy) for the whole
session, started through `gateway.stack.Stack` exactly as `make run` does in sandbox mode.

Tests never reset shared state to isolate themselves: each one seeds batches under its own unique
ids (`new_id`) and reads back only the simulator calls that concern those ids (or that happened
after its own start time). Fault tests are the exception: faults are a per-provider queue, so they
go through `sim.faults(...)`, which resets the simulator afterwards if any are left over.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.stack import Stack, free_port

# Sandbox-mode credentials (gateway/stack.py: SANDBOX_KEYS, sandbox_config).
OPENAI_KEY = "sk-sandbox-openai"
AZURE_KEY = "sandbox-azure-key"
AZURE_API_VERSION = "2024-10-21"

# Headers that must never reach a REST client (gRPC internals and the service->edge channel).
INTERNAL_HEADERS = (
    "grpc-status",
    "grpc-message",
    "grpc-accept-encoding",
    "grpc-status-details-bin",
    "x-bf-error-body",
    "x-bf-status",
)


def service_log(stack: Stack) -> list[dict]:
    """The service's JSON log lines so far, every worker's (a line being written right now is skipped)."""
    assert stack.log_dir is not None, "the stack writes no logs"
    lines = []
    for raw in (stack.log_dir / "service.log").read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue
    return lines


def until(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Polls `predicate()` every 50 ms until it is truthy and returns it; fails after `timeout`
    seconds (headroom on a busy machine, not an expected duration). How end-to-end tests wait for
    something another process does."""
    deadline = time.monotonic() + timeout
    while not (held := predicate()):
        assert time.monotonic() < deadline, f"not reached within {timeout} s"
        time.sleep(0.05)
    return held


def new_id(prefix: str = "batch_e2e") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


@dataclass
class RawResponse:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class SimAdmin:
    """Client for the sandbox admin API (`/_sim/...`, sandbox/admin.py)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()

    def seed(self, provider: str = "openai", batch_id: str | None = None, **fields: Any) -> str:
        """Creates a batch; by default it stays `cancelling` long enough to read it back unchanged."""
        batch_id = batch_id or new_id()
        fields.setdefault("cancel_delay_s", 3600)
        resp = self.http.post(f"{self.url}/_sim/{provider}/batches", json={"id": batch_id, **fields}, timeout=5)
        assert resp.status_code == 201, resp.text
        return batch_id

    def batch(self, provider: str, batch_id: str) -> dict:
        resp = self.http.get(f"{self.url}/_sim/{provider}/batches/{batch_id}", timeout=5)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def calls(self, provider: str | None = None, *, since: float | None = None, batch_id: str | None = None) -> list:
        params = {"provider": provider} if provider else {}
        resp = self.http.get(f"{self.url}/_sim/calls", params=params, timeout=5)
        assert resp.status_code == 200, resp.text
        calls = resp.json()
        if since is not None:
            calls = [c for c in calls if c["at"] >= since]
        if batch_id is not None:
            calls = [c for c in calls if batch_id in c["path"]]
        return calls

    def add_faults(self, provider: str, faults: Any) -> int:
        resp = self.http.post(f"{self.url}/_sim/{provider}/faults", json=faults, timeout=5)
        assert resp.status_code == 200, resp.text
        return resp.json()["pending"]

    def reset(self) -> None:
        assert self.http.post(f"{self.url}/_sim/reset", timeout=5).status_code == 204


class Gateway:
    """REST client for the Envoy edge. `post` uses requests; `raw` sends the path bytes exactly as
    given (requests/urllib3 would normalise `..`)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.url = stack.http_url
        self.http = requests.Session()

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return self.http.post(self.url + path, **kwargs)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return self.http.request(method, self.url + path, **kwargs)

    def raw(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> RawResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.stack.http_port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return RawResponse(resp.status, resp.headers, resp.read())
        finally:
            conn.close()


@pytest.fixture(scope="package", autouse=True)
def no_drain_delay() -> Iterator[None]:
    """The gateways these tests start stop without the drain delay (DRAIN_DELAY_SECONDS=0 in the
    environment their processes inherit): it keeps a stopping worker serving 3 s for Envoy's health
    checks, which only the tests of draining need, and they set it on their Stack (test_shutdown,
    test_scale_out). Without it each stack stopped cost 3 s, ~35 s of the tier."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DRAIN_DELAY_SECONDS", "0")
        yield


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("e2e-stack-logs")
    gateway = Stack(
        config=None,
        http_port=free_port(),
        grpc_port=free_port(),
        admin_port=free_port(),
        log_dir=Path(log_dir),
    )
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="session")
def sim(stack: Stack) -> SimAdmin:
    return SimAdmin(stack.sandbox_url)


@pytest.fixture(scope="session")
def gw(stack: Stack) -> Gateway:
    return Gateway(stack)


@pytest.fixture
def t0() -> float:
    """Wall-clock start of the test (the simulator stamps recorded calls with time.time())."""
    return time.time()


@pytest.fixture
def faults(sim: SimAdmin) -> Iterator[SimAdmin]:
    """For tests that queue faults: afterwards the simulator is reset so a failing test can never
    leave faults behind for the next one (every test seeds its own ids, so nothing else is lost)."""
    yield sim
    sim.reset()
