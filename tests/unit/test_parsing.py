"""Wire parsing shared by the adapters (timestamps, counts, JSON) and the OpenAI/Azure adapters'
requests, batch parsing and error parsing, on recorded answers."""

from __future__ import annotations

import logging

import orjson
import pytest
from multidict import CIMultiDict

from service.domain.errors import InvalidRequest, ProviderError, UpstreamUnavailable
from service.domain.model import RequestCounts
from service.edge import envelope
from service.infra.providers.base import UpstreamResponse, count, decode_json, unix_seconds
from service.infra.providers.catalog import parse_config
from service.infra.providers.openai import AzureOpenAIAdapter, OpenAIAdapter

OPENAI_KEY = "sk-proj-unit-openai-key-0001"
AZURE_KEY = "az-unit-azure-key-0002"
JSON = {"Content-Type": "application/json"}

# A cancel answer as api.openai.com sends it (POST /v1/batches/{id}/cancel, right after the call).
OPENAI_BATCH = b"""{
  "id": "batch_67a1f2c3d4e5f6a7b8c9d0e1",
  "object": "batch",
  "endpoint": "/v1/chat/completions",
  "errors": null,
  "input_file_id": "file-4Xp1ZkQm8tYh2vRnB7sLcW",
  "completion_window": "24h",
  "status": "cancelling",
  "output_file_id": null,
  "error_file_id": null,
  "created_at": 1738666179,
  "in_progress_at": 1738666183,
  "expires_at": 1738752579,
  "finalizing_at": null,
  "completed_at": null,
  "failed_at": null,
  "expired_at": null,
  "cancelling_at": 1738667012,
  "cancelled_at": null,
  "request_counts": {"total": 100, "completed": 23, "failed": 1},
  "metadata": {"customer_id": "user_123456789", "batch_description": "Nightly eval job"}
}"""

# The same call on an Azure preview build: capitalised status, ISO timestamps, null counts.
AZURE_PREVIEW_BATCH = b"""{
  "id": "batch_5f0e8a5b-3c0d-4f5e-9e1a-2b3c4d5e6f70",
  "object": "batch",
  "endpoint": "/chat/completions",
  "errors": null,
  "input_file_id": "file-0a1b2c3d4e5f",
  "completion_window": "24h",
  "status": "Cancelling",
  "created_at": "2023-11-14T22:10:00Z",
  "cancelling_at": "2023-11-14T22:13:20.1234567Z",
  "cancelled_at": null,
  "request_counts": null,
  "metadata": null
}"""


def provider_config(name: str, **network):
    key = {"name": "k1", "value": OPENAI_KEY if name == "openai" else AZURE_KEY, "use_for_batch_api": True}
    if name == "azure":
        key["azure_key_config"] = {"endpoint": "https://my-res.openai.azure.com/"}
    return parse_config({"providers": {name: {"keys": [key], "network_config": network}}}, env={}).providers[name]


def openai(**network) -> OpenAIAdapter:
    return OpenAIAdapter(provider_config("openai", **network))


def azure(**network) -> AzureOpenAIAdapter:
    return AzureOpenAIAdapter(provider_config("azure", **network))


def response(status: int, body: bytes, headers=None) -> UpstreamResponse:
    return UpstreamResponse(status, JSON if headers is None else headers, body)


def parse(adapter, body: bytes, batch_id: str = "batch_x"):
    return adapter.parse_batch(batch_id, decode_json(response(200, body), adapter.name))


# --- unix_seconds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1700000000, 1700000000),
        (1, 1),
        (1700000000.9, 1700000000),
        ("1700000000", 1700000000),
        ("2023-11-14T22:13:20Z", 1700000000),
        ("2023-11-14T22:13:20z", 1700000000),
        ("2023-11-14T22:13:20+00:00", 1700000000),
        ("2023-11-15T00:13:20+02:00", 1700000000),
        ("2023-11-14T17:13:20-05:00", 1700000000),
        ("2023-11-14T22:13:20.123Z", 1700000000),
        ("2023-11-14T22:13:20.123456Z", 1700000000),
        ("2023-11-14T22:13:20.123456789Z", 1700000000),
        ("2023-11-15T00:13:20.999999999+02:00", 1700000000),
        ("2023-11-14T22:13:20.5", 1700000000),
        ("2023-11-14T22:13:20", 1700000000),  # naive: UTC
        ("2023-11-14 22:13:20", 1700000000),
        ("  2023-11-14T22:13:20Z  ", 1700000000),
    ],
)
def test_unix_seconds_accepts_numbers_and_rfc3339(value, expected):
    assert unix_seconds(value) == expected


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, 0.0, -1, -1700000000, -0.5, "0", "-5", "", "   ", "yesterday", "2023-13-45T99:99:99Z",
     "1700000000abc", [1700000000], {"seconds": 1}, float("nan")],
)  # fmt: skip
def test_unix_seconds_garbage_zero_negative_and_bool_are_none(value):
    assert unix_seconds(value) is None


@pytest.mark.parametrize("value", ["1969-12-31T23:59:59Z", "1970-01-01T00:00:00Z", "0001-01-01T00:00:00Z"])
def test_unix_seconds_pre_epoch_iso_is_none(value):
    assert unix_seconds(value) is None


@pytest.mark.parametrize("parse_fn", [unix_seconds, count], ids=["unix_seconds", "count"])
def test_digit_like_garbage_is_none_not_an_exception(parse_fn):
    assert parse_fn("1²") is None


def test_unix_seconds_fractional_numeric_string():
    assert unix_seconds("1700000000.5") == 1700000000


# --- count ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), (7, 7), (2**31, 2**31), ("12", 12), ("0", 0), (3.0, 3), (0.0, 0)],
)
def test_count_accepts_non_negative_integers(value, expected):
    result = count(value)
    assert result == expected and type(result) is int


@pytest.mark.parametrize(
    "value", [None, True, False, -1, "-1", -2.0, 3.5, "3.5", "", " 3", "three", float("inf"), [1], {"n": 1}]
)
def test_count_refuses_negative_fractional_and_garbage(value):
    assert count(value) is None


# --- decode_json ------------------------------------------------------------------------------------


def test_decode_json_parses_and_empty_is_empty_object():
    assert decode_json(response(200, b'{"a": [1, null]}'), "openai") == {"a": [1, None]}
    assert decode_json(response(200, b""), "openai") == {}
    assert decode_json(response(200, b" \r\n "), "openai") == {}


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"Content-Type": "text/html; charset=utf-8"}, b'{"status": "cancelling"}'),
        (CIMultiDict({"content-type": "text/html"}), b"<html><body>502 Bad Gateway</body></html>"),
        (JSON, b"<!DOCTYPE html><html>cloudflare</html>"),
        ({}, b"<html></html>"),
    ],
)
def test_decode_json_html_is_upstream_unavailable_unless_error(headers, body):
    with pytest.raises(UpstreamUnavailable) as info:
        decode_json(response(200, body, headers), "azure")
    error = info.value
    assert (error.status_code, error.provider, error.code) == (502, "azure", "upstream_unavailable")
    assert "HTML" in error.message
    assert decode_json(response(502, body, headers), "azure", allow_error=True) == {}


@pytest.mark.parametrize("body", [b'{"id": "batch_1", ', b"not json", b"{'single': 'quotes'}", b"\xff\xfe"])
def test_decode_json_malformed_is_502_unless_error(body):
    with pytest.raises(UpstreamUnavailable, match="malformed JSON") as info:
        decode_json(response(200, body), "openai")
    assert info.value.status_code == 502 and info.value.provider == "openai"
    assert info.value.__cause__ is None
    assert decode_json(response(500, body), "openai", allow_error=True) == {}


# --- requests ---------------------------------------------------------------------------------------


def test_openai_cancel_request():
    adapter = openai(extra_headers={"OpenAI-Organization": "org-123", "X-Trace": "t"})
    key = adapter.config.keys[0]
    request = adapter.cancel_request(key, adapter.parse_id("batch_abc123"))
    assert request.method == "POST" and request.body is None
    assert request.url == "https://api.openai.com/v1/batches/batch_abc123/cancel"
    assert request.headers == {
        "OpenAI-Organization": "org-123",
        "X-Trace": "t",
        "Accept": "application/json",
        "Authorization": f"Bearer {OPENAI_KEY}",
    }


def test_openai_base_url_override_and_id_escaping():
    adapter = openai(base_url="http://127.0.0.1:8080/openai/")
    key = adapter.config.keys[0]
    url = adapter.cancel_request(key, adapter.parse_id("batch:1+2")).url
    assert url == "http://127.0.0.1:8080/openai/v1/batches/batch%3A1%2B2/cancel"


@pytest.mark.parametrize("bad", ["../files", "a/b", "a?b", "", "a%2Fb"])
def test_bad_ids_are_refused_before_a_request_is_built(bad):
    adapter = openai()
    with pytest.raises(InvalidRequest) as info:
        adapter.parse_id(bad)
    assert info.value.param == "batch_id"
    with pytest.raises(InvalidRequest):
        adapter.cancel_request(adapter.config.keys[0], bad)


@pytest.mark.parametrize("make", [openai, azure], ids=["openai", "azure"])
def test_extra_headers_cannot_override_auth(make):
    adapter = make(extra_headers={"Authorization": "Bearer sk-attacker", "api-key": "attacker", "Accept": "text/html"})
    headers = adapter.cancel_request(adapter.config.keys[0], "b").headers
    assert headers["Accept"] == "application/json"
    if adapter.name == "openai":
        assert headers["Authorization"] == f"Bearer {OPENAI_KEY}"
    else:
        assert headers["api-key"] == AZURE_KEY


@pytest.mark.parametrize(
    ("make", "header", "expected"),
    [(openai, "authorization", f"Bearer {OPENAI_KEY}"), (azure, "API-KEY", AZURE_KEY)],
    ids=["openai", "azure"],
)
def test_auth_comes_last_even_against_another_spelling(make, header, expected):
    # The merge is case-sensitive, so an extra header spelt differently stays in the dict; the key's
    # credential must then be the LAST occurrence, which is the one a case-insensitive last-wins
    # transport (aiohttp's header merge) puts on the wire.
    adapter = make(extra_headers={header: "attacker-credential"})
    headers = adapter.cancel_request(adapter.config.keys[0], "b").headers
    same_name = [value for name, value in headers.items() if name.lower() == header.lower()]
    assert same_name[-1] == expected
    assert CIMultiDict([(name, value) for name, value in headers.items()]).getall(header)[-1] == expected


def test_azure_cancel_request_uses_key_endpoint_api_version_and_api_key():
    adapter = azure(extra_headers={"x-ms-client-request-id": "abc"})
    request = adapter.cancel_request(adapter.config.keys[0], adapter.parse_id("batch_az"))
    assert request.method == "POST"
    assert request.url == "https://my-res.openai.azure.com/openai/batches/batch_az/cancel?api-version=2024-10-21"
    assert request.headers == {
        "x-ms-client-request-id": "abc",
        "Accept": "application/json",
        "api-key": AZURE_KEY,
    }
    assert "Authorization" not in request.headers


def test_azure_network_base_url_wins_over_the_key_endpoint():
    adapter = azure(base_url="http://127.0.0.1:9999/azure")
    url = adapter.cancel_request(adapter.config.keys[0], "batch_az").url
    assert url == "http://127.0.0.1:9999/azure/openai/batches/batch_az/cancel?api-version=2024-10-21"


def test_azure_each_key_uses_its_own_endpoint_and_version():
    keys = [
        {"value": "k1", "azure_key_config": {"endpoint": "https://east.openai.azure.com"}},
        {
            "value": "k2",
            "azure_key_config": {"endpoint": "https://west.openai.azure.com/", "api_version": "2025-04-01-preview"},
        },
        {"value": "k3", "azure_key_config": {"endpoint": "https://x.openai.azure.com", "api_version": "v&x=1#f"}},
    ]
    adapter = AzureOpenAIAdapter(parse_config({"providers": {"azure": {"keys": keys}}}, env={}).providers["azure"])
    urls = [adapter.cancel_request(key, "b").url for key in adapter.config.keys]
    assert urls == [
        "https://east.openai.azure.com/openai/batches/b/cancel?api-version=2024-10-21",
        "https://west.openai.azure.com/openai/batches/b/cancel?api-version=2025-04-01-preview",
        "https://x.openai.azure.com/openai/batches/b/cancel?api-version=v%26x%3D1%23f",
    ]
    assert [adapter.cancel_request(key, "b").headers["api-key"] for key in adapter.config.keys] == ["k1", "k2", "k3"]


# --- parse_batch ------------------------------------------------------------------------------------


def test_parse_real_openai_batch():
    batch = parse(openai(), OPENAI_BATCH, "batch_67a1f2c3d4e5f6a7b8c9d0e1")
    assert batch.id == "batch_67a1f2c3d4e5f6a7b8c9d0e1"
    assert batch.status == "cancelling"
    assert batch.counts == RequestCounts(total=100, completed=23, failed=1)
    assert (batch.counts.succeeded, batch.counts.pending) == (None, None)  # never invented
    assert (batch.cancelling_at, batch.cancelled_at) == (1738667012, None)


def test_parse_azure_preview_quirks():
    batch = parse(azure(), AZURE_PREVIEW_BATCH)
    assert batch.status == "cancelling"
    assert batch.counts is None
    assert batch.cancelling_at == 1700000000 and batch.cancelled_at is None


@pytest.mark.parametrize(
    ("raw", "unified"),
    [
        ("canceled", "cancelled"),
        ("Canceled", "cancelled"),
        ("CANCELLED", "cancelled"),
        ("Cancelling", "cancelling"),
        ("canceling", "cancelling"),
        ("Validating", "validating"),
        ("In_Progress", "in_progress"),
        (" finalizing ", "finalizing"),
        ("Completed", "completed"),
        ("expired", "expired"),
    ],
)
def test_statuses_are_unified(raw, unified):
    for adapter in (openai(), azure()):
        assert adapter.parse_batch("b", {"status": raw}).status == unified


def test_missing_id_falls_back_to_the_requested_one():
    assert openai().parse_batch("batch_req", {"status": "cancelling"}).id == "batch_req"


def test_counts_as_strings_and_partial_counts():
    batch = openai().parse_batch(
        "b", {"status": "cancelling", "request_counts": {"total": "10", "completed": "4", "failed": None}}
    )
    assert batch.counts == RequestCounts(total=10, completed=4, failed=None)
    empty = openai().parse_batch("b", {"status": "cancelling", "request_counts": {}})
    assert empty.counts == RequestCounts()
    assert openai().parse_batch("b", {"status": "cancelling", "request_counts": "n/a"}).counts is None


def test_iso_and_numeric_string_timestamps():
    batch = openai().parse_batch(
        "b", {"status": "cancelled", "cancelling_at": "1700000000", "cancelled_at": "2023-11-14T22:23:20+00:00"}
    )
    assert (batch.cancelling_at, batch.cancelled_at) == (1700000000, 1700000600)


@pytest.mark.parametrize(
    "data",
    [{}, {"id": "b"}, {"status": None}, {"status": ""}, [], "cancelling", None, {"object": "list", "data": []}],
)
def test_missing_status_is_upstream_unavailable(data):
    with pytest.raises(UpstreamUnavailable) as info:
        openai().parse_batch("b", data)
    assert info.value.status_code == 502 and info.value.provider == "openai"


def test_unknown_status_passes_through_lowercased_and_is_logged_once(caplog):
    adapter = azure()
    with caplog.at_level(logging.WARNING, logger="service.infra.providers.base"):
        first = adapter.parse_batch("b", {"status": "Paused"})
        second = adapter.parse_batch("b", {"status": "paused"})
        third = adapter.parse_batch("b", {"status": "Archiving"})
    assert (first.status, second.status, third.status) == ("paused", "paused", "archiving")
    messages = [r.getMessage() for r in caplog.records if r.name == "service.infra.providers.base"]
    assert len([m for m in messages if "'paused'" in m]) == 1
    assert len([m for m in messages if "'archiving'" in m]) == 1
    assert all("azure" in m for m in messages)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="service.infra.providers.base"):
        assert openai().parse_batch("b", {"status": "PAUSED"}).status == "paused"  # another adapter logs again
    assert len(caplog.records) == 1


def test_known_status_is_not_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="service.infra.providers.base"):
        openai().parse_batch("b", {"status": "Cancelling"})
        openai().parse_batch("b", {"status": "canceled"})
    assert caplog.records == []


# --- parse_error ------------------------------------------------------------------------------------


def test_openai_409_envelope():
    body = orjson.dumps(
        {
            "error": {
                "message": "Cannot cancel a batch with status 'completed'.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
    )
    error = openai().parse_error(response(409, body))
    assert isinstance(error, ProviderError)
    assert error.status_code == 409
    assert error.message == "Cannot cancel a batch with status 'completed'."
    assert error.type == "invalid_request_error"
    assert error.code is None and error.param is None
    assert error.provider == "openai" and error.is_bifrost_error is False
    assert envelope.error_body(error)["error"]["code"] is None


def test_openai_401_and_429_keep_codes_and_param():
    body = orjson.dumps(
        {
            "error": {
                "message": "Incorrect API key provided: sk-...0001.",
                "type": "invalid_request_error",
                "param": "key",
                "code": "invalid_api_key",
            }
        }
    )
    error = openai().parse_error(response(401, body))
    assert (error.status_code, error.code, error.param) == (401, "invalid_api_key", "key")
    body = b'{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}'
    rate = openai().parse_error(response(429, body))
    assert (rate.status_code, rate.type, rate.code, rate.message) == (
        429,
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached",
    )


def test_azure_401_envelope():
    message = (
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for "
        "an active subscription and use a correct regional API endpoint for your resource."
    )
    error = azure().parse_error(response(401, orjson.dumps({"error": {"code": "401", "message": message}})))
    assert (error.status_code, error.code, error.message) == (401, "401", message)
    assert error.type == "provider_error" and error.param is None and error.provider == "azure"


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"Content-Type": "text/html"}, b"<html><head><title>502 Bad Gateway</title></head></html>"),
        ({"Content-Type": "application/json"}, b"<html>oops</html>"),
        ({"Content-Type": "text/plain"}, b"upstream connect error or disconnect/reset before headers"),
        (JSON, b""),
        (JSON, b'{"error": '),
        (JSON, b"[1, 2]"),
        (JSON, b'{"error": "Unauthorized"}'),
    ],
)
def test_unparseable_error_bodies_get_a_generic_message_and_keep_the_status(headers, body):
    error = azure().parse_error(response(503, body, headers))
    assert error.status_code == 503
    assert error.message == "azure answered HTTP 503"
    assert (error.type, error.code, error.param) == ("provider_error", None, None)
    assert error.is_bifrost_error is False and error.provider == "azure"


def test_error_without_envelope_uses_top_level_fields():
    error = openai().parse_error(response(401, b'{"detail": "Unauthorized"}'))
    assert (error.status_code, error.message) == (401, "Unauthorized")
    google = openai().parse_error(
        response(404, b'{"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}')
    )
    assert (google.message, google.code) == ("not found", "NOT_FOUND")  # numeric code -> the status name
