"""Cancel many and wait, end to end: POST /v1/batches/cancel through Envoy as newline-delimited JSON
(flushed line by line, each line's `batch` or `error` exactly the single cancel's REST body),
CancelMany as gRPC through Envoy, the single cancel's wait on the native route and through the
official OpenAI SDK, and a REST client that goes away."""

from __future__ import annotations

import json
import socket
import time
import uuid
from typing import Any

import grpc
import openai
import pytest
import requests

from gateway.stack import Stack
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.gen.batchgate.v1 import batchgate_pb2_grpc as pb_grpc
from tests.e2e.conftest import INTERNAL_HEADERS, Gateway, SimAdmin, new_id, service_log, until

BULK = "/v1/batches/cancel"


def bulk_lines(gw: Gateway, body: dict, **kwargs: Any) -> tuple[requests.Response, list[tuple[float, dict]]]:
    """The answer and each NDJSON line with the seconds after sending at which it arrived."""
    started = time.monotonic()
    with gw.http.post(gw.url + BULK, json=body, stream=True, timeout=30, **kwargs) as resp:
        lines = [(time.monotonic() - started, json.loads(line)) for line in resp.iter_lines() if line]
    return resp, lines


def without_latency(body: dict) -> dict:
    """A success body with the upstream latency (which differs from call to call) zeroed."""
    return {**body, "extra_fields": {**body["extra_fields"], "latency": 0}}


def test_each_line_is_exactly_a_single_cancels_body(gw: Gateway, sim: SimAdmin) -> None:
    ok = sim.seed("openai")
    anthropic = sim.seed("anthropic")
    done = sim.seed("azure", status="completed")
    missing = f"missing{new_id()}"
    items = [
        {"id": ok, "provider": "openai"},
        {"id": missing, "provider": "openai"},
        {"id": anthropic, "provider": "anthropic"},
        {"id": done, "provider": "azure"},
        {"id": "b1", "provider": "nosuch"},
        {"id": "b2", "provider": "openrouter"},
        {"id": ok, "provider": "openai"},
    ]
    resp, lines = bulk_lines(gw, {"batches": items})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/x-ndjson"
    assert [h for h in (*INTERNAL_HEADERS, "x-bf-stream") if h in resp.headers] == []
    events = {event["index"]: event for _, event in lines}
    assert sorted(events) == list(range(len(items))) and len(lines) == len(items)
    for index, item in enumerate(items):
        event = events[index]
        assert (event["id"], event["provider"], event["final"]) == (item["id"], item["provider"], True)
        assert set(event) == {"index", "id", "provider", "final", "batch" if "batch" in event else "error"}
        # The single cancel of the same batch (a second cancel of a cancelling batch answers alike).
        single = gw.post(f"/v1/batches/{item['id']}/cancel", params={"provider": item["provider"]})
        if "batch" in event:
            assert single.status_code == 200
            assert without_latency(event["batch"]) == without_latency(single.json()), item
        else:
            assert event["error"] == single.json(), item
            assert event["error"]["status_code"] == single.status_code
    assert events[1]["error"]["error"]["code"] is None and events[1]["error"]["error"]["param"] is None
    assert [events[i]["error"]["status_code"] for i in (1, 3, 4, 5)] == [404, 409, 400, 400]
    assert events[6]["batch"] == events[0]["batch"]


def test_lines_are_flushed_as_they_happen(gw: Gateway, faults: SimAdmin) -> None:
    fast = faults.seed("openai")
    slow = faults.seed("anthropic")
    faults.add_faults("anthropic", {"latency_ms": 3000})
    _, lines = bulk_lines(gw, {"batches": [{"id": slow, "provider": "anthropic"}, {"id": fast, "provider": "openai"}]})
    (first_at, first), (last_at, last) = lines
    assert (first["id"], last["id"]) == (fast, slow)
    assert first_at < 2.0 and last_at >= 3.0  # the first line came while the slow item was still pending


def test_waiting_streams_each_status_change_until_cancelled(gw: Gateway, sim: SimAdmin) -> None:
    items = [{"id": sim.seed(p, cancel_delay_s=0.5), "provider": p} for p in ("openai", "azure", "anthropic")]
    _, lines = bulk_lines(gw, {"batches": items, "wait_seconds": 30})
    for index in range(len(items)):
        mine = [event for _, event in lines if event["index"] == index]
        assert [(e["final"], e["batch"]["status"]) for e in mine] == [(False, "cancelling"), (True, "cancelled")]
        assert "warning" not in mine[-1]["batch"]["extra_fields"]
    assert max(at for at, _ in lines) >= 1.0  # the first read waits a second


def test_the_wait_running_out_ends_with_the_last_state_and_a_warning(gw: Gateway, sim: SimAdmin) -> None:
    stuck = sim.seed("openai", cancel_delay_s=3600)
    _, lines = bulk_lines(gw, {"batches": [{"id": stuck, "provider": "openai"}], "wait_seconds": 2})
    final = lines[-1][1]
    assert final["final"] and final["batch"]["status"] == "cancelling"
    assert "still cancelling" in final["batch"]["extra_fields"]["warning"]
    assert 2.0 <= lines[-1][0] < 10


@pytest.mark.parametrize(
    "body, param",
    [
        ({"batches": []}, "batches"),
        ({"batches": [{"id": "b", "provider": "openai"}] * 1001}, "batches"),
        ({"batches": [{"id": "b", "provider": "openai"}], "wait_seconds": 3601}, "wait_seconds"),
        ({"batches": [{"id": "", "provider": "openai"}]}, "batches[0].id"),
        ({"batches": [{"id": "b"}]}, "batches[0].provider"),
    ],
)
def test_bounds_answer_the_single_call_error_shape(gw: Gateway, sim: SimAdmin, t0: float, body, param) -> None:
    resp = gw.post(BULK, json=body)
    assert resp.status_code == 400
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()
    assert error["is_bifrost_error"] is True and error["status_code"] == 400
    assert error["error"]["param"] == param and error["extra_fields"] == {
        "provider": "",
        "request_type": "batch_cancel",
    }
    assert sim.calls(since=t0) == []


def test_grpc_through_envoy_streams_the_same_events(stack: Stack, sim: SimAdmin) -> None:
    ok = sim.seed("openai", cancel_delay_s=0.5)
    request = pb.CancelManyRequest(
        batches=[pb.BatchRef(id=ok, provider="openai"), pb.BatchRef(id="missingx", provider="openai")], wait_seconds=30
    )
    with grpc.insecure_channel(f"127.0.0.1:{stack.http_port}") as channel:
        events = list(pb_grpc.BatchServiceStub(channel).CancelMany(request, timeout=30))
    assert [(e.index, e.final, e.WhichOneof("result")) for e in events if e.index == 1] == [(1, True, "error")]
    assert [(e.final, e.batch.status) for e in events if e.index == 0] == [(False, "cancelling"), (True, "cancelled")]
    assert events[-1].final


def test_single_cancel_waits_on_the_native_route(gw: Gateway, sim: SimAdmin) -> None:
    batch = sim.seed("openai", cancel_delay_s=0.5)
    resp = gw.post(f"/v1/batches/{batch}/cancel", params={"provider": "openai", "wait_seconds": 30})
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    too_long = gw.post(f"/v1/batches/{batch}/cancel", params={"provider": "openai", "wait_seconds": 3601})
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "wait_seconds"


def test_openai_sdk_waits_with_extra_body(stack: Stack, sim: SimAdmin) -> None:
    batch = sim.seed("openai", cancel_delay_s=0.5)
    with openai.OpenAI(base_url=f"{stack.http_url}/openai/v1", api_key="anything", max_retries=0) as client:
        answer = client.batches.cancel(batch, extra_body={"wait_seconds": 30})
        assert (answer.id, answer.status) == (batch, "cancelled")
        assert answer.cancelled_at is not None
        stuck = sim.seed("openai", cancel_delay_s=3600)
        answer = client.batches.cancel(stuck, extra_body={"wait_seconds": 1})
    assert answer.status == "cancelling" and "still cancelling" in answer.model_extra["extra_fields"]["warning"]


def test_a_rest_client_that_goes_away_stops_the_reads(stack: Stack, sim: SimAdmin) -> None:
    stuck = sim.seed("openai", cancel_delay_s=3600)
    rid = f"gone-{uuid.uuid4().hex}"
    body = json.dumps({"batches": [{"id": stuck, "provider": "openai"}], "wait_seconds": 600}).encode()
    with socket.create_connection(("127.0.0.1", stack.http_port), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/batches/cancel HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"x-request-id: {rid}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while b"cancelling" not in received:  # the first line: the cancel call's answer
            received += conn.recv(65536)
        until(lambda: [c for c in sim.calls("openai", batch_id=stuck) if c["method"] == "GET"])  # reading back
    # The connection is closed: the service ends the call, and with it the reads (left alone they
    # would go on for the 600 s wait). Its access line says so; after it no read can follow.
    (line,) = until(lambda: [line for line in service_log(stack) if line.get("request_id") == rid])
    assert (line["rpc"], line["outcome"]) == ("CancelMany", "CANCELLED")


def test_a_thousand_long_ids_fit_and_a_larger_body_gets_the_edges_413(gw: Gateway, t0: float) -> None:
    items = [{"id": f"missing{i:04d}" + "x" * 500, "provider": "openai"} for i in range(1000)]
    resp, lines = bulk_lines(gw, {"batches": items})
    assert resp.status_code == 200 and len(lines) == 1000
    assert {event["error"]["status_code"] for _, event in lines} == {404}
    too_big = gw.post(
        BULK,
        data=b'{"batches": [{"id": "' + b"a" * (800 * 1024) + b'", "provider": "openai"}]}',
        headers={"Content-Type": "application/json"},
    )
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
