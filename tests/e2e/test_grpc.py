"""Native gRPC: through Envoy on the REST port (passthrough) and directly on the service port."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from gateway.stack import Stack, free_port
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.gen.batchgate.v1 import batchgate_pb2_grpc as pb_grpc
from tests.e2e.conftest import Gateway, SimAdmin, new_id, service_log
from tests.e2e.h2wire import GRPC_HEADERS, grpc_frame, h2_call

SERVICE = "batchgate.v1.BatchService"


@pytest.fixture(scope="module", params=["envoy", "direct"])
def channel(request: pytest.FixtureRequest, stack: Stack) -> Iterator[grpc.Channel]:
    port = stack.http_port if request.param == "envoy" else stack.grpc_port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
        yield chan


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.BatchServiceStub:
    return pb_grpc.BatchServiceStub(channel)


def test_cancel_success_fields(stub: pb_grpc.BatchServiceStub, sim: SimAdmin, t0: float) -> None:
    batch_id = sim.seed("openai", request_counts={"total": 30, "completed": 20, "failed": 3})

    resp = stub.Cancel(pb.CancelBatchRequest(batch_id=batch_id, provider="openai"), timeout=10)

    assert (resp.id, resp.object, resp.status) == (batch_id, "batch", "cancelling")
    counts = resp.request_counts
    assert all(counts.HasField(name) for name in ("total", "completed", "failed"))
    assert (counts.total, counts.completed, counts.failed) == (30, 20, 3)
    assert not any(counts.HasField(name) for name in ("succeeded", "expired", "canceled", "pending"))
    assert resp.HasField("cancelling_at")
    assert resp.cancelling_at == sim.batch("openai", batch_id)["cancelling_at"]
    assert not resp.HasField("cancelled_at")
    extra = resp.extra_fields
    assert (extra.request_type, extra.provider, extra.chunk_index) == ("batch_cancel", "openai", 0)
    assert not extra.HasField("raw_response")
    calls = sim.calls(since=t0)
    assert [(c["provider"], c["path"]) for c in calls] == [("openai", f"/openai/v1/batches/{batch_id}/cancel")]


def test_cancel_on_azure(stub: pb_grpc.BatchServiceStub, sim: SimAdmin, t0: float) -> None:
    batch_id = sim.seed("azure")

    resp = stub.Cancel(pb.CancelBatchRequest(batch_id=batch_id, provider="azure"), timeout=10)

    assert (resp.id, resp.status, resp.extra_fields.provider) == (batch_id, "cancelling", "azure")
    assert [c["path"] for c in sim.calls(since=t0)] == [f"/azure/openai/batches/{batch_id}/cancel"]


def test_raw_response_via_metadata(stub: pb_grpc.BatchServiceStub, sim: SimAdmin) -> None:
    batch_id = sim.seed("openai")

    resp = stub.Cancel(
        pb.CancelBatchRequest(batch_id=batch_id, provider="openai"),
        metadata=(("x-bf-send-back-raw-response", "true"),),
        timeout=10,
    )

    assert resp.extra_fields.HasField("raw_response")
    assert json_format.MessageToDict(resp.extra_fields.raw_response) == sim.batch("openai", batch_id)


ERROR_CASES = {
    # case: (status to seed the batch with, or None; id prefix; provider; gRPC code)
    "finished batch": ("completed", "batch_e2e", "openai", grpc.StatusCode.FAILED_PRECONDITION),
    "unknown batch": (None, "missing", "openai", grpc.StatusCode.NOT_FOUND),
    "missing provider": ("in_progress", "batch_e2e", "", grpc.StatusCode.INVALID_ARGUMENT),
    "unknown provider": (None, "batch_e2e", "nope", grpc.StatusCode.INVALID_ARGUMENT),
    "unsupported provider": (None, "batch_e2e", "ollama", grpc.StatusCode.INVALID_ARGUMENT),
    "bad id": (None, "a/b", "openai", grpc.StatusCode.INVALID_ARGUMENT),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_carry_canonical_code_and_typed_detail_matching_rest(
    stub: pb_grpc.BatchServiceStub, gw: Gateway, sim: SimAdmin, case: str
) -> None:
    seed_status, prefix, provider, code = ERROR_CASES[case]
    batch_id = new_id(prefix)
    if seed_status is not None:
        sim.seed("openai", batch_id, status=seed_status)

    with pytest.raises(grpc.RpcError) as info:
        stub.Cancel(pb.CancelBatchRequest(batch_id=batch_id, provider=provider), timeout=10)
    err = info.value

    assert err.code() == code
    status = rpc_status.from_call(err)
    assert status is not None and status.code == code.value[0]
    assert len(status.details) == 1
    detail = pb.ErrorDetail()
    assert status.details[0].Unpack(detail)

    # The REST edge answers the same call with the same fields.
    query = f"?provider={provider}" if provider else ""
    segment = batch_id.replace("/", "%2F")
    rest = gw.post(f"/v1/batches/{segment}/cancel{query}")
    body = rest.json()
    assert rest.status_code == body["status_code"] == detail.status_code
    assert err.details() == status.message == body["error"]["message"] == detail.error.message
    assert detail.is_bifrost_error == body["is_bifrost_error"]
    assert detail.error.type == body["error"]["type"]
    assert (detail.error.code if detail.error.HasField("code") else None) == body["error"]["code"]
    assert (detail.error.param if detail.error.HasField("param") else None) == body["error"]["param"]
    assert detail.extra_fields.provider == body["extra_fields"]["provider"]
    assert detail.extra_fields.request_type == body["extra_fields"]["request_type"] == "batch_cancel"


def test_finished_batch_detail_is_the_providers_409(stub: pb_grpc.BatchServiceStub, sim: SimAdmin) -> None:
    batch_id = sim.seed("openai", status="completed")

    with pytest.raises(grpc.RpcError) as info:
        stub.Cancel(pb.CancelBatchRequest(batch_id=batch_id, provider="openai"), timeout=10)

    detail = pb.ErrorDetail()
    rpc_status.from_call(info.value).details[0].Unpack(detail)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert detail.status_code == 409
    assert detail.is_bifrost_error is False
    assert detail.error.message == "Cannot cancel a batch with status 'completed'."
    assert detail.error.type == "invalid_request_error"
    assert detail.extra_fields.provider == "openai"


def test_rate_limit_is_resource_exhausted(stub: pb_grpc.BatchServiceStub, faults: SimAdmin) -> None:
    batch_id = faults.seed("openai")
    faults.add_faults("openai", {"status": 429, "retry_after": 0, "count": 3})

    with pytest.raises(grpc.RpcError) as info:
        stub.Cancel(pb.CancelBatchRequest(batch_id=batch_id, provider="openai"), timeout=10)

    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    detail = pb.ErrorDetail()
    rpc_status.from_call(info.value).details[0].Unpack(detail)
    assert (detail.status_code, detail.error.code) == (429, "rate_limit_exceeded")


@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_check_serving(channel: grpc.Channel, service: str) -> None:
    resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)

    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_health_watch_streams_the_status(channel: grpc.Channel) -> None:
    """Watch (one request, a stream of answers) is registered through service.edge.wire like every method."""
    answers = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    try:
        assert next(answers).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        answers.cancel()


def test_reflection_lists_the_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = iter([reflection_pb2.ServerReflectionRequest(list_services="")])

    (answer,) = list(stub.ServerReflectionInfo(requests, timeout=5))

    names = {service.name for service in answer.list_services_response.service}
    assert SERVICE in names
    assert "grpc.health.v1.Health" in names


# --- malformed calls on the wire --------------------------------------------------------------------

# What a gRPC library never sends. Each must end at once with INVALID_ARGUMENT (grpc.aio used to leave
# the first three unanswered until the caller gave up, and answer the last UNKNOWN with a traceback).
MALFORMED = {
    "no message": b"",
    "length prefix longer than the data": grpc_frame(b"\x0a\x01x", length=100),
    "half a length prefix": b"\x00\x00\x00",
    "garbage protobuf": grpc_frame(b"\xff\xff\xff\xff\xff"),
}
WIRE_WAIT = 5.0  # a healthy answer takes milliseconds; the bug waited a minute


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.parametrize("route", ["envoy", "direct"])
@pytest.mark.parametrize("method", [f"/{SERVICE}/Cancel", f"/{SERVICE}/CancelGenAI", "/grpc.health.v1.Health/Check"])
def test_malformed_call_ends_at_once_with_invalid_argument(
    stack: Stack, sim: SimAdmin, t0: float, route: str, method: str, case: str
) -> None:
    port = stack.http_port if route == "envoy" else stack.grpc_port
    rid = f"wire-{uuid.uuid4().hex}"

    answer = h2_call(port, method, [*GRPC_HEADERS, ("x-request-id", rid)], MALFORMED[case], wait=WIRE_WAIT)

    assert answer.ended and answer.seconds < WIRE_WAIT, answer
    assert answer.grpc_status == str(grpc.StatusCode.INVALID_ARGUMENT.value[0]), answer
    message = answer.grpc_message
    request_type = "grpc.health.v1.HealthCheckRequest" if "Health" in method else "batchgate.v1.CancelBatchRequest"
    assert message in (
        "the call ended without a complete request message",
        f"the request is not a valid {request_type} message",
    )
    assert "<class" not in message and "Unexpected" not in message
    assert sim.calls(since=t0) == []
    lines = [line for line in service_log(stack) if line.get("request_id") == rid]
    assert [(line["msg"], line["outcome"], line["method"]) for line in lines] == [
        ("malformed call", "INVALID_ARGUMENT", method)
    ]
    assert "exc" not in lines[0]


def test_no_traceback_is_logged_for_malformed_calls(stack: Stack) -> None:
    for case in MALFORMED.values():
        h2_call(stack.grpc_port, f"/{SERVICE}/Cancel", GRPC_HEADERS, case, wait=WIRE_WAIT)
    assert "Traceback" not in (stack.log_dir / "service.log").read_text()


@pytest.mark.parametrize("route", ["envoy", "direct"])
def test_well_formed_call_on_the_wire_still_works(stack: Stack, sim: SimAdmin, route: str) -> None:
    batch_id = sim.seed("openai")
    port = stack.http_port if route == "envoy" else stack.grpc_port
    message = pb.CancelBatchRequest(batch_id=batch_id, provider="openai").SerializeToString()

    answer = h2_call(port, f"/{SERVICE}/Cancel", GRPC_HEADERS, grpc_frame(message), wait=WIRE_WAIT)

    assert answer.grpc_status == "0", answer
    assert pb.BatchCancelResponse.FromString(answer.data[5:]).status == "cancelling"


def test_reflection_refuses_a_garbage_message_plainly(channel: grpc.Channel) -> None:
    stream = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda raw: raw,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as info:
        list(stream(iter([b"\xff\xff\xff"]), timeout=5))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "the request is not a valid grpc.reflection.v1alpha.ServerReflectionRequest message"


# --- callers that stop sending midway -----------------------------------------------------------------

READ_TIMEOUT = 1.0  # the service's, and Envoy's request timeout (gateway/stack.py)


@pytest.fixture(scope="module")
def slow_reads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        config=None,
        http_port=free_port(),
        grpc_port=free_port(),
        admin_port=free_port(),
        log_dir=tmp_path_factory.mktemp("slow-read-logs"),
        env={"REQUEST_READ_TIMEOUT_SECONDS": str(READ_TIMEOUT)},
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.mark.parametrize("route", ["envoy", "direct"])
def test_grpc_message_that_stops_arriving_is_answered(slow_reads: Stack, route: str) -> None:
    port = slow_reads.http_port if route == "envoy" else slow_reads.grpc_port
    half = grpc_frame(b"\x0a\x05batch", length=100)

    answer = h2_call(port, f"/{SERVICE}/Cancel", GRPC_HEADERS, half, end_stream=False, wait=READ_TIMEOUT + 4)

    assert answer.grpc_status == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0]), answer
    # Envoy holds the request until it is whole (the buffer filter): the service never sees it.
    service = f"the request did not arrive within {READ_TIMEOUT:g} s"
    assert answer.grpc_message == ("the request did not arrive in time" if route == "envoy" else service)
    assert answer.seconds >= READ_TIMEOUT


@pytest.mark.parametrize(
    ("path", "shape"),
    [("/openai/v1/batches/b/cancel", "bifrost"), ("/anthropic/v1/messages/batches/b/cancel", "anthropic")],
)
def test_rest_body_that_stops_arriving_is_a_408(slow_reads: Stack, path: str, shape: str) -> None:
    with socket.create_connection(("127.0.0.1", slow_reads.http_port), timeout=READ_TIMEOUT + 10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
            + b'Content-Length: 100\r\n\r\n{"provider"'
        )
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), reply[:300]
    message = "the request did not arrive in time"  # Envoy's own reply: the service never saw it
    if shape == "bifrost":
        error = json.loads(body)["error"]
        assert (error["code"], error["message"]) == ("request_timeout", message)
    else:
        assert json.loads(body) == {"type": "error", "error": {"type": "invalid_request_error", "message": message}}


@pytest.mark.parametrize("given", ["a b", 'a"b', "x" * 200])
def test_unsafe_request_id_from_a_grpc_caller_is_replaced(
    channel: grpc.Channel, stack: Stack, sim: SimAdmin, given: str
) -> None:
    batch_id = sim.seed("openai")
    call = pb_grpc.BatchServiceStub(channel).Cancel.with_call(
        pb.CancelBatchRequest(batch_id=batch_id, provider="openai"), metadata=(("x-request-id", given),), timeout=10
    )

    answered = [value for key, value in call[1].initial_metadata() if key == "x-request-id"]
    assert len(answered) == 1 and answered[0] != given
    logged = {line["request_id"] for line in service_log(stack) if line.get("batch_id") == batch_id}
    assert logged == set(answered)
