"""Cohere adapter: the cancel + follow-up read requests, recorded `{"batch": ...}` answers, the
status table, ids and the `{"id", "message"}` error envelope."""

from __future__ import annotations

import orjson
import pytest
from multidict import CIMultiDict

from service.domain.errors import UpstreamUnavailable
from service.domain.model import RequestCounts
from service.infra.providers.base import UpstreamResponse
from service.infra.providers.catalog import parse_config
from service.infra.providers.cohere import CohereAdapter

KEY = "co-unitCohereKey0123456789abcdefghij"
BATCH_ID = "6f1d9c6e-2b4a-4f7e-9d3c-8a1b2c3d4e5f"

# GET https://api.cohere.com/v2/batches/{id} right after the cancel.
GET_ANSWER = b"""{
  "batch": {
    "id": "6f1d9c6e-2b4a-4f7e-9d3c-8a1b2c3d4e5f",
    "name": "support-tickets-embed",
    "creator_id": "8b2f0c3e-5d7a-4c1b-9e6f-1a2b3c4d5e6f",
    "org_id": "0c9d8e7f-6a5b-4c3d-2e1f-0a9b8c7d6e5f",
    "status": "BATCH_STATUS_CANCELING",
    "created_at": "2025-06-03T10:15:30.123Z",
    "updated_at": "2025-06-03T10:42:01.987654Z",
    "input_dataset_id": "support-tickets-x7k2m9",
    "output_dataset_id": "",
    "input_tokens": "1250000",
    "output_tokens": "310000",
    "model": "command-r-08-2024",
    "num_records": 5000,
    "num_successful_records": 1800,
    "num_failed_records": 12,
    "status_reason": ""
  }
}"""


def adapter(**network) -> CohereAdapter:
    block = {"keys": [{"name": "main", "value": KEY, "use_for_batch_api": True}], "network_config": network}
    return CohereAdapter(parse_config({"providers": {"cohere": block}}, env={}).providers["cohere"])


def answer(status: int, body: bytes | dict, content_type: str = "application/json") -> UpstreamResponse:
    raw = orjson.dumps(body) if isinstance(body, dict) else body
    return UpstreamResponse(status, CIMultiDict({"Content-Type": content_type}), raw)


def test_cancel_is_a_colon_method_post_followed_by_a_get():
    a = adapter()
    key, ref = a.config.batch_keys[0], a.parse_id(BATCH_ID)
    cancel, read = a.cancel_request(key, ref), a.status_request(key, ref)
    assert (cancel.method, cancel.url, cancel.body) == (
        "POST", f"https://api.cohere.com/v2/batches/{BATCH_ID}:cancel", None,
    )  # fmt: skip
    assert (read.method, read.url, read.body) == ("GET", f"https://api.cohere.com/v2/batches/{BATCH_ID}", None)
    assert cancel.headers["Authorization"] == read.headers["Authorization"] == f"Bearer {KEY}"


def test_base_url_override_and_escaping():
    a = adapter(base_url="http://127.0.0.1:9/cohere")
    assert a.cancel_request(a.config.batch_keys[0], "b:1").url == "http://127.0.0.1:9/cohere/v2/batches/b%3A1:cancel"


def test_batch_after_the_cancel():
    batch = adapter().parse_batch(BATCH_ID, orjson.loads(GET_ANSWER))
    assert (batch.id, batch.status, batch.cancelling_at, batch.cancelled_at) == (BATCH_ID, "cancelling", None, None)
    assert batch.counts == RequestCounts(total=5000, completed=1800, failed=12, succeeded=1800)


def test_bare_batch_object_and_string_counts():
    data = {"id": BATCH_ID, "status": "BATCH_STATUS_CANCELED", "num_records": "40", "num_successful_records": "9"}
    batch = adapter().parse_batch(BATCH_ID, data)
    assert batch.status == "cancelled"
    assert batch.counts == RequestCounts(total=40, completed=9, succeeded=9)


def test_no_counts_stay_unknown():
    assert adapter().parse_batch(BATCH_ID, {"batch": {"status": "BATCH_STATUS_QUEUED"}}).counts is None


@pytest.mark.parametrize(
    ("wire", "unified"),
    [
        ("BATCH_STATUS_QUEUED", "validating"),
        ("BATCH_STATUS_IN_PROGRESS", "in_progress"),
        ("BATCH_STATUS_CANCELING", "cancelling"),
        ("BATCH_STATUS_COMPLETED", "completed"),
        ("BATCH_STATUS_FAILED", "failed"),
        ("BATCH_STATUS_CANCELED", "cancelled"),
        ("batch_status_canceled", "cancelled"),
        ("BATCH_STATUS_UNSPECIFIED", "batch_status_unspecified"),
        ("BATCH_STATUS_PAUSED", "batch_status_paused"),
    ],
)
def test_status_table(wire, unified):
    assert adapter().parse_batch(BATCH_ID, {"batch": {"status": wire}}).status == unified


@pytest.mark.parametrize("data", [{}, {"batch": {}}, {"batch": None}, {"batch": {"status": ""}}, [], "x"])
def test_answer_without_a_batch_is_an_upstream_failure(data):
    with pytest.raises(UpstreamUnavailable):
        adapter().parse_batch(BATCH_ID, data)


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (401, {"id": "1f2e3d4c-aaaa-bbbb-cccc-000000000001", "message": "invalid api token"}, "invalid api token"),
        (404, {"message": "batch 6f1d not found"}, "batch 6f1d not found"),
        (400, {"id": "x", "message": "batch is BATCH_STATUS_COMPLETED and cannot be canceled"},
         "batch is BATCH_STATUS_COMPLETED and cannot be canceled"),
        (429, {"message": "You are using a Trial key, which is limited to 10 API calls / minute."},
         "You are using a Trial key, which is limited to 10 API calls / minute."),
        (500, {"error": "internal"}, "internal"),
        (502, b"<html>bad gateway</html>", "cohere answered HTTP 502"),
        (503, b"", "cohere answered HTTP 503"),
    ],
)  # fmt: skip
def test_errors_keep_status_and_message(status, body, message):
    content_type = "text/html" if isinstance(body, bytes) and body else "application/json"
    error = adapter().parse_error(answer(status, body, content_type))
    assert (error.status_code, error.message, error.provider) == (status, message, "cohere")
    assert error.is_bifrost_error is False
