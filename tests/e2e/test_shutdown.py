"""Graceful shutdown through the whole gateway: SIGTERM to the service while cancels are in flight,
SIGTERM under load, a burst of calls exactly at the signal, and a restart. A dedicated stack (its own
sandbox, service and Envoy), so killing its service never disturbs the other end-to-end tests.

On SIGTERM the service turns NOT_SERVING (gRPC health and REST /health), keeps serving for
DRAIN_DELAY_SECONDS while Envoy's health checks take it out of rotation (at the next check, up to 1 s),
then refuses new calls and gives in-flight ones GRACE_SECONDS. With this stack's single replica,
calls that arrive once Envoy stopped routing get Envoy's Bifrost 503.

Every client call has a short timeout: a hang fails the test instead of stalling the run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.stack import Stack, free_port
from service.config.settings import DEFAULTS
from service.edge.server import GRACE_SECONDS, SERVICE_NAME
from tests.e2e.conftest import SimAdmin, new_id

CLIENT_TIMEOUT = 8.0  # far above any answer time here; a request that needs it counts as hung
EXIT_LIMIT = DEFAULTS.drain_delay_seconds + GRACE_SECONDS
SERVICE_DOWN = {
    "is_bifrost_error": True,
    "status_code": 503,
    "error": {
        "type": "upstream_error",
        "code": "upstream_unavailable",
        "message": "batchgate service is unavailable",
        "param": None,
    },
    "extra_fields": {"provider": "", "request_type": "batch_cancel"},
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = Path(tmp_path_factory.mktemp("shutdown-stack"))
    stack = Stack(
        config=None,
        http_port=free_port(),
        grpc_port=free_port(),
        admin_port=free_port(),
        log_dir=logs,
        # One caller (this test, anonymous on loopback) sends bursts of 128 calls to one worker.
        sandbox_config={"client": {"limits": {"calls_per_caller": 512}}},
        env={"DRAIN_DELAY_SECONDS": str(DEFAULTS.drain_delay_seconds)},  # the default, drained
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def admin(gateway: Stack) -> Iterator[SimAdmin]:
    sim = SimAdmin(gateway.sandbox_url)
    sim.reset()
    yield sim
    sim.reset()


def service_proc(stack: Stack) -> subprocess.Popen:
    """The running service process; restarted first when an earlier test left it stopped."""
    alive = [p for p in stack.procs if p.poll() is None and "service" in p.args]
    if alive:
        (proc,) = alive
        return proc
    return restart_service(stack, [p for p in stack.procs if "service" in p.args][-1])


def restart_service(stack: Stack, old: subprocess.Popen) -> subprocess.Popen:
    """Starts the service again with the same command line (same ports) and waits until Envoy
    routes to it."""
    proc = stack._spawn("service", list(old.args))
    end = time.monotonic() + 10
    while time.monotonic() < end:
        assert proc.poll() is None, "the restarted service exited"
        if stack.worker_listening(0):
            break
        time.sleep(0.05)
    while time.monotonic() < end:
        try:
            resp = requests.post(f"{stack.http_url}/v1/batches/{new_id()}/cancel?provider=openai", timeout=2)
            if resp.status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise AssertionError("Envoy did not route to the restarted service in time")


def cancel(stack: Stack, batch_id: str, session: requests.Session | None = None):
    """(sent, answered, status or exception name, body) of one REST cancel through Envoy."""
    sent = time.monotonic()
    try:
        resp = (session or requests).post(
            f"{stack.http_url}/v1/batches/{batch_id}/cancel?provider=openai", timeout=CLIENT_TIMEOUT
        )
        return sent, time.monotonic(), resp.status_code, resp.content
    except requests.Timeout:
        return sent, time.monotonic(), "hung", b""
    except requests.RequestException as exc:
        return sent, time.monotonic(), type(exc).__name__, b""


def grpc_health(stack: Stack) -> str:
    with grpc.insecure_channel(stack.worker_targets[0]) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=1
            )
        except grpc.RpcError as err:
            return err.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def assert_answered_or_bifrost_503(results, ids, admin: SimAdmin) -> None:
    """No hang, no reset; every cancel that reached the provider reported 200; every other answer a
    Bifrost 503."""
    statuses = [status for _, _, status, _ in results]
    hung = statuses.count("hung")
    broken = sorted({s for s in statuses if isinstance(s, str) and s != "hung"})
    assert hung == 0, f"{hung} requests got no answer within {CLIENT_TIMEOUT}s"
    assert broken == [], f"connection errors instead of answers: {broken}"
    reached = {call["path"].split("/")[4] for call in admin.calls("openai")}
    lost = [batch_id for batch_id, status in zip(ids, statuses, strict=True) if batch_id in reached and status != 200]
    assert lost == [], f"cancels made upstream but not reported as done: {lost}"
    for _, _, status, body in results:
        if status != 200:
            assert (status, json.loads(body)) == (503, SERVICE_DOWN), (status, body[:200])


def test_sigterm_drains_in_flight_cancels_and_exits_zero(gateway: Stack, admin: SimAdmin) -> None:
    n = 12
    ids = [admin.seed("openai") for _ in range(n)]
    admin.add_faults("openai", {"latency_ms": 300, "count": n})
    proc = service_proc(gateway)
    assert grpc_health(gateway) == "SERVING"

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(cancel, gateway, batch_id) for batch_id in ids]
        end = time.monotonic() + 5
        while len(admin.calls("openai")) < n:  # every call is now at the provider
            assert time.monotonic() < end, "the cancels did not all reach the provider"
            time.sleep(0.01)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        health_while_draining = grpc_health(gateway)
        returncode = proc.wait(EXIT_LIMIT + 2)
        exited = time.monotonic() - signalled
        results = [f.result(timeout=CLIENT_TIMEOUT + 2) for f in futures]

    assert health_while_draining == "NOT_SERVING"
    statuses = [status for _, _, status, _ in results]
    assert statuses == [200] * n, statuses
    for (_, _, _, body), batch_id in zip(results, ids, strict=True):
        answer = json.loads(body)
        assert (answer["id"], answer["status"]) == (batch_id, "cancelling")
        assert admin.batch("openai", batch_id)["status"] == "cancelling"
    assert returncode == 0
    assert exited < EXIT_LIMIT


def test_sigterm_under_load_every_request_answered_then_restart(gateway: Stack, admin: SimAdmin) -> None:
    total, concurrency = 300, 8
    # 50 ms per call: the load outlasts Envoy's reaction, so calls arrive before, during and after it.
    admin.add_faults("openai", {"latency_ms": 50, "count": total})
    proc = service_proc(gateway)
    ids = [f"batch_load_{i}_{new_id()}" for i in range(total)]
    answered = 0
    lock = threading.Lock()
    signalled: list[float] = []
    local = threading.local()

    def one(i: int):
        nonlocal answered
        if not hasattr(local, "session"):
            local.session = requests.Session()
        result = cancel(gateway, ids[i], local.session)
        with lock:
            answered += 1
            if answered == total // 4 and not signalled:
                signalled.append(time.monotonic())
                proc.send_signal(signal.SIGTERM)
        return result

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(total)))
    elapsed = time.monotonic() - started
    returncode = proc.wait(EXIT_LIMIT + 2)

    assert signalled, "the load finished before the signal"
    sigterm_at = signalled[0]
    assert_answered_or_bifrost_503(results, ids, admin)
    statuses = [status for _, _, status, _ in results]
    # Calls sent before the signal are all served. (Envoy takes a NOT_SERVING replica out of rotation
    # at its next health check, up to 1 s later; with one replica, calls after that get its 503.)
    early = [
        (round(sent - sigterm_at, 3), status)
        for sent, _, status, _ in results
        if sent < sigterm_at - 0.05 and status != 200
    ]
    assert early == [], f"calls sent before the signal were refused: {early}"
    assert statuses.count(200) > total // 4
    assert returncode == 0
    assert elapsed < 20

    # Restart: the same command line comes back on the same ports and Envoy routes to it again.
    restart_service(gateway, proc)
    batch_id = admin.seed("openai")
    resp = requests.post(f"{gateway.http_url}/v1/batches/{batch_id}/cancel?provider=openai", timeout=5)
    assert resp.status_code == 200 and resp.json()["status"] == "cancelling"


def test_sigterm_burst_at_the_signal_every_call_served_or_bifrost_503(gateway: Stack, admin: SimAdmin) -> None:
    # Regression: without a drain delay, calls reaching the gRPC core as it stopped were cancelled and
    # the REST caller got HTTP 499 with the transcoder's own {"code":1,"message":"CANCELLED"} body
    # (a 128-call burst hit it in 8 of 8 runs).
    burst = 128
    local = threading.local()
    ids = [new_id("burst") for _ in range(burst)]

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return local.session

    proc = service_proc(gateway)
    with ThreadPoolExecutor(burst) as pool:
        list(pool.map(lambda i: cancel(gateway, new_id("warm"), session()), range(burst * 2)))  # keep-alive conns
        barrier = threading.Barrier(burst + 1)

        def fire(batch_id: str):
            barrier.wait(timeout=5)
            return cancel(gateway, batch_id, session())

        futures = [pool.submit(fire, batch_id) for batch_id in ids]
        barrier.wait(timeout=5)
        proc.send_signal(signal.SIGTERM)
        results = [f.result(timeout=CLIENT_TIMEOUT + 2) for f in futures]
    assert proc.wait(EXIT_LIMIT + 2) == 0

    assert_answered_or_bifrost_503(results, ids, admin)
