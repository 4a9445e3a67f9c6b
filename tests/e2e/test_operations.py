"""Cancel by selector end to end: real Envoy, real service processes, the simulators over real HTTP
(their recorded calls show what was sent), REST as clients call it and gRPC through the edge.

The session gateway is shared: every test here selects by a metadata value of its own, so no test
ever matches another test's batches. The tests that kill processes or need a store or config of
their own start their own gateway on a sandbox process that outlives it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2

from gateway.paths import ROOT
from gateway.stack import Stack, free_port
from sandbox.server import SANDBOX_OPERATOR_KEY, gateway_config
from tests.e2e.conftest import Gateway, SimAdmin, new_id, until

OPERATOR = {"x-bf-vk": SANDBOX_OPERATOR_KEY}
NOW = int(time.time())


def start(gw: Gateway, body: dict, headers: dict | None = None) -> dict:
    resp = gw.post("/v1/batches:cancelMatching", json=body, headers=OPERATOR if headers is None else headers)
    assert resp.status_code == 200, resp.text
    return resp.json()


def get(gw: Gateway, name: str, headers: dict | None = None) -> requests.Response:
    return gw.request("GET", f"/v1/{name}", headers=OPERATOR if headers is None else headers)


def wait_done(gw: Gateway, name: str, headers: dict | None = None, seconds: float = 30) -> dict:
    """The operation once GetOperation says it is done (within `seconds`)."""

    def done() -> dict | None:
        resp = get(gw, name, headers)
        assert resp.status_code == 200, resp.text
        return resp.json() if resp.json()["done"] else None

    return until(done, seconds)


def outcomes(op: dict) -> dict[str, str]:
    return {batch["id"]: batch["outcome"] for batch in op["response"]["batches"]}


def cancel_paths(sim: SimAdmin, since: float, ids: list[str]) -> list[str]:
    """The cancel calls (POSTs) the simulator received since `since` for any of `ids`."""
    return [c["path"] for c in sim.calls(since=since) if c["method"] == "POST" and any(i in c["path"] for i in ids)]


# --- on the session gateway ---------------------------------------------------------------------


def test_a_dry_run_shows_the_matches_and_cancels_nothing(gw: Gateway, sim: SimAdmin, t0: float) -> None:
    tag = new_id("dry")
    matching = [sim.seed("openai", metadata={"run": tag}) for _ in range(3)]
    ended = sim.seed("openai", status="completed", metadata={"run": tag})
    other = sim.seed("openai", metadata={"run": "someone-else"})
    started = start(gw, {"selector": {"metadata": {"run": tag}}, "validate_only": True})
    assert started["name"].startswith("operations/") and started["done"] is False
    assert started["metadata"]["@type"] == "type.googleapis.com/batchgate.v1.CancelMatchingMetadata"
    assert started["metadata"]["validate_only"] is True and started["metadata"]["state"] == "listing"
    assert started["metadata"]["created_by"] == "sandbox-operator"
    op = wait_done(gw, started["name"])
    assert op["response"]["@type"] == "type.googleapis.com/batchgate.v1.CancelMatchingResult"
    assert outcomes(op) == dict.fromkeys(matching, "matched")
    assert op["metadata"]["matched"] == 3 and op["metadata"]["cancel_accepted"] == 0
    assert cancel_paths(sim, t0, [*matching, ended, other]) == []


def test_exactly_the_matching_batches_are_cancelled(gw: Gateway, sim: SimAdmin, t0: float) -> None:
    tag = new_id("run")
    matching = [sim.seed("openai", metadata={"run": tag}, created_at=NOW - 600) for _ in range(3)]
    matching.append(sim.seed("azure", metadata={"run": tag}, created_at=NOW - 600))
    untouched = [
        sim.seed("openai", metadata={"run": tag}, created_at=NOW - 3 * 86400),  # too old
        sim.seed("openai", metadata={"run": tag, "x": "1"}, status="finalizing", created_at=NOW - 60),  # status
        sim.seed("openai", metadata={"run": "other"}, created_at=NOW - 600),
        sim.seed("anthropic", created_at=NOW - 600),
    ]
    body = {
        "selector": {
            "providers": ["openai", "azure"],
            "statuses": ["in_progress"],
            "created_after": NOW - 86400,
            "metadata": {"run": tag},
        }
    }
    op = wait_done(gw, start(gw, body)["name"])
    assert outcomes(op) == dict.fromkeys(matching, "cancelled")
    assert op["metadata"]["cancel_accepted"] == 4 and op["metadata"]["pending"] == 0
    assert sorted(p.split("/")[-2] for p in cancel_paths(sim, t0, matching + untouched)) == sorted(matching)
    for provider, batch_id in [("openai", i) for i in untouched[:3]]:
        assert sim.batch(provider, batch_id)["status"] != "cancelling"


def test_the_cap_refuses_and_cancels_nothing(gw: Gateway, sim: SimAdmin, t0: float) -> None:
    tag = new_id("cap")
    ids = [sim.seed("openai", metadata={"run": tag}) for _ in range(3)]
    op = wait_done(gw, start(gw, {"selector": {"metadata": {"run": tag}}, "max_batches": 2})["name"])
    assert op["error"]["code"] == 9
    assert op["error"]["message"] == "matches 3 batches, more than max_batches 2; nothing was cancelled"
    assert "response" not in op and op["metadata"]["matched"] == 3
    assert cancel_paths(sim, t0, ids) == []


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"selector": {"providers": ["nope"]}}, "unknown_provider", "unknown provider: nope"),
        ({"selector": {"statuses": ["stopped"]}}, "unknown_status", "unknown status: stopped"),
        ({"max_batches": 100001}, "invalid_request", "max_batches must be at most 100000"),
        ({"notify": {"url": "https://hooks.example.com/x"}}, "notify_url_not_allowed", "notify.url must start"),
        (
            {"selector": {"providers": ["openai"], "batches": [{"id": "b", "provider": "openai"}]}},
            "invalid_request",
            "selector.batches names the batches itself",
        ),
    ],
)
def test_bad_input_is_a_400_in_the_bifrost_shape(gw: Gateway, sim: SimAdmin, t0: float, body, code, message) -> None:
    resp = gw.post("/v1/batches:cancelMatching", json=body, headers=OPERATOR)
    assert resp.status_code == 400, resp.text
    error = resp.json()
    assert error["is_bifrost_error"] is True and error["status_code"] == 400
    assert error["error"]["code"] == code and error["error"]["message"].startswith(message)
    assert set(error) == {"is_bifrost_error", "status_code", "error", "extra_fields"}
    assert [c for c in sim.calls(since=t0) if c["method"] == "GET" and c["path"].endswith("/batches")] == []


def test_a_thousand_named_batches_fit_and_a_larger_body_gets_the_edges_413(gw: Gateway, sim: SimAdmin) -> None:
    named = [{"id": f"missing{i:04d}" + "x" * 500, "provider": "openai"} for i in range(1000)]
    resp = gw.post(
        "/v1/batches:cancelMatching",
        json={"selector": {"batches": named}, "validate_only": True, "max_batches": 1000},
        headers=OPERATOR,
    )
    assert resp.status_code == 200, resp.text[:300]
    assert wait_done(gw, resp.json()["name"])["metadata"]["matched"] == 1000
    too_big = gw.post(
        "/v1/batches:cancelMatching",
        data=b'{"selector": {"batches": [{"id": "' + b"a" * (800 * 1024) + b'", "provider": "openai"}]}}',
        headers={"Content-Type": "application/json", **OPERATOR},
    )
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"


def test_selector_mode_needs_the_right_caller(gw: Gateway, sim: SimAdmin) -> None:
    resp = gw.post("/v1/batches:cancelMatching", json={"selector": {"metadata": {"run": new_id()}}})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "cancel_matching_not_allowed"


def test_only_the_creator_sees_an_operation_whatever_the_path_says(gw: Gateway, sim: SimAdmin) -> None:
    """An anonymous caller may cancel named batches on this open gateway; the operator's operations
    stay invisible to it, also when `?name=` or a body `name` overrides the path's."""
    mine = start(gw, {"selector": {"metadata": {"run": new_id()}}, "validate_only": True})["name"]
    batch = sim.seed("openai")
    theirs = start(gw, {"selector": {"batches": [{"id": batch, "provider": "openai"}]}}, headers={})["name"]
    wait_done(gw, theirs, headers={})
    assert get(gw, mine, headers={}).status_code == 404
    assert get(gw, theirs).status_code == 404  # the operator does not see the anonymous one either
    override = gw.request("GET", f"/v1/{theirs}", params={"name": mine}, headers={})
    assert override.status_code == 404, override.text
    assert override.json()["error"]["message"] == f"operation not found: {mine}"
    cancel = gw.post(f"/v1/{theirs}:cancel", json={"name": mine}, headers={})
    assert cancel.status_code == 404
    listed = gw.request("GET", "/v1/operations", headers={}).json()
    assert mine not in [o["name"] for o in listed["operations"]] and theirs in [o["name"] for o in listed["operations"]]
    assert "next_page_token" in listed


def test_cancel_operation_stops_it(gw: Gateway, faults: SimAdmin, t0: float) -> None:
    sim = faults
    tag = new_id("stop")
    ids = [sim.seed("openai", metadata={"run": tag}) for _ in range(40)]
    sim.add_faults("openai", {"latency_ms": 300, "count": 200})
    name = start(gw, {"selector": {"metadata": {"run": tag}}})["name"]
    until(lambda: cancel_paths(sim, t0, ids), 20)
    resp = gw.post(f"/v1/{name}:cancel", headers=OPERATOR)
    assert resp.status_code == 200 and resp.json() == {}
    returned = time.time()
    op = wait_done(gw, name)
    assert op["error"]["code"] == 1 and op["metadata"]["skipped"] > 0
    kept = op["error"]["details"][0]
    assert kept["@type"] == "type.googleapis.com/batchgate.v1.CancelMatchingResult" and len(kept["batches"]) == 40
    late = [c for c in sim.calls(since=returned) if c["method"] == "POST" and any(i in c["path"] for i in ids)]
    assert late == [], "a cancel call started after CancelOperation returned"
    assert op["error"]["details"][-1]["@type"] == "type.googleapis.com/batchgate.v1.ErrorDetail"


def test_a_provider_outage_in_the_middle_is_ridden_out(gw: Gateway, faults: SimAdmin, t0: float) -> None:
    sim = faults
    tag = new_id("outage")
    ids = [sim.seed("openai", metadata={"run": tag}) for _ in range(12)]
    # The listing and the first cancels go through, then the provider answers 503 for a while
    # (each exchange is retried twice by the executor, then by the operation after a backoff).
    sim.add_faults("openai", [{"latency_ms": 20, "count": 5}, {"status": 503, "count": 9}])
    op = wait_done(gw, start(gw, {"selector": {"metadata": {"run": tag}}})["name"])
    assert outcomes(op) == dict.fromkeys(ids, "cancelled") and op["metadata"]["failed"] == 0
    refused = [c for c in sim.calls(since=t0) if c["method"] == "POST" and any(i in c["path"] for i in ids)]
    assert len(refused) >= 12 + 9  # the outage was really hit, and every batch cancelled after it


def test_a_running_operation_cannot_be_deleted(gw: Gateway, faults: SimAdmin) -> None:
    sim = faults
    tag = new_id("del")
    sim.seed("openai", metadata={"run": tag})
    sim.add_faults("openai", {"latency_ms": 800})
    name = start(gw, {"selector": {"metadata": {"run": tag}}})["name"]
    resp = gw.request("DELETE", f"/v1/{name}", headers=OPERATOR)
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "operation_running"
    wait_done(gw, name)
    assert gw.request("DELETE", f"/v1/{name}", headers=OPERATOR).status_code == 200
    assert get(gw, name).status_code == 404


def test_wait_operation_over_grpc_through_the_edge(stack: Stack, gw: Gateway, sim: SimAdmin) -> None:
    tag = new_id("wait")
    sim.seed("openai", metadata={"run": tag}, cancel_delay_s=0.5)
    name = start(gw, {"selector": {"metadata": {"run": tag}}, "wait": True})["name"]
    with grpc.insecure_channel(f"127.0.0.1:{stack.http_port}") as channel:
        stub = operations_pb2_grpc.OperationsStub(channel)
        request = operations_pb2.WaitOperationRequest(name=name, timeout=duration_pb2.Duration(seconds=30))
        op = stub.WaitOperation(request, metadata=[("x-bf-vk", SANDBOX_OPERATOR_KEY)], timeout=40)
    assert op.done and not op.HasField("error")
    body = get(gw, name).json()
    assert [b["batch"]["status"] for b in body["response"]["batches"]] == ["cancelled"]
    assert "operations_running" in gw.request("GET", "/health").json()


# --- gateways of their own: restarts, Redis, webhooks ------------------------------------------------


@pytest.fixture(scope="module")
def outside() -> Iterator[SimAdmin]:
    """A sandbox process of its own, which outlives the gateways the tests below kill."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", "0", "--cancel-delay", "3600"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        line = proc.stdout.readline().decode().strip()
        assert line.startswith("SANDBOX_PORT="), line
        yield SimAdmin(f"http://127.0.0.1:{line.split('=', 1)[1]}")
    finally:
        proc.terminate()
        proc.wait(10)


def own_stack(tmp_path: Path, config: dict, state_dir: Path, workers: int = 2) -> Stack:
    path = tmp_path / f"config-{free_port()}.json"
    path.write_text(json.dumps(config))
    return Stack(
        config=path,
        http_port=free_port(),
        grpc_port=free_port(),
        admin_port=free_port(),
        workers=workers,
        state_dir=state_dir,
        log_dir=tmp_path / "logs",
    )


def kill_all(stack: Stack) -> None:
    """Every process of the gateway dies at once, as in a power cut (no shutdown, no lease released)."""
    for proc in stack.procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    for proc in stack.procs:
        proc.wait()
    stack.procs.clear()


def config_for(sim: SimAdmin, **operations: Any) -> dict:
    config = gateway_config(sim.url)
    config["client"]["bulk_concurrency"] = 4
    config["operations"] = {"lease_seconds": 2, **operations}
    return config


def seed_running(sim: SimAdmin, tag: str, count: int) -> list[str]:
    ids = [new_id(tag) for _ in range(count)]
    batches = [{"id": i, "status": "in_progress", "metadata": {"run": tag}, "cancel_delay_s": 3600} for i in ids]
    resp = sim.http.post(f"{sim.url}/_sim/openai/seed", json={"batches": batches}, timeout=10)
    assert resp.status_code == 201, resp.text
    return ids


def lost_answers(db: Path, name: str) -> set[str]:
    """Batches whose cancel was sent but whose answer was never stored: the only ones that may be sent
    again after a restart."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT batch_id FROM operation_batches WHERE operation = ? AND cancel_sent = 1 AND outcome = ''", (name,)
        ).fetchall()
    return {row[0] for row in rows}


def test_an_operation_survives_sigkill_of_every_process(outside: SimAdmin, tmp_path: Path) -> None:
    sim = outside
    tag = new_id("kill")
    ids = seed_running(sim, tag, 60)
    state = tmp_path / "state"
    config = config_for(sim)
    first = own_stack(tmp_path, config, state).start()
    try:
        sim.add_faults("openai", {"latency_ms": 150, "count": 1000})  # ~4 cancels in flight, 150 ms each
        gw = Gateway(first)
        name = start(gw, {"selector": {"metadata": {"run": tag}}})["name"]
        until(lambda: len(cancel_paths(sim, 0, ids)) >= 12)
    finally:
        kill_all(first)
    first.stop()
    killed_at = time.time()
    sent_before = cancel_paths(sim, 0, ids)
    resend_allowed = lost_answers(state / "operations.sqlite3", name)
    assert len(sent_before) < 60
    second = own_stack(tmp_path, config, state).start()
    try:
        op = wait_done(Gateway(second), name, seconds=60)
        resumed = [c for c in sim.calls(since=killed_at) if c["method"] == "POST"]
        assert resumed and resumed[0]["at"] - killed_at < 30  # picked up within the lease and a round
    finally:
        second.stop()
        sim.reset()
    assert outcomes(op) == dict.fromkeys(ids, "cancelled")
    all_sent = [p.split("/")[-2] for p in sent_before] + [c["path"].split("/")[-2] for c in resumed]
    twice = {i for i in set(all_sent) if all_sent.count(i) > 1}
    assert twice <= resend_allowed, f"sent twice though their answer was stored: {twice - resend_allowed}"


def test_a_gateway_on_the_same_redis_takes_over(outside: SimAdmin, tmp_path: Path, redis_server) -> None:
    sim = outside
    tag = new_id("redis")
    ids = seed_running(sim, tag, 40)
    config = config_for(sim)
    config["governance"]["store"] = {"type": "redis", "url": redis_server.url}
    first = own_stack(tmp_path, config, tmp_path / "a", workers=1).start()
    second = own_stack(tmp_path, config, tmp_path / "b", workers=1).start()
    try:
        sim.add_faults("openai", {"latency_ms": 150, "count": 1000})
        name = start(Gateway(first), {"selector": {"metadata": {"run": tag}}})["name"]
        until(lambda: len(cancel_paths(sim, 0, ids)) >= 8)
        kill_all(first)
        op = wait_done(Gateway(second), name, seconds=60)
    finally:
        first.stop()
        second.stop()
        sim.reset()
    assert outcomes(op) == dict.fromkeys(ids, "cancelled")
    assert not (tmp_path / "a" / "operations.sqlite3").exists()  # the operation lived in Redis


class Receiver:
    """A webhook receiver on a free loopback port that records what it is sent."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()
                owner.arrived.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/batchgate"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_the_webhook_gets_the_final_operation_signed(outside: SimAdmin, tmp_path: Path) -> None:
    sim = outside
    receiver = Receiver()
    secret = "whsec-" + new_id()
    tag = new_id("hook")
    ids = seed_running(sim, tag, 3)
    prefix = receiver.url.rsplit("/", 1)[0]
    stack = own_stack(tmp_path, config_for(sim, notify_urls=[prefix], notify_secret=secret), tmp_path / "s", 1)
    stack.start()
    try:
        gw = Gateway(stack)
        evil = gw.post(
            "/v1/batches:cancelMatching",
            json={"selector": {"metadata": {"run": tag}}, "notify": {"url": prefix + "-evil/x"}},
            headers=OPERATOR,
        )
        assert evil.status_code == 400
        name = start(gw, {"selector": {"metadata": {"run": tag}}, "notify": {"url": receiver.url}})["name"]
        op = wait_done(gw, name)
        assert receiver.arrived.wait(20)
    finally:
        stack.stop()
        receiver.close()
        sim.reset()
    headers, body = receiver.received[0]
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-batchgate-signature"], expected)
    assert headers["content-type"] == "application/json"
    sent = json.loads(body)
    assert sent["name"] == name and sent["done"] is True
    assert sent["response"] == op["response"] and outcomes(sent) == dict.fromkeys(ids, "cancelled")
    assert {k: v for k, v in sent["metadata"].items() if k != "update_time"} == {
        k: v for k, v in op["metadata"].items() if k != "update_time"
    }
    assert len(receiver.received) == 1
