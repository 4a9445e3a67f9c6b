"""REST through the Envoy edge (gRPC-JSON transcoding + Lua error shaping) against the sandbox."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gateway.stack import Stack, free_port
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.gen.batchgate.v1 import batchgate_pb2_grpc as pb_grpc
from tests.e2e.conftest import AZURE_API_VERSION, AZURE_KEY, INTERNAL_HEADERS, OPENAI_KEY, Gateway, SimAdmin, new_id

ID_NOT_ALLOWED = "batch_id contains characters that are not allowed in a batch id"


def bifrost_error(
    status: int,
    type_: str,
    code: str | None,
    message: str,
    *,
    provider: str = "openai",
    param: str | None = None,
    is_bifrost_error: bool,
) -> dict:
    return {
        "is_bifrost_error": is_bifrost_error,
        "status_code": status,
        "error": {"type": type_, "code": code, "message": message, "param": param},
        "extra_fields": {"provider": provider, "request_type": "batch_cancel"},
    }


def assert_json_answer(resp) -> dict:
    """A REST answer: JSON content type, no gRPC internals, a request id."""
    assert resp.headers.get("content-type") == "application/json"
    leaked = [h for h in INTERNAL_HEADERS if h in resp.headers]
    assert leaked == []
    assert resp.headers.get("x-request-id")
    return json.loads(resp.content)


def assert_int(value: object) -> None:
    assert type(value) is int, f"{value!r} is not a JSON integer"


# --- native route: success ------------------------------------------------------------------------


def test_native_cancel_success_body_is_exact(gw: Gateway, sim: SimAdmin, t0: float) -> None:
    batch_id = sim.seed("openai", request_counts={"total": 7, "completed": 3, "failed": 1})

    resp = gw.post(f"/v1/batches/{batch_id}/cancel?provider=openai")

    assert resp.status_code == 200
    body = assert_json_answer(resp)
    assert set(body) == {"id", "object", "status", "request_counts", "cancelling_at", "extra_fields"}
    assert body["id"] == batch_id
    assert body["object"] == "batch"
    assert body["status"] == "cancelling"
    assert body["request_counts"] == {"total": 7, "completed": 3, "failed": 1}
    for value in body["request_counts"].values():
        assert_int(value)  # numbers, never the transcoder's int64 strings
    upstream = sim.batch("openai", batch_id)
    assert upstream["status"] == "cancelling"
    assert_int(body["cancelling_at"])
    assert body["cancelling_at"] == upstream["cancelling_at"]
    assert "cancelled_at" not in body
    extra = body["extra_fields"]
    assert set(extra) == {"request_type", "provider", "latency", "chunk_index"}  # no raw_response by default
    assert extra["request_type"] == "batch_cancel"
    assert extra["provider"] == "openai"
    assert_int(extra["latency"])
    assert extra["latency"] >= 0
    assert extra["chunk_index"] == 0 and type(extra["chunk_index"]) is int

    calls = sim.calls(since=t0)
    assert [(c["provider"], c["method"], c["path"]) for c in calls] == [
        ("openai", "POST", f"/openai/v1/batches/{batch_id}/cancel")
    ]
    assert calls[0]["headers"]["Authorization"] == f"Bearer {OPENAI_KEY}"


def test_cancel_of_a_batch_already_cancelling_answers_its_state(gw: Gateway, sim: SimAdmin) -> None:
    cancelling_at = int(time.time()) - 60  # cancel was asked a minute ago, finishes in an hour
    batch_id = sim.seed("openai", status="cancelling", cancelling_at=cancelling_at)

    resp = gw.post(f"/v1/batches/{batch_id}/cancel?provider=openai")

    assert resp.status_code == 200
    body = assert_json_answer(resp)
    assert body["status"] == "cancelling"
    assert body["cancelling_at"] == cancelling_at
    assert "cancelled_at" not in body


def test_raw_response_header_returns_the_providers_json(gw: Gateway, sim: SimAdmin) -> None:
    batch_id = sim.seed("openai")

    resp = gw.post(f"/v1/batches/{batch_id}/cancel?provider=openai", headers={"x-bf-send-back-raw-response": "true"})

    assert resp.status_code == 200
    body = assert_json_answer(resp)
    assert body["extra_fields"]["raw_response"] == sim.batch("openai", batch_id)


def test_raw_response_header_false_sends_nothing_back(gw: Gateway, sim: SimAdmin) -> None:
    batch_id = sim.seed("openai")

    resp = gw.post(f"/v1/batches/{batch_id}/cancel?provider=openai", headers={"x-bf-send-back-raw-response": "false"})

    assert resp.status_code == 200
    assert "raw_response" not in resp.json()["extra_fields"]


# --- native route: errors -------------------------------------------------------------------------


def test_finished_batch_is_a_409_with_the_providers_error(gw: Gateway, sim: SimAdmin) -> None:
    batch_id = sim.seed("openai", status="completed")

    resp = gw.post(f"/v1/batches/{batch_id}/cancel?provider=openai")

    assert resp.status_code == 409
    assert assert_json_answer(resp) == bifrost_error(
        409, "invalid_request_error", None, "Cannot cancel a batch with status 'completed'.", is_bifrost_error=False
    )
    assert sim.batch("openai", batch_id)["status"] == "completed"


def test_batch_cancelled_upstream_is_a_409_with_cancelled_spelled_with_two_ls(gw: Gateway, sim: SimAdmin) -> None:
    batch_id = sim.seed("openai", cancel_delay_s=0)
    first = gw.post(f"/v1/batches/{batch_id}/cancel?provider=openai")
    assert first.status_code == 200 and first.json()["status"] == "cancelling"

    second = gw.post(f"/v1/batches/{batch_id}/cancel?provider=openai")

    assert second.status_code == 409
    assert assert_json_answer(second)["error"]["message"] == "Cannot cancel a batch with status 'cancelled'."


def test_unknown_batch_is_a_404(gw: Gateway, sim: SimAdmin) -> None:
    batch_id = new_id("missing")  # the sandbox never auto-creates ids starting with "missing"

    resp = gw.post(f"/v1/batches/{batch_id}/cancel?provider=openai")

    assert resp.status_code == 404
    assert assert_json_answer(resp) == bifrost_error(
        404, "invalid_request_error", None, f"No batch found with id '{batch_id}'.", is_bifrost_error=False
    )


def test_missing_provider_is_a_400(gw: Gateway, sim: SimAdmin, t0: float) -> None:
    batch_id = sim.seed("openai")

    resp = gw.post(f"/v1/batches/{batch_id}/cancel")

    assert resp.status_code == 400
    assert assert_json_answer(resp) == bifrost_error(
        400,
        "invalid_request_error",
        "invalid_request",
        "provider query parameter is required",
        provider="",
        param="provider",
        is_bifrost_error=True,
    )
    assert sim.calls(since=t0) == []


def test_unknown_provider_is_a_400(gw: Gateway, sim: SimAdmin, t0: float) -> None:
    resp = gw.post(f"/v1/batches/{new_id()}/cancel?provider=nope")

    assert resp.status_code == 400
    assert assert_json_answer(resp) == bifrost_error(
        400,
        "invalid_request_error",
        "unknown_provider",
        "unknown provider: nope",
        provider="",
        param="provider",
        is_bifrost_error=True,
    )
    assert sim.calls(since=t0) == []


@pytest.mark.parametrize("provider", ["ollama", "openrouter"])
def test_provider_that_cannot_cancel_batches_is_a_400_unsupported_operation(
    gw: Gateway, sim: SimAdmin, t0: float, provider: str
) -> None:
    resp = gw.post(f"/v1/batches/{new_id()}/cancel?provider={provider}")

    assert resp.status_code == 400
    assert assert_json_answer(resp) == bifrost_error(
        400,
        "invalid_request_error",
        "unsupported_operation",
        f"batch cancel is not supported by provider: {provider}",
        provider=provider,
        is_bifrost_error=True,
    )
    assert sim.calls(since=t0) == []


def test_native_route_requires_provider_even_with_a_surface_query_parameter(
    gw: Gateway, sim: SimAdmin, t0: float
) -> None:
    batch_id = sim.seed("openai")

    resp = gw.post(f"/v1/batches/{batch_id}/cancel?surface=openai")

    assert resp.status_code == 400
    assert sim.calls(since=t0) == []
    assert sim.batch("openai", batch_id)["status"] == "in_progress"


@pytest.mark.parametrize("route", ["native-query", "openai-body"])
def test_the_batch_cancelled_is_the_one_in_the_path(gw: Gateway, sim: SimAdmin, t0: float, route: str) -> None:
    in_path, other = sim.seed("openai"), sim.seed("openai")

    if route == "native-query":
        resp = gw.post(f"/v1/batches/{in_path}/cancel?provider=openai&batch_id={other}")
    else:
        resp = gw.post(f"/openai/v1/batches/{in_path}/cancel", json={"batch_id": other})

    assert sim.batch("openai", other)["status"] == "in_progress", "a batch not named in the path was cancelled"
    assert resp.status_code == 400 or (resp.status_code == 200 and resp.json()["id"] == in_path)


# --- OpenAI-compatible routes ---------------------------------------------------------------------

OPENAI_PREFIXES = ["/openai/v1", "/openai"]


def assert_openai_call(call: dict, batch_id: str) -> None:
    expected = ("openai", "POST", f"/openai/v1/batches/{batch_id}/cancel")
    assert (call["provider"], call["method"], call["path"]) == expected
    assert call["headers"]["Authorization"] == f"Bearer {OPENAI_KEY}"


def assert_azure_call(call: dict, batch_id: str) -> None:
    expected = ("azure", "POST", f"/azure/openai/batches/{batch_id}/cancel")
    assert (call["provider"], call["method"], call["path"]) == expected
    assert call["query"] == {"api-version": AZURE_API_VERSION}
    assert call["headers"]["api-key"] == AZURE_KEY
    assert "Authorization" not in call["headers"]


@pytest.mark.parametrize("prefix", OPENAI_PREFIXES)
def test_openai_route_with_empty_json_body_defaults_to_openai(
    gw: Gateway, sim: SimAdmin, t0: float, prefix: str
) -> None:
    batch_id = sim.seed("openai", request_counts={"total": 5, "completed": 0, "failed": 0})

    resp = gw.post(f"{prefix}/batches/{batch_id}/cancel", data=b"", headers={"Content-Type": "application/json"})

    assert resp.status_code == 200
    body = assert_json_answer(resp)
    assert (body["id"], body["object"], body["status"]) == (batch_id, "batch", "cancelling")
    assert body["request_counts"] == {"total": 5, "completed": 0, "failed": 0}
    assert body["extra_fields"]["provider"] == "openai"
    calls = sim.calls(since=t0)
    assert len(calls) == 1
    assert_openai_call(calls[0], batch_id)


@pytest.mark.parametrize("prefix", OPENAI_PREFIXES)
def test_openai_route_without_any_body_defaults_to_openai(gw: Gateway, sim: SimAdmin, t0: float, prefix: str) -> None:
    batch_id = sim.seed("openai")

    resp = gw.post(f"{prefix}/batches/{batch_id}/cancel")

    assert resp.status_code == 200
    assert assert_json_answer(resp)["extra_fields"]["provider"] == "openai"
    assert_openai_call(sim.calls(since=t0)[0], batch_id)


@pytest.mark.parametrize("prefix", OPENAI_PREFIXES)
@pytest.mark.parametrize("how", ["body", "query"])
def test_openai_route_can_target_azure(gw: Gateway, sim: SimAdmin, t0: float, prefix: str, how: str) -> None:
    batch_id = sim.seed("azure", request_counts={"total": 9, "completed": 4, "failed": 2})

    if how == "body":
        resp = gw.post(f"{prefix}/batches/{batch_id}/cancel", json={"provider": "azure"})
    else:
        resp = gw.post(f"{prefix}/batches/{batch_id}/cancel?provider=azure")

    assert resp.status_code == 200
    body = assert_json_answer(resp)
    assert (body["id"], body["status"]) == (batch_id, "cancelling")
    assert body["request_counts"] == {"total": 9, "completed": 4, "failed": 2}
    assert body["cancelling_at"] == sim.batch("azure", batch_id)["cancelling_at"]
    assert body["extra_fields"]["provider"] == "azure"
    calls = sim.calls(since=t0)
    assert len(calls) == 1
    assert_azure_call(calls[0], batch_id)


def test_openai_route_body_provider_wins_over_query(gw: Gateway, sim: SimAdmin, t0: float) -> None:
    batch_id = sim.seed("openai")

    resp = gw.post(f"/openai/v1/batches/{batch_id}/cancel?provider=azure", json={"provider": "openai"})

    assert resp.status_code == 200
    assert resp.json()["extra_fields"]["provider"] == "openai"
    assert_openai_call(sim.calls(since=t0)[0], batch_id)


def test_openai_route_errors_are_bifrost_bodies_too(gw: Gateway, sim: SimAdmin) -> None:
    batch_id = sim.seed("azure", status="completed")

    resp = gw.post(f"/openai/v1/batches/{batch_id}/cancel", json={"provider": "azure"})

    assert resp.status_code == 409
    assert assert_json_answer(resp) == bifrost_error(
        409,
        "invalid_request_error",
        "409",
        "Cannot cancel a batch with status 'completed'.",
        provider="azure",
        is_bifrost_error=False,
    )


# --- ids that would change the upstream path -----------------------------------------------------

BAD_IDS = [
    "a%2Fb",
    "a%2fb",
    "..",
    ".",
    "%2e%2e",
    "%2E%2E",
    "a%3Fb",
    "a%23b",
    "a%5Cb",
    "a%00b",
    "a%252Fb",
    "a%0Ab",
    "a%7Fb",
    "a%20b",
    "..%2F..%2Fv1%2Fbatches%2Fx",
    "a%2F..%2F..%2Fb",
    "a/b",
]


@pytest.mark.parametrize("prefix", ["/v1", "/openai/v1", "/openai"])
@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_ids_are_refused_before_any_upstream_call(
    gw: Gateway, sim: SimAdmin, t0: float, prefix: str, bad: str
) -> None:
    query = "?provider=openai" if prefix == "/v1" else ""
    path = f"{prefix}/batches/{bad}/cancel{query}"

    resp = gw.raw("POST", path)

    assert resp.header("content-type") == "application/json"
    body = json.loads(resp.body)
    if resp.status == 400:  # refused by the service
        assert body == bifrost_error(
            400, "invalid_request_error", "invalid_request", ID_NOT_ALLOWED, param="batch_id", is_bifrost_error=True
        )
    else:  # refused by Envoy itself (the path does not match a route)
        assert resp.status == 404, body
        assert body["is_bifrost_error"] is True and body["status_code"] == 404
        assert body["error"]["code"] == "route_not_found"
    assert sim.calls(since=t0) == []


def test_overlong_id_is_refused(gw: Gateway, sim: SimAdmin, t0: float) -> None:
    resp = gw.post(f"/v1/batches/{'b' * 513}/cancel?provider=openai")

    assert resp.status_code == 400
    assert assert_json_answer(resp)["error"]["message"] == ID_NOT_ALLOWED
    assert sim.calls(since=t0) == []


def test_unusual_but_safe_id_is_escaped_as_one_segment(gw: Gateway, sim: SimAdmin, t0: float) -> None:
    suffix = uuid.uuid4().hex[:12]
    batch_id = f"batch:é+@_{suffix}"

    resp = gw.post(f"/v1/batches/{batch_id}/cancel?provider=openai")

    assert resp.status_code == 200
    assert resp.json()["id"] == batch_id
    assert [c["path"] for c in sim.calls(since=t0)] == [f"/openai/v1/batches/batch%3A%C3%A9%2B%40_{suffix}/cancel"]


# --- Envoy's own replies --------------------------------------------------------------------------

ENVOY_REPLIES = {
    "unknown path": ("POST", "/nope", None, {}, 404, "route_not_found"),
    "unknown versioned path": ("POST", "/v2/batches/x/cancel?provider=openai", None, {}, 404, "route_not_found"),
    "GET on cancel": ("GET", "/v1/batches/{id}/cancel?provider=openai", None, {}, 405, "method_not_allowed"),
    "DELETE on the OpenAI route": ("DELETE", "/openai/v1/batches/{id}/cancel", None, {}, 405, "method_not_allowed"),
    "POST on health": ("POST", "/health", None, {}, 405, "method_not_allowed"),
    "malformed json": (
        "POST",
        "/openai/v1/batches/{id}/cancel",
        b'{"provider": ',
        {"Content-Type": "application/json"},
        400,
        "invalid_request",
    ),
    "json array body": (
        "POST",
        "/openai/v1/batches/{id}/cancel",
        b"[]",
        {"Content-Type": "application/json"},
        400,
        "invalid_request",
    ),
    "wrong field type": (
        "POST",
        "/openai/v1/batches/{id}/cancel",
        b'{"provider": 5}',
        {"Content-Type": "application/json"},
        400,
        "invalid_request",
    ),
    "body over 64 KiB": (
        "POST",
        "/openai/v1/batches/{id}/cancel",
        b'{"provider": "' + b"a" * (64 * 1024) + b'"}',
        {"Content-Type": "application/json"},
        413,
        "request_too_large",
    ),
    "unknown query parameter": (
        "POST",
        "/v1/batches/{id}/cancel?provider=openai&foo=1",
        None,
        {},
        400,
        "invalid_request",
    ),
}


@pytest.mark.parametrize("case", list(ENVOY_REPLIES))
def test_envoy_replies_are_bifrost_json(gw: Gateway, sim: SimAdmin, t0: float, case: str) -> None:
    method, path, body, headers, status, code = ENVOY_REPLIES[case]
    batch_id = sim.seed("openai")

    resp = gw.request(method, path.format(id=batch_id), data=body, headers=headers)

    assert resp.status_code == status
    assert resp.headers.get("content-type") == "application/json"
    answer = json.loads(resp.content)
    assert answer["is_bifrost_error"] is True
    assert answer["status_code"] == status
    assert answer["error"]["code"] == code
    assert isinstance(answer["error"]["type"], str) and answer["error"]["type"]
    assert isinstance(answer["error"]["message"], str) and answer["error"]["message"]
    assert answer["error"]["type"].endswith("_error")
    # Only a cancel route's errors say they are about a cancel (issue 23).
    no_cancel = code in ("route_not_found", "method_not_allowed")
    assert answer["extra_fields"]["request_type"] == (None if no_cancel else "batch_cancel")
    if code == "method_not_allowed":
        assert resp.headers["allow"] == ("GET" if path == "/health" else "POST")
        assert (
            answer["error"]["message"]
            == f"{method} is not allowed on {path.format(id=batch_id)}; use {resp.headers['allow']}"
        )
    assert sim.calls(since=t0) == []
    assert sim.batch("openai", batch_id)["status"] == "in_progress"


def test_envoy_replies_have_the_same_keys_as_service_errors(gw: Gateway) -> None:
    service_error = gw.post(f"/v1/batches/{new_id()}/cancel").json()
    envoy_error = gw.post("/nope").json()

    assert set(envoy_error) == set(service_error)
    assert set(envoy_error["error"]) == set(service_error["error"])
    assert set(envoy_error["extra_fields"]) == set(service_error["extra_fields"])


# --- upstream faults ------------------------------------------------------------------------------


def test_rate_limit_after_retries_is_a_429(gw: Gateway, faults: SimAdmin, t0: float) -> None:
    batch_id = faults.seed("openai")
    faults.add_faults("openai", {"status": 429, "retry_after": 0.05, "count": 3})  # 1 try + max_retries=2

    resp = gw.post(f"/v1/batches/{batch_id}/cancel?provider=openai")

    assert resp.status_code == 429
    assert assert_json_answer(resp) == bifrost_error(
        429,
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests on batches. Please try again later.",
        is_bifrost_error=False,
    )
    calls = faults.calls(since=t0, batch_id=batch_id)
    assert len(calls) == 3
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(calls)]
    assert all(gap >= 0.04 for gap in gaps), f"Retry-After 0.05 s not honoured: {gaps}"
    assert faults.batch("openai", batch_id)["status"] == "in_progress"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (503, "The server is overloaded or not ready yet."),
        (500, "The server had an error while processing your request. Sorry about that!"),
    ],
)
def test_server_error_after_retries_keeps_its_status(
    gw: Gateway, faults: SimAdmin, t0: float, status: int, message: str
) -> None:
    batch_id = faults.seed("openai")
    faults.add_faults("openai", {"status": status, "count": 3})

    resp = gw.post(f"/v1/batches/{batch_id}/cancel?provider=openai")

    assert resp.status_code == status
    assert assert_json_answer(resp) == bifrost_error(status, "server_error", None, message, is_bifrost_error=False)
    assert len(faults.calls(since=t0, batch_id=batch_id)) == 3


def test_transient_errors_are_retried_to_success(gw: Gateway, faults: SimAdmin, t0: float) -> None:
    batch_id = faults.seed("openai")
    faults.add_faults("openai", [{"status": 503}, {"status": 429, "retry_after": 0}])

    resp = gw.post(f"/v1/batches/{batch_id}/cancel?provider=openai")

    assert resp.status_code == 200
    assert resp.json()["status"] == "cancelling"
    assert len(faults.calls(since=t0, batch_id=batch_id)) == 3


# --- a second gateway: only OpenAI configured, then its service dies -----------------------------


@pytest.fixture(scope="module")
def openai_only(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway with a config that names only OpenAI (pointed at the shared sandbox)."""
    tmp = tmp_path_factory.mktemp("openai-only")
    config = {
        "providers": {
            "openai": {
                "keys": [{"name": "k", "value": OPENAI_KEY, "use_for_batch_api": True}],
                "network_config": {"base_url": f"{stack.sandbox_url}/openai"},
            }
        }
    }
    config_path = Path(tmp) / "config.json"
    config_path.write_text(json.dumps(config))
    other = Stack(
        config=config_path,
        http_port=free_port(),
        grpc_port=free_port(),
        admin_port=free_port(),
        log_dir=Path(tmp) / "logs",
    )
    other.start()
    try:
        yield other
    finally:
        other.stop()


def test_known_but_unconfigured_provider_is_a_400(openai_only: Stack, sim: SimAdmin, t0: float) -> None:
    gw = Gateway(openai_only)

    resp = gw.post(f"/v1/batches/{new_id()}/cancel?provider=azure")

    assert resp.status_code == 400
    assert assert_json_answer(resp) == bifrost_error(
        400,
        "invalid_request_error",
        "provider_not_configured",
        "provider is not configured: azure",
        provider="azure",
        is_bifrost_error=True,
    )
    assert sim.calls(since=t0) == []


def test_service_down_is_a_503_bifrost_body(openai_only: Stack, sim: SimAdmin) -> None:
    gw = Gateway(openai_only)
    batch_id = sim.seed("openai")
    assert gw.post(f"/v1/batches/{batch_id}/cancel?provider=openai").status_code == 200  # alive first
    (service,) = [p for p in openai_only.procs if "-m" in p.args and "service" in p.args]
    service.kill()
    service.wait(5)

    resp = gw.post(f"/v1/batches/{new_id()}/cancel?provider=openai")

    assert resp.status_code == 503
    assert resp.headers.get("content-type") == "application/json"
    assert json.loads(resp.content) == {
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
    # Native gRPC through the same edge gets the canonical code.
    with grpc.insecure_channel(f"127.0.0.1:{openai_only.http_port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.BatchServiceStub(channel).Cancel(
                pb.CancelBatchRequest(batch_id=new_id(), provider="openai"), timeout=5
            )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    "path",
    ["/v1/batches/{id}:cancel?provider=openai", "/v1/batches/{id}/cancel/?provider=openai", "/v1/nope", "/"],
)
def test_a_path_that_is_no_cancel_route_does_not_claim_to_be_a_cancel(gw: Gateway, sim: SimAdmin, path: str) -> None:
    """Issue 23: `request_type: batch_cancel` only on a cancel route; a 404, whoever answers it, says null."""
    resp = gw.request("POST", path.format(id=new_id()))
    assert resp.status_code == 404
    body = resp.json()
    assert (body["error"]["code"], body["error"]["type"]) == ("route_not_found", "invalid_request_error")
    assert body["extra_fields"] == {"provider": "", "request_type": None}
