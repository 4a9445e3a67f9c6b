"""Scale-out: two service processes behind one Envoy (gateway.stack.Stack with workers=2, each
worker its own Envoy endpoint) keep answering cancels when one of them goes away under load.

- SIGKILL (a crash): only the calls that worker had in flight may fail, and Envoy answers those
  itself (a JSON 503, never a hang). Calls started after it died all succeed: Envoy retries connect
  failures on the other worker, and health checks / outlier detection take the dead one out.
- SIGTERM (a rolling restart, a scale-in): nothing fails. The worker reports NOT_SERVING, keeps
  serving until Envoy's health checks have moved traffic away, then finishes what it has and exits.

Each test starts its own stack: the one it runs against ends up a worker short.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from gateway.stack import Stack, free_port
from service.config.settings import DEFAULTS

CONCURRENCY = 8
BEFORE = 100  # answers received before the signal, so it lands mid-load
AFTER = 300  # calls started after the worker is gone; the load ends with these
MAX_CALLS = 20_000  # the bound on the load should the worker never go away
SETTLE_S = 0.1  # after a crash: Envoy's time to see the connections close
REQUEST_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Result:
    started: float  # time.monotonic()
    ended: float
    status: int | None  # None: no HTTP answer (connection error or timeout)
    body: str

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class Run:
    results: list[Result]
    signalled_at: float
    exited_at: float  # the worker was reaped: its sockets are closed

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if not r.ok]

    def started_after(self, t: float) -> list[Result]:
        return [r for r in self.results if r.started >= t]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    gateway = Stack(
        config=None,
        http_port=free_port(),
        grpc_port=free_port(),
        admin_port=free_port(),
        workers=2,
        log_dir=tmp_path / "logs",
        # The default drain delay: a worker stopped gracefully keeps serving until Envoy routes away.
        env={"DRAIN_DELAY_SECONDS": str(DEFAULTS.drain_delay_seconds)},
    )
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def service_workers(stack: Stack) -> list[subprocess.Popen]:
    """The service processes, in the order of `stack.worker_endpoints`."""
    return [p for p in stack.procs if stack._roles.get(p.pid) == "service"]


def cancel(session: requests.Session, url: str, i: int) -> Result:
    started = time.monotonic()
    try:
        resp = session.post(f"{url}/v1/batches/batch_scale_{i}/cancel?provider=openai", timeout=REQUEST_TIMEOUT_S)
        status, body = resp.status_code, resp.text
    except requests.RequestException as exc:
        status, body = None, repr(exc)
    return Result(started, time.monotonic(), status, body)


def load_with_signal(stack: Stack, victim: subprocess.Popen, sig: signal.Signals) -> Run:
    """REST cancels through Envoy from CONCURRENCY keep-alive clients. `sig` goes to `victim` once
    BEFORE answers are in; the load stops AFTER calls after the victim exited (a graceful stop
    first drains for a while, and the load goes on meanwhile)."""
    numbers = itertools.count()
    last = MAX_CALLS
    results: list[Result] = []
    lock = threading.Lock()
    warmed_up = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            while (i := next(numbers)) < last:
                result = cancel(session, stack.http_url, i)
                with lock:
                    results.append(result)
                    if len(results) >= BEFORE:
                        warmed_up.set()

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        clients = [pool.submit(client) for _ in range(CONCURRENCY)]
        assert warmed_up.wait(30), "the load did not get going"
        signalled_at = time.monotonic()
        victim.send_signal(sig)
        victim.wait(timeout=30)
        exited_at = time.monotonic()
        last = next(numbers) + AFTER  # calls numbered from here on start after the exit
        for future in clients:
            future.result(timeout=60)
    return Run(results, signalled_at, exited_at)


def host_stats(stack: Stack, endpoint: str) -> dict[str, str]:
    """Envoy's stats and health flags for the service worker's `endpoint` (`stack.worker_endpoints`)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.admin_port}/clusters", timeout=2) as resp:
        text = resp.read().decode()
    prefix = f"batchgate_service::{endpoint}::"
    return dict(line[len(prefix) :].split("::", 1) for line in text.splitlines() if line.startswith(prefix))


def test_killing_a_worker_mid_load_fails_only_its_in_flight_calls(stack: Stack) -> None:
    victim, survivor = service_workers(stack)
    victim_endpoint = stack.worker_endpoints[0]

    run = load_with_signal(stack, victim, signal.SIGKILL)

    # Every call got an HTTP answer (none hung); only calls the dead worker had in flight failed,
    # at most one per client, and Envoy answered those with its JSON 503.
    assert all(r.status is not None for r in run.results), [r for r in run.results if r.status is None]
    assert len(run.failed) <= CONCURRENCY, run.failed
    for r in run.failed:
        assert r.started < run.exited_at + SETTLE_S, r
        assert r.status == 503, r
        assert json.loads(r.body)["error"]["code"] == "upstream_unavailable"
    later = run.started_after(run.exited_at + SETTLE_S)
    assert len(later) >= AFTER // 2
    assert all(r.ok for r in later)
    # The dead worker had taken part in this load; Envoy has taken it out of rotation.
    assert int(host_stats(stack, victim_endpoint)["rq_total"]) > 0
    deadline = time.monotonic() + 5
    while "failed_active_hc" not in host_stats(stack, victim_endpoint)["health_flags"]:
        assert time.monotonic() < deadline, host_stats(stack, victim_endpoint)
        time.sleep(0.1)
    assert survivor.poll() is None


def test_stopping_a_worker_gracefully_mid_load_fails_nothing(stack: Stack) -> None:
    victim, survivor = service_workers(stack)
    victim_endpoint = stack.worker_endpoints[0]

    run = load_with_signal(stack, victim, signal.SIGTERM)

    assert run.failed == []
    assert len(run.started_after(run.exited_at)) >= AFTER - CONCURRENCY - 1
    # It drained and exited cleanly, after serving calls; the other worker carried on.
    assert victim.returncode == 0
    assert int(host_stats(stack, victim_endpoint)["rq_total"]) > 0
    assert survivor.poll() is None
