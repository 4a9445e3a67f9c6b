"""xAI adapter: the status derived from a Batch's tallies and cancel time, counts, the request and
the `{"code", "error"}` envelope (with the invalid-key and finished-batch remaps)."""

from __future__ import annotations

import orjson
import pytest
from multidict import CIMultiDict

from service.domain.errors import InvalidRequest, UpstreamUnavailable
from service.domain.model import RequestCounts
from service.infra.providers.base import UpstreamResponse, after_accepted_cancel
from service.infra.providers.catalog import parse_config
from service.infra.providers.xai import XAIAdapter

KEY = "xai-unitXaiKey0123456789abcdefghijkl"
BATCH_ID = "batch_9a5613d7-da24-4503-b581-32469a9de811"

# POST https://api.x.ai/v1/batches/{id}:cancel while requests were still pending.
CANCEL_ANSWER = b"""{
  "batch_id": "batch_9a5613d7-da24-4503-b581-32469a9de811",
  "name": "customer_feedback_analysis",
  "create_time": "2025-11-11T09:00:00.123456789Z",
  "expire_time": "2025-11-12T09:00:00Z",
  "create_api_key_id": "3f1c2b9e-0d4a-4e5f-8a7b-6c5d4e3f2a1b",
  "cancel_time": "2025-11-11T09:30:00.5Z",
  "cancel_by_xai_message": null,
  "state": {"num_requests": 100, "num_pending": 25, "num_success": 70, "num_error": 5, "num_cancelled": 0},
  "cost_breakdown": {"total_cost_usd_ticks": 1800000000, "endpoint_costs": []},
  "input_file_id": null
}"""
CANCEL_TIME = 1762853400  # 2025-11-11T09:30:00Z


def adapter(**network) -> XAIAdapter:
    block = {"keys": [{"name": "main", "value": KEY, "use_for_batch_api": True}], "network_config": network}
    return XAIAdapter(parse_config({"providers": {"xai": block}}, env={}).providers["xai"])


def answer(status: int, body: bytes | dict, content_type: str = "application/json") -> UpstreamResponse:
    raw = orjson.dumps(body) if isinstance(body, dict) else body
    return UpstreamResponse(status, CIMultiDict({"Content-Type": content_type}), raw)


def batch_with(state: dict | None, **fields) -> dict:
    data = {**orjson.loads(CANCEL_ANSWER), **fields}
    if state is None:
        data.pop("state")
    else:
        data["state"] = state
    return data


def test_cancel_with_pending_requests_is_cancelling_since_the_cancel_time():
    batch = adapter().parse_batch(BATCH_ID, orjson.loads(CANCEL_ANSWER))
    assert (batch.id, batch.status, batch.cancelling_at, batch.cancelled_at) == (
        BATCH_ID, "cancelling", CANCEL_TIME, None,
    )  # fmt: skip
    assert batch.counts == RequestCounts(total=100, completed=70, failed=5, succeeded=70, canceled=0, pending=25)


def test_cancelled_once_nothing_is_pending():
    state = {"num_requests": 100, "num_pending": 0, "num_success": 70, "num_error": 5, "num_cancelled": 25}
    batch = adapter().parse_batch(BATCH_ID, batch_with(state))
    assert (batch.status, batch.cancelling_at, batch.cancelled_at) == ("cancelled", CANCEL_TIME, CANCEL_TIME)
    assert batch.counts.canceled == 25 and batch.counts.pending == 0


def test_cancelled_by_xai():
    state = {"num_requests": 4, "num_pending": 0, "num_success": 1, "num_error": 0, "num_cancelled": 3}
    batch = adapter().parse_batch(BATCH_ID, batch_with(state, cancel_time=None, cancel_by_xai_message="abuse"))
    assert (batch.status, batch.cancelled_at) == ("cancelled", None)


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ({"num_requests": 10, "num_pending": 4, "num_success": 6, "num_error": 0, "num_cancelled": 0}, "in_progress"),
        ({"num_requests": 10, "num_pending": 0, "num_success": 9, "num_error": 1, "num_cancelled": 0}, "completed"),
        ({"num_requests": 0, "num_pending": 0, "num_success": 0, "num_error": 0, "num_cancelled": 0}, "validating"),
        ({"num_requests": "10", "num_success": "10"}, "completed"),  # zero tallies left out, int64 as strings
        ({}, "validating"),
    ],
)
def test_status_of_a_batch_that_was_not_cancelled(state, status):
    batch = adapter().parse_batch(BATCH_ID, batch_with(state, cancel_time=None))
    assert (batch.status, batch.cancelling_at, batch.cancelled_at) == (status, None, None)


def test_missing_tallies_stay_unknown():
    batch = adapter().parse_batch(BATCH_ID, batch_with({"num_requests": "10", "num_success": "10"}, cancel_time=None))
    assert batch.counts == RequestCounts(total=10, completed=10, succeeded=10)
    assert adapter().parse_batch(BATCH_ID, batch_with({}, cancel_time=None)).counts is None


def test_a_status_string_wins_over_the_derivation():
    batch = adapter().parse_batch(BATCH_ID, batch_with(None, status="CANCELLED"))
    assert (batch.status, batch.counts, batch.cancelled_at) == ("cancelled", None, CANCEL_TIME)


@pytest.mark.parametrize("data", [[], "cancelled", 7])
def test_answer_that_is_not_an_object_is_an_upstream_failure(data):
    with pytest.raises(UpstreamUnavailable):
        adapter().parse_batch(BATCH_ID, data)


# xAI's batch.proto: `state` is "not always populated". A 2xx cancel answer without it is still an
# accepted cancel, never a 502.
@pytest.mark.parametrize(
    ("data", "status", "cancelling_at"),
    [
        ({"batch_id": BATCH_ID, "cancel_time": "2026-03-04T05:06:07.123456789Z"}, "cancelling", 1772600767),
        ({"batch_id": BATCH_ID, "cancel_time": "2026-03-04T05:06:07Z", "state": None}, "cancelling", 1772600767),
        ({"batch_id": BATCH_ID, "cancel_by_xai_message": "input file failed validation"}, "cancelling", None),
        ({"batch_id": BATCH_ID}, "in_progress", None),  # nothing known: not finished (cancelling after a cancel)
        ({}, "in_progress", None),
    ],
)
def test_answer_without_tallies_is_derived_from_the_cancel_time(data, status, cancelling_at):
    batch = adapter().parse_batch(BATCH_ID, data)
    assert (batch.status, batch.counts, batch.cancelling_at, batch.cancelled_at) == (status, None, cancelling_at, None)
    assert after_accepted_cancel(batch.status) == "cancelling"


def test_cancel_request_uses_the_colon_cancel_method():
    a = adapter()
    request = a.cancel_request(a.config.batch_keys[0], a.parse_id(BATCH_ID))
    assert (request.method, request.body) == ("POST", None)
    assert request.url == f"https://api.x.ai/v1/batches/{BATCH_ID}:cancel"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert a.status_request(a.config.batch_keys[0], BATCH_ID) is None


def test_base_url_override_and_escaping():
    a = adapter(base_url="http://127.0.0.1:9/xai")
    assert a.cancel_request(a.config.batch_keys[0], "b:1").url == "http://127.0.0.1:9/xai/v1/batches/b%3A1:cancel"


@pytest.mark.parametrize("batch_id", ["a/b", "..", "a%2Fb", "a?b", "a#b", ""])
def test_unsafe_ids_are_refused(batch_id):
    with pytest.raises(InvalidRequest):
        adapter().parse_id(batch_id)


def test_incorrect_key_400_is_reported_as_401():
    body = {
        "code": "Client specified an invalid argument",
        "error": "Incorrect API key provided: xa***kl. You can obtain an API key from https://console.x.ai.",
    }
    error = adapter().parse_error(answer(400, body))
    assert (error.status_code, error.code) == (401, "Client specified an invalid argument")
    assert error.type == "authentication_error"  # a key problem: the next configured key is tried
    assert error.message.startswith("Incorrect API key provided: xa***kl.") and KEY not in error.message


def test_url_encoded_message_is_decoded():
    body = {"code": "Client specified an invalid argument",
            "error": "Incorrect%20API%20key%20provided:%20ba***na.%20You%20can%20obtain%20an%20API%20key%20from"
                     "%20https://console.x.ai."}  # fmt: skip
    error = adapter().parse_error(answer(400, body))
    assert error.status_code == 401 and error.message.startswith("Incorrect API key provided: ba***na.")


def test_finished_batch_is_a_conflict():
    body = {"code": "The system is not in a state required for the operation's execution",
            "error": "Batch batch_1 has already finished"}  # fmt: skip
    error = adapter().parse_error(answer(400, body))
    assert (error.status_code, error.message) == (409, "Batch batch_1 has already finished")


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, {"code": "Client specified an invalid argument", "error": "The batch id is malformed."}),
        (404, {"code": "Some requested entity was not found", "error": "Batch batch_x not found"}),
        (429, {"code": "Some resource has been exhausted", "error": "Too many requests"}),
        (401, {"code": "The request does not have valid authentication credentials", "error": "Missing bearer"}),
    ],
)
def test_other_errors_keep_status_code_and_message(status, body):
    error = adapter().parse_error(answer(status, body))
    assert (error.status_code, error.code, error.message) == (status, body["code"], body["error"])
    assert error.provider == "xai"


def test_openai_style_envelope_and_html_are_read():
    error = adapter().parse_error(answer(503, {"error": {"message": "overloaded", "code": "unavailable"}}))
    assert (error.status_code, error.message, error.code) == (503, "overloaded", "unavailable")
    error = adapter().parse_error(answer(502, b"<html>bad gateway</html>", "text/html"))
    assert (error.status_code, error.message, error.code) == (502, "xai answered HTTP 502", None)
