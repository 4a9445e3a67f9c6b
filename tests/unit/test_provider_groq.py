"""Groq adapter: the OpenAI adapter under `/openai/v1` with Groq's base URL and error wording."""

from __future__ import annotations

import orjson
import pytest
from multidict import CIMultiDict

from service.domain.errors import UpstreamUnavailable
from service.domain.model import RequestCounts
from service.infra.providers.base import UpstreamResponse
from service.infra.providers.catalog import parse_config
from service.infra.providers.groq import GroqAdapter

KEY = "gsk_unitGroqKey0123456789abcdefABCDEF"
BATCH_ID = "batch_01jh6xa7reempvjyh6n3yst2zw"

# POST https://api.groq.com/openai/v1/batches/{id}/cancel, right after the call.
CANCEL_ANSWER = b"""{
  "id": "batch_01jh6xa7reempvjyh6n3yst2zw",
  "object": "batch",
  "endpoint": "/v1/chat/completions",
  "errors": null,
  "input_file_id": "file_01jh6x76wtemjr74t1fh0faj5t",
  "completion_window": "24h",
  "status": "cancelling",
  "output_file_id": null,
  "error_file_id": null,
  "finalizing_at": null,
  "failed_at": null,
  "expired_at": null,
  "cancelled_at": null,
  "request_counts": {"total": 3, "completed": 1, "failed": 0},
  "metadata": null,
  "created_at": 1736472600,
  "expires_at": 1736559000,
  "cancelling_at": 1736472607,
  "completed_at": null,
  "in_progress_at": 1736472601
}"""


def adapter(**network) -> GroqAdapter:
    block = {"keys": [{"name": "main", "value": KEY, "use_for_batch_api": True}], "network_config": network}
    return GroqAdapter(parse_config({"providers": {"groq": block}}, env={}).providers["groq"])


def answer(status: int, body: bytes | dict, content_type: str = "application/json") -> UpstreamResponse:
    raw = orjson.dumps(body) if isinstance(body, dict) else body
    return UpstreamResponse(status, CIMultiDict({"Content-Type": content_type}), raw)


def test_cancel_request_goes_to_the_openai_compatible_path_with_bearer_auth():
    a = adapter()
    request = a.cancel_request(a.config.batch_keys[0], a.parse_id(BATCH_ID))
    assert (request.method, request.body) == ("POST", None)
    assert request.url == f"https://api.groq.com/openai/v1/batches/{BATCH_ID}/cancel"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert a.status_request(a.config.batch_keys[0], BATCH_ID) is None


def test_base_url_override_keeps_the_openai_prefix():
    a = adapter(base_url="http://127.0.0.1:9/groq")
    url = a.cancel_request(a.config.batch_keys[0], "b:1").url
    assert url == "http://127.0.0.1:9/groq/openai/v1/batches/b%3A1/cancel"


def test_cancel_answer():
    batch = adapter().parse_batch(BATCH_ID, orjson.loads(CANCEL_ANSWER))
    assert (batch.id, batch.status, batch.cancelling_at, batch.cancelled_at) == (
        BATCH_ID, "cancelling", 1736472607, None,
    )  # fmt: skip
    assert batch.counts == RequestCounts(total=3, completed=1, failed=0)


def test_cancelled_batch_with_string_counts_and_british_or_american_spelling():
    data = {"id": BATCH_ID, "status": "Canceled", "cancelling_at": "1736472607", "cancelled_at": 1736472700,
            "request_counts": {"total": "3", "completed": "1", "failed": "2"}}  # fmt: skip
    batch = adapter().parse_batch(BATCH_ID, data)
    assert (batch.status, batch.cancelling_at, batch.cancelled_at) == ("cancelled", 1736472607, 1736472700)
    assert batch.counts == RequestCounts(total=3, completed=1, failed=2)


@pytest.mark.parametrize(
    "status", ["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"]
)
def test_openai_statuses_pass_unchanged(status):
    assert adapter().status(status) == status


def test_null_counts_stay_unknown():
    assert adapter().parse_batch(BATCH_ID, {"status": "cancelling", "request_counts": None}).counts is None


def test_answer_without_a_batch_is_an_upstream_failure():
    with pytest.raises(UpstreamUnavailable):
        adapter().parse_batch(BATCH_ID, {"error": None})


def test_invalid_key_error():
    body = {"error": {"message": "Invalid API Key", "type": "invalid_request_error", "code": "invalid_api_key"}}
    error = adapter().parse_error(answer(401, body))
    assert (error.status_code, error.message, error.type, error.code, error.provider) == (
        401, "Invalid API Key", "invalid_request_error", "invalid_api_key", "groq",
    )  # fmt: skip


def test_finished_batch_conflict_keeps_409_and_the_message():
    body = {"error": {"message": "Cannot cancel a batch with status 'completed'.", "type": "invalid_request_error"}}
    error = adapter().parse_error(answer(409, body))
    assert (error.status_code, error.code) == (409, None)
    assert error.message == "Cannot cancel a batch with status 'completed'."
