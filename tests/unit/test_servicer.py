"""The servicer: errors raised before any upstream call become the right gRPC status, REST error
headers and typed detail; unexpected exceptions become a sealed INTERNAL.

grpc_testing drives only synchronous servicers (its ServicerContext has no `abort_with_status`
and nothing awaits a coroutine), so most tests drive `BatchServicer.Cancel` directly with a small
fake grpc.aio context. A thin sync bridge then lets grpc_testing drive the real servicer end to end
(an error, and a cancel against the in-process sandbox). The generated descriptor's HTTP bindings,
which Envoy's transcoder reads, are checked too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from urllib.parse import quote

import grpc
import grpc_testing
import pytest
from google.api import annotations_pb2
from google.rpc import status_pb2

from service.domain.model import BatchState, CancelResult, RequestCounts
from service.edge.api import ERROR_BODY_HEADER, ERROR_STATUS_HEADER, BatchServicer
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.gen.batchgate.v1 import batchgate_pb2_grpc as pb_grpc
from service.infra.providers.catalog import ADAPTERS, NO_BATCH_CANCEL, parse_config
from service.runtime.build import Collaborators, RuntimeFactory
from service.runtime.live import LiveConfig
from tests.support import OPENAI_KEYS, config_dict

SERVICE = pb.DESCRIPTOR.services_by_name["BatchService"]
CANCEL = SERVICE.methods_by_name["Cancel"]
SECRET = "sk-unit-servicer-SECRET-9999"
# A known provider without batch cancel (and without a provider-specific key config).
UNSUPPORTED = "cerebras"


def test_the_unsupported_provider_here_is_one():
    assert UNSUPPORTED in NO_BATCH_CANCEL and UNSUPPORTED not in ADAPTERS


def config(*, batch: bool = True):
    return parse_config(
        {
            "providers": {
                "openai": {
                    "keys": [{"name": "main", "value": SECRET, "use_for_batch_api": batch}],
                    "network_config": {"base_url": "http://127.0.0.1:9", "max_retries": 0},
                },
                UNSUPPORTED: {"keys": [{"value": "other-key"}]},
            }
        },
        env={},
    )


class Aborted(Exception):
    """What grpc.aio's abort raises: the handler stops there."""


class FakeContext:
    """The part of grpc.aio.ServicerContext the servicer uses, recording what it is asked to do."""

    def __init__(self, metadata=(), time_remaining=None):
        self._metadata = tuple(metadata)
        self._time_remaining = time_remaining
        self.initial_metadata: list[tuple] = []
        self.statuses: list[grpc.Status] = []

    def invocation_metadata(self):
        return self._metadata

    def time_remaining(self):
        return self._time_remaining

    async def send_initial_metadata(self, metadata):
        self.initial_metadata.append(tuple(metadata))

    async def abort_with_status(self, status):
        self.statuses.append(status)
        raise Aborted


class RefusingExecutor:
    """An executor that fails the test on any upstream call (which would surface as INTERNAL)."""

    def __init__(self, name, provider_config, breaker, calls):
        self.breaker, self._calls = breaker, calls

    async def send(self, request, deadline, record=None):
        self._calls.append(request)
        raise AssertionError(f"unexpected upstream call to {request.url}")

    async def close(self):
        pass


# Upstream calls the offline cancellers were asked to make (the `no_network` fixture clears it).
UPSTREAM_CALLS: list = []
OFFLINE = Collaborators(executor=lambda name, pc, breaker: RefusingExecutor(name, pc, breaker, UPSTREAM_CALLS))


def offline(cfg=None) -> LiveConfig:
    """The running config `cfg` (default: config()) whose executors refuse any upstream call."""
    cfg = cfg or config()
    return LiveConfig(cfg, factory=RuntimeFactory.for_config(cfg, OFFLINE))


@pytest.fixture
def no_network():
    """The upstream calls made through `offline` cancellers during the test (none expected)."""
    UPSTREAM_CALLS.clear()
    return UPSTREAM_CALLS


def rest_path(request: pb.CancelBatchRequest) -> str:
    """The path a REST call of `request` came through (Envoy passes it as x-envoy-original-path)."""
    prefix = f"/{request.surface}" if request.surface else ""
    return f"{prefix}/v1/batches/{quote(request.batch_id, safe='')}/cancel"


async def call(request: pb.CancelBatchRequest, live: LiveConfig | None = None, *, rest: bool = True, **context_args):
    """Cancel through a fake context: by default a REST call through the edge (which gets the error
    rendered for the edge in initial metadata), else a native gRPC call."""
    live = live or offline()
    if rest:
        context_args["metadata"] = (*context_args.get("metadata", ()), ("x-envoy-original-path", rest_path(request)))
    context = FakeContext(**context_args)
    try:
        with pytest.raises(Aborted):
            await BatchServicer(live).Cancel(request, context)
    finally:
        await live.close()
    (status,) = context.statuses  # aborted exactly once
    (metadata,) = context.initial_metadata  # error headers sent exactly once, before the abort
    return status, dict(metadata)


def unpack(trailing_metadata) -> tuple[status_pb2.Status, pb.ErrorDetail]:
    (entry,) = [value for key, value in trailing_metadata if key == "grpc-status-details-bin"]
    rich = status_pb2.Status.FromString(entry)
    detail = pb.ErrorDetail()
    assert rich.details[0].Unpack(detail)
    return rich, detail


CASES = [
    pytest.param(
        pb.CancelBatchRequest(batch_id="batch_1"),
        {"code": "invalid_request", "param": "provider", "provider": "",
         "message": "provider query parameter is required"},
        id="missing-provider",
    ),
    pytest.param(
        pb.CancelBatchRequest(batch_id="batch_1", provider="nosuch"),
        {"code": "unknown_provider", "param": "provider", "provider": "", "message": "unknown provider: nosuch"},
        id="unknown-provider",
    ),
    pytest.param(
        pb.CancelBatchRequest(batch_id="batch_1", provider="open ai/../x"),
        {"code": "unknown_provider", "param": "provider", "provider": "", "message": "unknown provider: open ai/../x"},
        id="malformed-provider",
    ),
    pytest.param(
        pb.CancelBatchRequest(batch_id="batch_1", provider="p" * 200),
        {"code": "unknown_provider", "param": "provider", "provider": "", "message": "unknown provider: " + "p" * 64},
        id="long-provider-truncated",
    ),
    pytest.param(
        pb.CancelBatchRequest(batch_id="batch_1", provider=UNSUPPORTED.upper()),
        {"code": "unsupported_operation", "param": None, "provider": UNSUPPORTED,
         "message": f"batch cancel is not supported by provider: {UNSUPPORTED}"},
        id="unsupported-provider",
    ),
    pytest.param(
        pb.CancelBatchRequest(batch_id="batch_1", provider="azure"),
        {"code": "provider_not_configured", "param": None, "provider": "azure",
         "message": "provider is not configured: azure"},
        id="unconfigured-provider",
    ),
    pytest.param(
        pb.CancelBatchRequest(batch_id="../files/x", surface="openai"),
        {"code": "invalid_request", "param": "batch_id", "provider": "openai",
         "message": "batch_id contains characters that are not allowed in a batch id"},
        id="bad-batch-id",
    ),
    pytest.param(
        pb.CancelBatchRequest(batch_id="", provider="openai"),
        {"code": "invalid_request", "param": "batch_id", "provider": "openai", "message": "batch_id is required"},
        id="empty-batch-id",
    ),
]  # fmt: skip


@pytest.mark.parametrize("rest", [True, False], ids=["rest", "grpc"])
@pytest.mark.parametrize(("request_", "expected"), CASES)
async def test_errors_before_any_upstream_call(request_, expected, rest, no_network):
    if rest and not request_.batch_id:
        pytest.skip("a REST path always names a batch")
    status, metadata = await call(request_, rest=rest)
    assert no_network == []
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == expected["message"]
    body = {
        "is_bifrost_error": True,
        "status_code": 400,
        "error": {
            "type": "invalid_request_error",
            "code": expected["code"],
            "message": expected["message"],
            "param": expected["param"],
        },
        "extra_fields": {"provider": expected["provider"], "request_type": "batch_cancel"},
    }
    if rest:
        assert json.loads(metadata[ERROR_BODY_HEADER]) == body
        assert metadata[ERROR_STATUS_HEADER] == "400"
        assert set(metadata) == {ERROR_BODY_HEADER, ERROR_STATUS_HEADER, "x-request-id"}  # id generated here
    else:  # the edge's plumbing is for the edge only (issue 23)
        assert set(metadata) == {"x-request-id"}
    rich, detail = unpack(status.trailing_metadata)
    assert rich.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and rich.message == expected["message"]
    assert (detail.error.code, detail.status_code, detail.is_bifrost_error) == (expected["code"], 400, True)
    assert detail.error.HasField("param") is (expected["param"] is not None)
    assert detail.extra_fields.provider == expected["provider"]


async def test_no_batch_enabled_keys(no_network):
    request = pb.CancelBatchRequest(batch_id="b", provider="openai")
    status, metadata = await call(request, offline(config(batch=False)))
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    body = json.loads(metadata[ERROR_BODY_HEADER])
    assert body["error"]["code"] == "no_batch_keys"
    assert body["error"]["message"] == "no batch-enabled keys found for provider: openai"
    assert body["extra_fields"]["provider"] == "openai"
    assert no_network == []


async def test_error_body_is_ascii_for_non_ascii_provider(no_network):
    status, metadata = await call(pb.CancelBatchRequest(batch_id="b", provider="öpenai"))
    assert metadata[ERROR_BODY_HEADER].isascii()
    assert json.loads(metadata[ERROR_BODY_HEADER])["error"]["message"] == "unknown provider: öpenai"


async def test_unexpected_exception_is_a_sealed_internal(monkeypatch, caplog):
    live = offline()

    async def boom(command, call):
        raise RuntimeError(f"connection string postgres://admin:{SECRET}@db/batch")

    monkeypatch.setattr(live.current.canceller, "cancel", boom)
    with caplog.at_level(logging.ERROR, logger="service.edge.api"):
        status, metadata = await call(pb.CancelBatchRequest(batch_id="b", provider="openai"), live)
    assert status.code is grpc.StatusCode.INTERNAL
    assert status.details == "internal error"
    assert metadata[ERROR_STATUS_HEADER] == "500"
    body = json.loads(metadata[ERROR_BODY_HEADER])
    assert body == {
        "is_bifrost_error": True,
        "status_code": 500,
        "error": {"type": "internal_error", "code": "internal_error", "message": "internal error", "param": None},
        "extra_fields": {"provider": "", "request_type": "batch_cancel"},
    }
    _, detail = unpack(status.trailing_metadata)
    assert detail.error.message == "internal error" and detail.status_code == 500
    everything_sent = repr((status.details, status.trailing_metadata, metadata))
    for leaked in (SECRET, "RuntimeError", "postgres"):
        assert leaked not in everything_sent
    # ...but the operator sees it in the log, with the traceback.
    (record,) = [r for r in caplog.records if r.name == "service.edge.api"]
    assert record.exc_info and record.exc_info[0] is RuntimeError


async def test_success_passes_metadata_and_deadline_and_answers_the_proto():
    live = offline()
    seen = []

    async def cancel(command, call):
        seen.append((command, call.deadline))
        batch = BatchState("batch_1", "cancelling", RequestCounts(total=3, completed=1, failed=0), 1738667012)
        return CancelResult(batch, "openai", 17, {"id": "batch_1"})

    live.current.canceller.cancel = cancel
    context = FakeContext(
        metadata=(("x-bf-send-back-raw-response", "true"), ("x-request-id", "req-1")), time_remaining=2.5
    )
    request = pb.CancelBatchRequest(batch_id="batch_1", surface="openai")
    loop = asyncio.get_running_loop()
    before = loop.time()
    response = await BatchServicer(live).Cancel(request, context)
    after = loop.time()
    await live.close()
    assert context.statuses == [] and context.initial_metadata == []  # the request id came with the call
    ((command, deadline),) = seen
    assert (command.batch_id, command.provider, command.raw_response_requested) == ("batch_1", "openai", True)
    assert before + 2.5 <= deadline <= after + 2.5  # the call's 2.5 s, as loop time
    assert isinstance(response, pb.BatchCancelResponse)
    assert (response.id, response.status, response.cancelling_at) == ("batch_1", "cancelling", 1738667012)
    assert response.request_counts.total == 3 and not response.HasField("cancelled_at")
    assert response.extra_fields.latency == 17 and response.extra_fields.provider == "openai"


# --- grpc_testing -----------------------------------------------------------------------------------


def test_descriptor_exposes_the_http_bindings():
    assert (CANCEL.full_name, CANCEL.input_type.name, CANCEL.output_type.name) == (
        "batchgate.v1.BatchService.Cancel",
        "CancelBatchRequest",
        "BatchCancelResponse",
    )
    rule = CANCEL.GetOptions().Extensions[annotations_pb2.http]
    assert (rule.WhichOneof("pattern"), rule.post, rule.body) == ("post", "/v1/batches/{batch_id}/cancel", "")
    bindings = [(b.WhichOneof("pattern"), b.post, b.body) for b in rule.additional_bindings]
    assert bindings == [
        ("post", "/{surface=openai}/v1/batches/{batch_id}/cancel", "*"),
        ("post", "/{surface=openai}/batches/{batch_id}/cancel", "*"),
    ]
    # Every bound path variable is a field of the request message.
    fields = set(CANCEL.input_type.fields_by_name)
    assert {"batch_id", "surface"} <= fields


class _Bridge:
    """grpc.aio-style context over grpc_testing's synchronous one."""

    def __init__(self, context):
        self._context = context

    def invocation_metadata(self):
        return self._context.invocation_metadata()

    def time_remaining(self):
        return self._context.time_remaining()

    async def send_initial_metadata(self, metadata):
        self._context.send_initial_metadata(metadata)

    async def abort_with_status(self, status):
        self._context.set_code(status.code)
        self._context.set_details(status.details)
        self._context.set_trailing_metadata(status.trailing_metadata)
        raise Aborted


class SyncBatchServicer(pb_grpc.BatchServiceServicer):
    """Runs the real async servicer on a private event loop in grpc_testing's handler thread."""

    def __init__(self, config, parts=None):
        self._config = config
        self._parts = parts

    def Cancel(self, request, context):
        async def run():
            live = LiveConfig(self._config, factory=RuntimeFactory.for_config(self._config, self._parts))
            try:
                return await BatchServicer(live).Cancel(request, _Bridge(context))
            except Aborted:
                return None
            finally:
                await live.close()

        return asyncio.run(run())


def _invoke(config, request, metadata=(), parts=None):
    servicers = {SERVICE: SyncBatchServicer(config, parts)}
    server = grpc_testing.server_from_dictionary(servicers, grpc_testing.strict_real_time())
    return server.invoke_unary_unary(CANCEL, metadata, request, None)


def test_grpc_testing_drives_an_error_end_to_end(no_network):
    request = pb.CancelBatchRequest(batch_id="batch_1", provider=UNSUPPORTED)
    rpc = _invoke(config(), request, (("x-envoy-original-path", rest_path(request)),), parts=OFFLINE)
    initial = dict(rpc.initial_metadata())
    response, trailing, code, details = rpc.termination()
    assert response is None
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"batch cancel is not supported by provider: {UNSUPPORTED}"
    assert initial[ERROR_STATUS_HEADER] == "400"
    assert json.loads(initial[ERROR_BODY_HEADER])["error"]["code"] == "unsupported_operation"
    rich, detail = unpack(trailing)
    assert rich.code == code.value[0] and rich.message == details
    assert detail.error.code == "unsupported_operation" and detail.extra_fields.provider == UNSUPPORTED


async def test_grpc_testing_drives_a_cancel_against_the_sandbox(sandbox, sim):
    batch_id = f"batch_unit_{uuid.uuid4().hex[:12]}"
    sim.seed("openai", batch_id, request_counts={"total": 7, "completed": 3, "failed": 1})
    metadata = (("x-request-id", "unit-1"),)
    request = pb.CancelBatchRequest(batch_id=batch_id, surface="openai")
    rpc = _invoke(parse_config(config_dict(sandbox.url), env={}), request, metadata)
    # The sandbox runs on this loop: wait for the handler thread without blocking it.
    response, trailing, code, details = await asyncio.to_thread(rpc.termination)
    assert code is grpc.StatusCode.OK, details
    assert (response.id, response.object, response.status) == (batch_id, "batch", "cancelling")
    rc = response.request_counts
    assert (rc.total, rc.completed, rc.failed) == (7, 3, 1) and not rc.HasField("pending")
    assert response.HasField("cancelling_at") and not response.HasField("cancelled_at")
    assert response.extra_fields.provider == "openai" and response.extra_fields.request_type == "batch_cancel"
    assert not response.extra_fields.HasField("raw_response")  # not enabled in this config
    (upstream,) = sim.calls("openai")
    assert upstream["method"] == "POST" and upstream["path"] == f"/openai/v1/batches/{batch_id}/cancel"
    assert upstream["headers"]["Authorization"] == f"Bearer {OPENAI_KEYS[0]}"


# --- Health goes through the same wrapper ----------------------------------------------------------


HEALTH_REST = (("x-envoy-original-path", "/health"),)


async def test_health_while_draining_is_503_with_the_health_answer_as_body(no_network):
    servicer = BatchServicer(offline())
    servicer.draining = True
    context = FakeContext(HEALTH_REST)
    with pytest.raises(Aborted):
        await servicer.Health(pb.HealthRequest(), context)
    (status,) = context.statuses
    (metadata,) = context.initial_metadata
    metadata = dict(metadata)
    assert status.code is grpc.StatusCode.UNAVAILABLE and status.details == "the service is shutting down"
    assert metadata[ERROR_STATUS_HEADER] == "503" and "x-request-id" not in metadata
    body = json.loads(metadata[ERROR_BODY_HEADER])
    assert body["status"] == "draining" and body["providers"]["openai"] == {"circuit": "closed"}
    _, detail = unpack(status.trailing_metadata)
    assert (detail.status_code, detail.error.code) == (503, "draining")


async def test_health_failing_unexpectedly_is_a_sealed_internal(monkeypatch, caplog):
    live = offline()

    def boom():
        raise RuntimeError(f"secret {SECRET}")

    monkeypatch.setattr(live.current.canceller, "breaker_states", boom)
    context = FakeContext(HEALTH_REST)
    with caplog.at_level(logging.ERROR, logger="service.edge.api"), pytest.raises(Aborted):
        await BatchServicer(live).Health(pb.HealthRequest(), context)
    (status,) = context.statuses
    assert status.code is grpc.StatusCode.INTERNAL and status.details == "internal error"
    assert SECRET not in repr((status, context.initial_metadata))
    assert json.loads(dict(context.initial_metadata[0])[ERROR_BODY_HEADER])["status_code"] == 500


async def test_health_when_serving_answers_ok_without_metadata():
    context = FakeContext()
    response = await BatchServicer(offline()).Health(pb.HealthRequest(), context)
    assert response.status == "ok" and context.statuses == [] and context.initial_metadata == []
