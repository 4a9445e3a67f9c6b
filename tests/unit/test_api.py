"""Proto <-> domain converters, the error -> gRPC status mapping and the Bifrost error body."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import json_format

from service.domain.errors import (
    DeadlineExceeded,
    GatewayError,
    InvalidRequest,
    Overloaded,
    PermissionDenied,
    ProviderError,
    Unauthenticated,
    UnsupportedOperation,
    UpstreamUnavailable,
)
from service.domain.model import BatchState, CancelResult, RequestCounts
from service.edge import envelope
from service.edge.api import command_from_proto, metadata_headers, rest_error_metadata
from service.edge.converters import error_to_status, result_to_proto
from service.edge.envelope import ERROR_BODY_HEADER, ERROR_STATUS_HEADER
from service.edge.status import grpc_code, grpc_code_for_http
from service.gen.batchgate.v1 import batchgate_pb2 as pb

# --- command_from_proto -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "surface", "expected"),
    [
        ("openai", "", "openai"),
        ("  Azure ", "", "azure"),
        ("OPENAI", "openai", "openai"),
        ("", "openai", "openai"),
        ("   ", "openai", "openai"),
        ("azure", "openai", "azure"),
        ("", "", ""),
        ("", "nosuchsurface", ""),  # a surface without a default provider
    ],
)
def test_command_provider(provider, surface, expected):
    request = pb.CancelBatchRequest(batch_id="batch_1", provider=provider, surface=surface)
    command = command_from_proto(request, ())
    assert command.provider == expected
    assert command.batch_id == "batch_1"


def test_command_keeps_batch_id_exactly():
    command = command_from_proto(pb.CancelBatchRequest(batch_id=" Batch_ABC ", provider="openai"), None)
    assert command.batch_id == " Batch_ABC "  # validation happens later, and never rewrites the id
    assert command.raw_response_requested is False


@pytest.mark.parametrize(
    ("value", "requested"),
    [("true", True), ("TRUE", True), ("True", True), ("false", False), ("1", False), ("yes", False), ("", False)],
)
def test_raw_response_header(value, requested):
    metadata = (("x-bf-send-back-raw-response", value),)
    assert command_from_proto(pb.CancelBatchRequest(provider="openai"), metadata).raw_response_requested is requested


def test_metadata_becomes_headers_without_binary_entries():
    metadata = grpc.aio.Metadata(
        ("x-request-id", "req-1"),
        ("trace-context-bin", b"\x00\x01\x02"),
        ("grpc-trace-bin", b"\xff"),
        ("x-bf-send-back-raw-response", "true"),
    )
    command = command_from_proto(pb.CancelBatchRequest(batch_id="b", provider="openai"), metadata)
    assert metadata_headers(metadata) == {"x-request-id": "req-1", "x-bf-send-back-raw-response": "true"}
    assert command.raw_response_requested is True
    # A `-bin` entry cannot switch raw responses on.
    binary_only = (("x-bf-send-back-raw-response-bin", b"true"),)
    assert command_from_proto(pb.CancelBatchRequest(provider="openai"), binary_only).raw_response_requested is False


# --- result_to_proto --------------------------------------------------------------------------------


def result(**batch_fields) -> CancelResult:
    fields = {"id": "batch_1", "status": "cancelling", **batch_fields}
    return CancelResult(BatchState(**fields), provider="openai", latency_ms=42)


def test_result_numbers_are_set():
    counts = RequestCounts(total=100, completed=23, failed=1, succeeded=22, expired=0, canceled=3, pending=74)
    response = result_to_proto(result(counts=counts, cancelling_at=1738667012, cancelled_at=1738667100))
    assert (response.id, response.object, response.status) == ("batch_1", "batch", "cancelling")
    rc = response.request_counts
    assert (rc.total, rc.completed, rc.failed, rc.succeeded, rc.expired, rc.canceled, rc.pending) == (
        100,
        23,
        1,
        22,
        0,
        3,
        74,
    )
    assert rc.HasField("expired")  # zero is a reported value, not "unknown"
    assert response.HasField("cancelling_at") and response.cancelling_at == 1738667012
    assert response.HasField("cancelled_at") and response.cancelled_at == 1738667100
    extra = response.extra_fields
    assert (extra.request_type, extra.provider, extra.latency, extra.chunk_index) == ("batch_cancel", "openai", 42, 0)
    assert not extra.HasField("raw_response")


def test_unknown_values_are_absent():
    response = result_to_proto(result(status="paused"))
    assert response.status == "paused"
    assert not response.HasField("request_counts")
    assert not response.HasField("cancelling_at") and not response.HasField("cancelled_at")
    assert not response.extra_fields.HasField("raw_response")
    assert "requestCounts" not in json_format.MessageToDict(response)


def test_partial_counts_leave_unknown_counts_absent():
    response = result_to_proto(result(counts=RequestCounts(total=5, completed=0)))
    rc = response.request_counts
    assert response.HasField("request_counts")
    assert rc.HasField("total") and rc.HasField("completed") and rc.completed == 0
    for name in ("failed", "succeeded", "expired", "canceled", "pending"):
        assert not rc.HasField(name), name
    assert json_format.MessageToDict(rc) == {"total": 5, "completed": 0}


def test_empty_counts_object_is_present_but_empty():
    response = result_to_proto(result(counts=RequestCounts()))
    assert response.HasField("request_counts")
    assert response.request_counts.ListFields() == []


def test_raw_response_round_trips_into_a_value():
    raw = {
        "id": "batch_1",
        "object": "batch",
        "status": "cancelling",
        "errors": None,
        "request_counts": {"total": 100, "completed": 23, "failed": 1},
        "metadata": {"customer": "ünïcødé ✓"},
        "flags": [True, False, None, "x", 1.5],
    }
    response = result_to_proto(CancelResult(BatchState("batch_1", "cancelling"), "openai", 1, raw))
    assert response.extra_fields.HasField("raw_response")
    value = response.extra_fields.raw_response
    assert value.WhichOneof("kind") == "struct_value"
    assert json_format.MessageToDict(value) == raw
    # Survives the wire.
    again = pb.BatchCancelResponse.FromString(response.SerializeToString())
    assert json_format.MessageToDict(again.extra_fields.raw_response) == raw


def test_warning_is_carried_only_when_set():
    plain = result_to_proto(result())
    assert not plain.extra_fields.HasField("warning")
    warned = CancelResult(BatchState("b", "cancelling"), "openai", 1, warning="follow-up read failed")
    assert result_to_proto(warned).extra_fields.warning == "follow-up read failed"


# --- error_to_status --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT),
        (401, grpc.StatusCode.UNAUTHENTICATED),
        (403, grpc.StatusCode.PERMISSION_DENIED),
        (404, grpc.StatusCode.NOT_FOUND),
        (409, grpc.StatusCode.FAILED_PRECONDITION),
        (422, grpc.StatusCode.INVALID_ARGUMENT),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (418, grpc.StatusCode.INVALID_ARGUMENT),
        (500, grpc.StatusCode.INTERNAL),
        (502, grpc.StatusCode.UNAVAILABLE),
        (503, grpc.StatusCode.UNAVAILABLE),
        (529, grpc.StatusCode.UNAVAILABLE),
        (504, grpc.StatusCode.DEADLINE_EXCEEDED),
        # Statuses without a row of their own: another 4xx is the caller's, 429 aside; 502 and up
        # are unavailable; anything else (a 3xx, an unknown 5xx below 502) is internal.
        (410, grpc.StatusCode.INVALID_ARGUMENT),
        (451, grpc.StatusCode.INVALID_ARGUMENT),
        (302, grpc.StatusCode.INTERNAL),
        (505, grpc.StatusCode.UNAVAILABLE),
        (599, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_http_status_maps_to_grpc_code(status, code):
    assert grpc_code_for_http(status) is code
    error = ProviderError("upstream said no", status_code=status, provider="openai")
    assert error_to_status(error).code == code.value[0]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidRequest("bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (UnsupportedOperation("nope"), grpc.StatusCode.INVALID_ARGUMENT),
        (Unauthenticated("who"), grpc.StatusCode.UNAUTHENTICATED),
        (PermissionDenied("no"), grpc.StatusCode.PERMISSION_DENIED),
        (Overloaded("busy"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (UpstreamUnavailable("down"), grpc.StatusCode.UNAVAILABLE),
        (DeadlineExceeded("slow"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (GatewayError("internal error"), grpc.StatusCode.INTERNAL),
    ],
)
def test_gateway_error_classes_map_to_codes(error, code):
    assert grpc_code(error) is code
    assert error_to_status(error).code == code.value[0]


def _detail(status) -> pb.ErrorDetail:
    (packed,) = status.details
    detail = pb.ErrorDetail()
    assert packed.Is(pb.ErrorDetail.DESCRIPTOR)
    assert packed.Unpack(detail)
    return detail


def test_status_detail_carries_the_same_fields_as_the_error_body():
    error = InvalidRequest("batch_id contains characters", param="batch_id", provider="azure")
    status = error_to_status(error)
    assert status.message == "batch_id contains characters"
    detail = _detail(status)
    body = json.loads(envelope.error_json(error))
    assert detail.is_bifrost_error is body["is_bifrost_error"] is True
    assert detail.status_code == body["status_code"] == 400
    assert (
        (detail.error.type, detail.error.code, detail.error.message, detail.error.param)
        == (
            body["error"]["type"],
            body["error"]["code"],
            body["error"]["message"],
            body["error"]["param"],
        )
        == ("invalid_request_error", "invalid_request", "batch_id contains characters", "batch_id")
    )
    assert (detail.extra_fields.provider, detail.extra_fields.request_type) == ("azure", "batch_cancel")
    assert json_format.MessageToDict(detail, preserving_proto_field_name=True) == body


def test_status_detail_of_a_provider_error_without_code_or_param():
    error = ProviderError("No batch found with id 'b'.", status_code=404, type="invalid_request_error", code=None,
                          provider="openai")  # fmt: skip
    status = error_to_status(error)
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    detail = _detail(status)
    assert detail.is_bifrost_error is False and detail.status_code == 404
    assert not detail.error.HasField("code") and not detail.error.HasField("param")
    assert detail.error.type == "invalid_request_error"
    assert detail.extra_fields.provider == "openai"


# --- GatewayError.to_json ---------------------------------------------------------------------------


def test_to_json_exact_bifrost_shape():
    error = InvalidRequest("batch_id is required", param="batch_id", provider="openai")
    assert envelope.error_json(error) == (
        '{"is_bifrost_error":true,"status_code":400,'
        '"error":{"type":"invalid_request_error","code":"invalid_request","message":"batch_id is required",'
        '"param":"batch_id"},'
        '"extra_fields":{"provider":"openai","request_type":"batch_cancel"}}'
    )


def test_to_json_of_a_provider_error():
    error = ProviderError(
        "Cannot cancel a batch with status 'completed'.",
        status_code=409,
        type="invalid_request_error",
        code=None,
        provider="openai",
    )
    assert envelope.error_json(error) == (
        '{"is_bifrost_error":false,"status_code":409,'
        '"error":{"type":"invalid_request_error","code":null,'
        '"message":"Cannot cancel a batch with status \'completed\'.","param":null},'
        '"extra_fields":{"provider":"openai","request_type":"batch_cancel"}}'
    )
    assert ProviderError("x").is_bifrost_error is False
    assert json.loads(envelope.error_json(ProviderError("x", status_code=500)))["is_bifrost_error"] is False
    assert json.loads(envelope.error_json(ProviderError("x")))["error"]["code"] == "provider_error"


def test_unsupported_operation_body():
    error = UnsupportedOperation("batch cancel is not supported by provider: cohere", provider="cohere")
    body = json.loads(envelope.error_json(error))
    assert body["status_code"] == 400 and body["is_bifrost_error"] is True
    assert body["error"]["code"] == "unsupported_operation" and body["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "message",
    ["Lötzinn «batch» ✓ 日本語 🚀", "line1\nline2\r\t\x00\x7f", 'quote " backslash \\', "\u2028\u2029"],
)
def test_to_json_is_ascii_and_fits_in_grpc_metadata(message):
    error = ProviderError(message, status_code=400, provider="openai", param="ïd")
    text = envelope.error_json(error)
    assert text.isascii()
    assert all(0x20 <= ord(c) <= 0x7E for c in text)  # legal as a gRPC metadata value
    body = json.loads(text)
    assert body["error"]["message"] == message and body["error"]["param"] == "ïd"


@pytest.mark.parametrize(
    ("method", "body"),
    [
        (
            "/batchgate.v1.BatchService/Cancel",
            {
                "is_bifrost_error": True,
                "status_code": 408,
                "error": {"type": "invalid_request_error", "code": "request_timeout", "message": "late", "param": None},
                "extra_fields": {"provider": "", "request_type": "batch_cancel"},
            },
        ),
        (
            "/batchgate.v1.BatchService/CancelGenAI",
            {"error": {"code": 408, "message": "late", "status": "DEADLINE_EXCEEDED"}},
        ),
        (
            "/batchgate.v1.BatchService/CancelAnthropic",
            {"type": "error", "error": {"type": "api_error", "message": "late"}},
        ),
    ],
)
def test_refusal_before_the_servicer_is_rendered_in_the_routes_shape(method, body):
    error = GatewayError("late", status_code=408, type="invalid_request_error", code="request_timeout")
    metadata = dict(rest_error_metadata(method, error))
    assert json.loads(metadata[ERROR_BODY_HEADER]) == body
    assert metadata[ERROR_STATUS_HEADER] == "408"


def test_openai_batch_fields_only_on_the_openai_routes_and_only_as_reported():
    from service.domain.model import BatchState, CancelResult
    from service.edge.converters import result_to_proto
    from service.infra.providers.openai import openai_details

    data = {
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-abc",
        "completion_window": "24h",
        "in_progress_at": "2026-12-08T00:00:01Z",  # an Azure preview's ISO time
        "output_file_id": None,
        "metadata": {"team": "a"},
        "usage": 7,  # not an object: left out
    }
    batch = BatchState("b", "cancelling", created_at=1795000000, details=openai_details(data))
    openai = result_to_proto(CancelResult(batch, "openai", 1), openai=True)
    assert (openai.created_at, openai.endpoint, openai.input_file_id, openai.completion_window) == (
        1795000000,
        "/v1/chat/completions",
        "file-abc",
        "24h",
    )
    assert openai.in_progress_at == 1796688001 and dict(openai.metadata.struct_value) == {"team": "a"}
    assert not openai.HasField("output_file_id") and not openai.HasField("usage") and not openai.HasField("model")
    native = result_to_proto(CancelResult(batch, "openai", 1))
    assert not native.HasField("created_at") and not native.HasField("endpoint") and not native.HasField("metadata")
