"""Mistral adapter: recorded BatchJob answers, the status table, ids, the request and both error
envelopes."""

from __future__ import annotations

import orjson
import pytest
from multidict import CIMultiDict

from service.domain.errors import UpstreamUnavailable
from service.domain.model import RequestCounts
from service.edge import envelope
from service.infra.providers.base import UpstreamResponse
from service.infra.providers.catalog import parse_config
from service.infra.providers.mistral import MistralAdapter

KEY = "mistral-unit-key-0123456789abcdef"
JOB_ID = "b9a5c4d2-3e1f-4a6b-8c7d-9e0f1a2b3c4d"

# POST /v1/batch/jobs/{id}/cancel on api.mistral.ai, right after the call.
CANCEL_ANSWER = b"""{
  "id": "b9a5c4d2-3e1f-4a6b-8c7d-9e0f1a2b3c4d",
  "object": "batch",
  "input_files": ["7f3e2d1c-0b9a-4876-a5b4-c3d2e1f0a9b8"],
  "metadata": {"job_type": "nightly-eval"},
  "endpoint": "/v1/chat/completions",
  "model": "mistral-small-latest",
  "agent_id": null,
  "output_file": null,
  "error_file": null,
  "errors": [{"message": "Invalid body for custom_id 17", "count": 1}],
  "outputs": null,
  "status": "CANCELLATION_REQUESTED",
  "created_at": 1738666179,
  "total_requests": 120,
  "completed_requests": 45,
  "succeeded_requests": 44,
  "failed_requests": 1,
  "started_at": 1738666190,
  "completed_at": null
}"""


def adapter(**network) -> MistralAdapter:
    block = {"keys": [{"name": "main", "value": KEY, "use_for_batch_api": True}], "network_config": network}
    return MistralAdapter(parse_config({"providers": {"mistral": block}}, env={}).providers["mistral"])


def key(a: MistralAdapter):
    return a.config.batch_keys[0]


def answer(status: int, body: bytes | dict, content_type: str = "application/json") -> UpstreamResponse:
    raw = orjson.dumps(body) if isinstance(body, dict) else body
    return UpstreamResponse(status, CIMultiDict({"Content-Type": content_type}), raw)


def test_cancel_answer_is_cancelling_with_mistrals_four_counts():
    batch = adapter().parse_batch(JOB_ID, orjson.loads(CANCEL_ANSWER))
    assert (batch.id, batch.status) == (JOB_ID, "cancelling")
    assert batch.counts == RequestCounts(total=120, completed=44, failed=1, succeeded=44)
    assert (batch.cancelling_at, batch.cancelled_at) == (None, None)  # Mistral has no cancel timestamps


def test_cancelled_job_reports_its_end_as_cancelled_at():
    data = {**orjson.loads(CANCEL_ANSWER), "status": "CANCELLED", "completed_at": 1738667012}
    batch = adapter().parse_batch(JOB_ID, data)
    assert (batch.status, batch.cancelled_at, batch.cancelling_at) == ("cancelled", 1738667012, None)


def test_end_time_of_a_job_that_was_not_cancelled_is_not_a_cancel_time():
    data = {**orjson.loads(CANCEL_ANSWER), "status": "SUCCESS", "completed_at": 1738667012}
    assert adapter().parse_batch(JOB_ID, data).cancelled_at is None


def test_string_counts_and_odd_status_case_are_read():
    data = {"id": JOB_ID, "status": "Cancellation_Requested", "total_requests": "10", "completed_requests": "4",
            "succeeded_requests": "3", "failed_requests": 1}  # fmt: skip
    batch = adapter().parse_batch(JOB_ID, data)
    assert batch.status == "cancelling"
    assert batch.counts == RequestCounts(total=10, completed=3, failed=1, succeeded=3)


def test_missing_counts_stay_unknown_and_partial_counts_are_not_filled_in():
    assert adapter().parse_batch(JOB_ID, {"status": "RUNNING"}).counts is None
    counts = adapter().parse_batch(JOB_ID, {"status": "RUNNING", "total_requests": 5}).counts
    assert counts == RequestCounts(total=5)


@pytest.mark.parametrize("data", [{}, {"status": ""}, [], "CANCELLED", {"id": JOB_ID}])
def test_answer_without_a_job_is_an_upstream_failure(data):
    with pytest.raises(UpstreamUnavailable):
        adapter().parse_batch(JOB_ID, data)


@pytest.mark.parametrize(
    ("wire", "unified"),
    [
        ("QUEUED", "validating"),
        ("RUNNING", "in_progress"),
        ("SUCCESS", "completed"),
        ("FAILED", "failed"),
        ("TIMEOUT_EXCEEDED", "expired"),
        ("CANCELLATION_REQUESTED", "cancelling"),
        ("CANCELLED", "cancelled"),
    ],
)
def test_status_table(wire, unified):
    assert adapter().status(wire) == unified


@pytest.mark.parametrize("batch_id", [JOB_ID, "job_123", "batch:with:colons"])
def test_ids_are_accepted_and_escaped_as_one_segment(batch_id):
    a = adapter()
    request = a.cancel_request(key(a), a.parse_id(batch_id))
    segment = request.url.removeprefix("https://api.mistral.ai/v1/batch/jobs/").removesuffix("/cancel")
    assert "/" not in segment and segment.replace("%3A", ":") == batch_id


def test_cancel_request_is_a_bodiless_bearer_post_and_auth_wins_over_extra_headers():
    a = adapter(extra_headers={"X-Team": "evals", "Authorization": "Bearer not-this-one"})
    request = a.cancel_request(key(a), JOB_ID)
    assert (request.method, request.url, request.body) == (
        "POST", f"https://api.mistral.ai/v1/batch/jobs/{JOB_ID}/cancel", None,
    )  # fmt: skip
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["X-Team"] == "evals" and request.headers["Accept"] == "application/json"
    assert a.status_request(key(a), JOB_ID) is None  # the cancel answers the job itself


def test_base_url_override():
    a = adapter(base_url="http://127.0.0.1:9/mistral/")
    assert a.cancel_request(key(a), JOB_ID).url == f"http://127.0.0.1:9/mistral/v1/batch/jobs/{JOB_ID}/cancel"


def test_gateway_401_envelope():
    body = {"message": "Unauthorized", "request_id": "c61f2f15feca71626a990e3740f99245"}
    error = adapter().parse_error(answer(401, body))
    assert (error.status_code, error.message, error.provider) == (401, "Unauthorized", "mistral")
    assert error.is_bifrost_error is False


def test_detail_string_envelope():
    error = adapter().parse_error(answer(404, {"detail": "Batch job not found"}))
    assert (error.status_code, error.message, error.type) == (404, "Batch job not found", "provider_error")


def test_validation_error_list_names_the_field():
    body = {"detail": [{"type": "uuid_parsing", "loc": ["path", "job_id"], "msg": "Input should be a valid UUID",
                        "input": "nope"}]}  # fmt: skip
    error = adapter().parse_error(answer(422, body))
    assert error.status_code == 422
    assert error.message == "path.job_id: Input should be a valid UUID"
    assert (error.param, error.type) == ("job_id", "invalid_request_error")


def test_chat_style_error_object_keeps_type_and_code():
    body = {"object": "error", "message": "Service tier capacity exceeded", "type": "service_tier_capacity_exceeded",
            "param": None, "code": "3505"}  # fmt: skip
    error = adapter().parse_error(answer(429, body))
    assert (error.status_code, error.message, error.type, error.code) == (
        429, "Service tier capacity exceeded", "service_tier_capacity_exceeded", "3505",
    )  # fmt: skip


@pytest.mark.parametrize(
    "response",
    [
        answer(502, b"<html><body>502 Bad Gateway</body></html>", "text/html"),
        answer(500, b""),
        answer(503, b"upstream connect error"),
        answer(500, {"detail": None}),
    ],
)
def test_error_without_a_usable_envelope_keeps_its_status(response):
    error = adapter().parse_error(response)
    assert (error.status_code, error.message) == (response.status, f"mistral answered HTTP {response.status}")


def test_key_never_appears_in_the_adapter_repr_or_errors():
    a = adapter()
    error = a.parse_error(answer(401, {"message": "Unauthorized"}))
    assert KEY not in repr(a.config) and KEY not in envelope.error_json(error)
