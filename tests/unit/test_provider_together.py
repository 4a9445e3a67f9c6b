"""Together adapter: recorded BatchJob answers (uppercase statuses, RFC 3339, no counts), ids,
the request and both error envelopes."""

from __future__ import annotations

import orjson
import pytest
from multidict import CIMultiDict

from service.domain.errors import UpstreamUnavailable
from service.infra.providers.base import UpstreamResponse
from service.infra.providers.catalog import parse_config
from service.infra.providers.together import TogetherAdapter

KEY = "tgp_v1_unitTogetherKey0123456789"
BATCH_ID = "01234567-8901-2345-6789-012345678901"

# POST https://api.together.xyz/v1/batches/{id}/cancel: the job is CANCELLED at once.
CANCEL_ANSWER = b"""{
  "id": "01234567-8901-2345-6789-012345678901",
  "user_id": "user_789xyz012",
  "input_file_id": "file-input123abc456def",
  "file_size_bytes": 1048576,
  "status": "CANCELLED",
  "job_deadline": "2024-01-16T14:30:00Z",
  "created_at": "2024-01-15T14:30:00.123456Z",
  "endpoint": "/v1/chat/completions",
  "progress": 75,
  "model_id": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
  "output_file_id": "file-output789xyz012ghi",
  "error_file_id": null,
  "error": null,
  "completed_at": "2024-01-15T15:45:30.123456789Z"
}"""


def adapter(**network) -> TogetherAdapter:
    block = {"keys": [{"name": "main", "value": KEY, "use_for_batch_api": True}], "network_config": network}
    return TogetherAdapter(parse_config({"providers": {"together": block}}, env={}).providers["together"])


def answer(status: int, body: bytes | dict, content_type: str = "application/json") -> UpstreamResponse:
    raw = orjson.dumps(body) if isinstance(body, dict) else body
    return UpstreamResponse(status, CIMultiDict({"Content-Type": content_type}), raw)


def test_cancel_answer_is_cancelled_at_its_completion_time_without_counts():
    batch = adapter().parse_batch(BATCH_ID, orjson.loads(CANCEL_ANSWER))
    assert (batch.id, batch.status) == (BATCH_ID, "cancelled")
    assert batch.cancelled_at == 1705333530  # 2024-01-15T15:45:30Z, nanoseconds dropped
    assert batch.cancelling_at is None
    assert batch.counts is None  # `progress` is a percentage, never turned into counts


@pytest.mark.parametrize(
    ("completed_at", "unix"),
    [("2024-01-15T15:45:30Z", 1705333530), ("2024-01-15T15:45:30.5Z", 1705333530),
     ("2024-01-15T16:45:30.123+01:00", 1705333530), (None, None), ("", None), ("not a time", None)],
)  # fmt: skip
def test_completion_time_formats(completed_at, unix):
    data = {"id": BATCH_ID, "status": "CANCELLED", "completed_at": completed_at}
    assert adapter().parse_batch(BATCH_ID, data).cancelled_at == unix


def test_completion_time_of_a_completed_job_is_not_a_cancel_time():
    data = {**orjson.loads(CANCEL_ANSWER), "status": "COMPLETED"}
    batch = adapter().parse_batch(BATCH_ID, data)
    assert (batch.status, batch.cancelled_at) == ("completed", None)


@pytest.mark.parametrize(
    ("wire", "unified"),
    [
        ("VALIDATING", "validating"),
        ("IN_PROGRESS", "in_progress"),
        ("COMPLETED", "completed"),
        ("FAILED", "failed"),
        ("EXPIRED", "expired"),
        ("CANCELLED", "cancelled"),
        ("CANCELING", "cancelling"),  # listed by older Together SDKs
        ("Cancelled", "cancelled"),
        ("in_progress", "in_progress"),
        ("QUEUED", "queued"),  # unknown: passes through lowercased
    ],
)
def test_status_table(wire, unified):
    assert adapter().parse_batch(BATCH_ID, {"status": wire}).status == unified


@pytest.mark.parametrize("data", [{}, {"status": None}, ["CANCELLED"], {"error": "boom"}])
def test_answer_without_a_job_is_an_upstream_failure(data):
    with pytest.raises(UpstreamUnavailable):
        adapter().parse_batch(BATCH_ID, data)


def test_cancel_request():
    a = adapter()
    request = a.cancel_request(a.config.batch_keys[0], a.parse_id(BATCH_ID))
    assert (request.method, request.url, request.body) == (
        "POST", f"https://api.together.xyz/v1/batches/{BATCH_ID}/cancel", None,
    )  # fmt: skip
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert a.status_request(a.config.batch_keys[0], BATCH_ID) is None


def test_base_url_override():
    a = adapter(base_url="http://127.0.0.1:9/together")
    assert a.cancel_request(a.config.batch_keys[0], "x").url == "http://127.0.0.1:9/together/v1/batches/x/cancel"


def test_batch_error_envelope_is_a_plain_string():
    error = adapter().parse_error(answer(400, {"error": "cannot cancel batch job with status COMPLETED"}))
    assert (error.status_code, error.message, error.type, error.code) == (
        400, "cannot cancel batch job with status COMPLETED", "provider_error", None,
    )  # fmt: skip


def test_gateway_401_in_openai_envelope():
    body = {"error": {"message": "Invalid API key provided. You can find your API key at https://api.together.xyz"
                                 "/settings/api-keys.", "type": "invalid_request_error", "param": None,
                      "code": "invalid_api_key"}}  # fmt: skip
    error = adapter().parse_error(answer(401, body))
    assert error.status_code == 401 and error.message.startswith("Invalid API key provided.")
    assert (error.type, error.code, error.provider) == ("invalid_request_error", "invalid_api_key", "together")


def test_top_level_message_envelope():
    error = adapter().parse_error(answer(404, {"message": "batch job not found"}))
    assert (error.status_code, error.message) == (404, "batch job not found")


@pytest.mark.parametrize(
    "response", [answer(502, b"<html>502</html>", "text/html"), answer(500, b""), answer(500, {"error": 42})]
)
def test_error_without_a_message_keeps_its_status(response):
    error = adapter().parse_error(response)
    assert (error.status_code, error.message) == (response.status, f"together answered HTTP {response.status}")
