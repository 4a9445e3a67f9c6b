"""Fireworks adapter: job references (bare ids and resource names), the cancel + follow-up read
requests, recorded BatchJob (and batch inference job) answers and both error envelopes."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from multidict import CIMultiDict

from service.config import parse_config
from service.errors import InvalidRequest, UpstreamUnavailable
from service.model import RequestCounts
from service.providers.base import UpstreamResponse
from service.providers.fireworks import FireworksAdapter, JobRef

KEY = "fw_unitFireworksKey0123456789abcd"
ACCOUNT = "acme-labs"
JOB = "nightly-eval-7"

# GET https://api.fireworks.ai/v1/accounts/acme-labs/batchJobs/nightly-eval-7 after the cancel.
BATCH_JOB = b"""{
  "name": "accounts/acme-labs/batchJobs/nightly-eval-7",
  "displayName": "Nightly eval",
  "createTime": "2025-03-02T08:00:00.123456789Z",
  "startTime": "2025-03-02T08:00:05Z",
  "createdBy": "ops@acme.example",
  "state": "CANCELLING",
  "status": "",
  "nodePoolId": "pool-a100",
  "updateTime": "2025-03-02T08:41:10.5Z"
}"""
# The batch inference job shape: JOB_STATE_* and int64 progress counters as strings.
INFERENCE_JOB = b"""{
  "name": "accounts/acme-labs/batchInferenceJobs/nightly-eval-7",
  "state": "JOB_STATE_CANCELLED",
  "createTime": "2025-03-02T08:00:00Z",
  "updateTime": "2025-03-02T08:45:00.000Z",
  "jobProgress": {"percent": 40, "totalInputRequests": "250", "successfullyProcessedRequests": "97",
                  "failedRequests": 3, "totalProcessedRequests": "100", "outputRows": "97"}
}"""


def adapter(account: str | None = ACCOUNT, **network) -> FireworksAdapter:
    key = {"name": "main", "value": KEY, "use_for_batch_api": True}
    if account:
        key["fireworks_key_config"] = {"account_id": account}
    config = parse_config({"providers": {"fireworks": {"keys": [key], "network_config": network}}}, env={})
    return FireworksAdapter(config.providers["fireworks"])


def answer(status: int, body: bytes | dict, content_type: str = "application/json") -> UpstreamResponse:
    raw = orjson.dumps(body) if isinstance(body, dict) else body
    return UpstreamResponse(status, CIMultiDict({"Content-Type": content_type}), raw)


@pytest.mark.parametrize(
    ("batch_id", "ref"),
    [
        (JOB, JobRef(JOB)),
        ("job:1", JobRef("job:1")),
        (f"accounts/{ACCOUNT}/batchJobs/{JOB}", JobRef(JOB, ACCOUNT)),
        ("accounts/other-team/batchJobs/j1", JobRef("j1", "other-team")),
    ],
)
def test_accepted_ids(batch_id, ref):
    assert adapter().parse_id(batch_id) == ref


@pytest.mark.parametrize(
    "batch_id",
    [
        "a/b",
        f"accounts/{ACCOUNT}/batchInferenceJobs/{JOB}",  # no documented cancel for that resource
        f"accounts/{ACCOUNT}/batchJobs/{JOB}/extra",
        f"accounts/{ACCOUNT}/batchJobs/",
        "accounts//batchJobs/x",
        "accounts/../batchJobs/x",
        f"accounts/{ACCOUNT}/batchJobs/..",
        f"accounts/{ACCOUNT}/batchJobs/a%2Fb",
        f"accounts/a?b/batchJobs/{JOB}",
        "/accounts/a/batchJobs/x",
        "..",
        "a%2Fb",
        "",
    ],
)
def test_refused_ids(batch_id):
    with pytest.raises(InvalidRequest) as info:
        adapter().parse_id(batch_id)
    assert info.value.param == "batch_id"


def test_cancel_posts_an_empty_json_object_to_the_keys_account():
    a = adapter()
    request = a.cancel_request(a.config.batch_keys[0], a.parse_id(JOB))
    assert request.method == "POST"
    assert request.url == f"https://api.fireworks.ai/v1/accounts/{ACCOUNT}/batchJobs/{JOB}:cancel"
    assert request.body == b"{}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == f"Bearer {KEY}"


def test_follow_up_read_is_a_get_of_the_same_job():
    a = adapter()
    request = a.status_request(a.config.batch_keys[0], a.parse_id(JOB))
    assert (request.method, request.body) == ("GET", None)
    assert request.url == f"https://api.fireworks.ai/v1/accounts/{ACCOUNT}/batchJobs/{JOB}"
    assert request.headers["Authorization"] == f"Bearer {KEY}" and "Content-Type" not in request.headers


def test_resource_name_account_wins_and_segments_are_escaped():
    a = adapter(base_url="http://127.0.0.1:9/fireworks")
    request = a.cancel_request(a.config.batch_keys[0], a.parse_id("accounts/team:b/batchJobs/job:1"))
    assert request.url == "http://127.0.0.1:9/fireworks/v1/accounts/team%3Ab/batchJobs/job%3A1:cancel"


def test_key_without_an_account_is_refused_before_any_call():
    a = adapter()
    key = dataclasses.replace(a.config.batch_keys[0], account_id=None)
    with pytest.raises(InvalidRequest) as info:
        a.cancel_request(key, JobRef(JOB))
    assert info.value.provider == "fireworks" and KEY not in info.value.message
    assert a.cancel_request(key, JobRef(JOB, ACCOUNT)).url.endswith(f"/accounts/{ACCOUNT}/batchJobs/{JOB}:cancel")


def test_batch_job_after_the_cancel_is_cancelling_without_counts():
    batch = adapter().parse_batch(JOB, orjson.loads(BATCH_JOB))
    assert (batch.id, batch.status, batch.counts, batch.cancelling_at, batch.cancelled_at) == (
        JOB, "cancelling", None, None, None,
    )  # fmt: skip


def test_cancelled_batch_job_reports_its_end_time():
    data = {**orjson.loads(BATCH_JOB), "state": "CANCELLED", "endTime": "2025-03-02T08:41:10.987654321Z"}
    batch = adapter().parse_batch(JOB, data)
    assert (batch.status, batch.cancelled_at) == ("cancelled", 1740904870)


def test_failed_job_end_time_is_not_a_cancel_time():
    data = {**orjson.loads(BATCH_JOB), "state": "FAILED", "endTime": "2025-03-02T08:41:10Z"}
    assert adapter().parse_batch(JOB, data).cancelled_at is None


def test_batch_inference_job_shape_with_string_counts():
    batch = adapter().parse_batch(JOB, orjson.loads(INFERENCE_JOB))
    assert batch.status == "cancelled"
    assert batch.counts == RequestCounts(total=250, completed=97, failed=3, succeeded=97)


@pytest.mark.parametrize(
    ("state", "unified"),
    [
        ("CREATING", "validating"),
        ("QUEUED", "validating"),
        ("PENDING", "validating"),
        ("RUNNING", "in_progress"),
        ("COMPLETED", "completed"),
        ("FAILED", "failed"),
        ("CANCELLING", "cancelling"),
        ("CANCELLED", "cancelled"),
        ("DELETING", "deleting"),
        ("STATE_UNSPECIFIED", "state_unspecified"),
        ("JOB_STATE_VALIDATING", "validating"),
        ("JOB_STATE_PENDING", "validating"),
        ("JOB_STATE_RUNNING", "in_progress"),
        ("JOB_STATE_WRITING_RESULTS", "finalizing"),
        ("JOB_STATE_COMPLETED", "completed"),
        ("JOB_STATE_FAILED", "failed"),
        ("JOB_STATE_EXPIRED", "expired"),
        ("JOB_STATE_CANCELLED", "cancelled"),
        ("job_state_running", "in_progress"),
    ],
)
def test_state_table(state, unified):
    assert adapter().parse_batch(JOB, {"state": state}).status == unified


@pytest.mark.parametrize("data", [{}, {"state": ""}, {"name": "accounts/a/batchJobs/x"}, [], "CANCELLED"])
def test_answer_without_a_state_is_an_upstream_failure(data):
    with pytest.raises(UpstreamUnavailable):
        adapter().parse_batch(JOB, data)


def test_gateway_401_envelope():
    body = {"error": {"code": "UNAUTHORIZED", "message": "The API key you provided is invalid."}}
    error = adapter().parse_error(answer(401, body))
    assert (error.status_code, error.message, error.code, error.provider) == (
        401, "The API key you provided is invalid.", "UNAUTHORIZED", "fireworks",
    )  # fmt: skip


def test_control_plane_envelope_names_the_grpc_code():
    body = {"code": 5, "message": 'batch job "accounts/acme-labs/batchJobs/x" not found', "details": []}
    error = adapter().parse_error(answer(404, body))
    assert (error.status_code, error.code) == (404, "NOT_FOUND") and error.message.startswith("batch job")


@pytest.mark.parametrize("code", [9, "FAILED_PRECONDITION"])
def test_job_that_cannot_be_cancelled_anymore_is_a_conflict(code):
    body = {"code": code, "message": "batch job is in state COMPLETED and cannot be cancelled", "details": []}
    error = adapter().parse_error(answer(400, body))
    assert (error.status_code, error.code) == (409, "FAILED_PRECONDITION")
    assert error.message == "batch job is in state COMPLETED and cannot be cancelled"


def test_other_bad_requests_stay_400():
    error = adapter().parse_error(answer(400, {"code": 3, "message": "invalid body", "details": []}))
    assert (error.status_code, error.code) == (400, "INVALID_ARGUMENT")


@pytest.mark.parametrize(
    ("response", "code"),
    [
        (answer(502, b"<html>502 Bad Gateway</html>", "text/html"), None),
        (answer(500, b""), None),
        (answer(500, {"code": 99}), "99"),
        (answer(503, {"error": "upstream overloaded"}), None),
    ],
)
def test_odd_error_bodies_keep_their_status(response, code):
    error = adapter().parse_error(response)
    assert (error.status_code, error.code) == (response.status, code)
    assert error.message in (f"fireworks answered HTTP {response.status}", "upstream overloaded")
