"""Anthropic Message Batches: the adapter (parsing recorded answers, status table, ids, request
building, errors) and the simulator (auth, version header, state machine, wire shape), also checked
with the official anthropic SDK."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from datetime import datetime

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from sandbox import SIMULATOR_KEY, SimBatch, build_app
from sandbox.anthropic import (
    AnthropicOptions,
    AnthropicSim,
    anthropic_options,
    message_batch_counts,
    render_message_batch,
)
from service.domain.errors import InvalidRequest, UpstreamUnavailable
from service.domain.model import RequestCounts
from service.edge.surfaces import SURFACES
from service.infra.providers.anthropic import API_VERSION, AnthropicAdapter
from service.infra.providers.base import UpstreamResponse
from service.infra.providers.catalog import ADAPTERS, parse_config

KEY = "sk-ant-api03-unitSECRETkey-0000"
OTHER_KEY = "sk-ant-api03-otherSECRETkey-1111"


def adapter(**network) -> AnthropicAdapter:
    config = parse_config(
        {"providers": {"anthropic": {"keys": [{"name": "k", "value": KEY, "use_for_batch_api": True}],
                                     "network_config": network}}},
        env={},
    )  # fmt: skip
    return AnthropicAdapter(config.providers["anthropic"])


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


# Recorded-style answers. The first is the API reference's example (cancel_initiated_at set while
# still in_progress, as the reference shows it).
DOCS_EXAMPLE = {
    "id": "msgbatch_013Zva2CMHLNnXjNJJKqJ2EF",
    "archived_at": "2024-08-20T18:37:24.100435Z",
    "cancel_initiated_at": "2024-08-20T18:37:24.100435Z",
    "created_at": "2024-08-20T18:37:24.100435Z",
    "ended_at": "2024-08-20T18:37:24.100435Z",
    "expires_at": "2024-08-20T18:37:24.100435Z",
    "processing_status": "in_progress",
    "request_counts": {"canceled": 10, "errored": 30, "expired": 10, "processing": 100, "succeeded": 50},
    "results_url": "https://api.anthropic.com/v1/messages/batches/msgbatch_013Zva2CMHLNnXjNJJKqJ2EF/results",
    "type": "message_batch",
}
JUST_CANCELLED = {
    "id": "msgbatch_01Canceling",
    "type": "message_batch",
    "processing_status": "canceling",
    "request_counts": {"processing": 250, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
    "ended_at": None,
    "created_at": "2026-11-27T08:00:00.123456Z",
    "expires_at": "2026-11-28T08:00:00.123456Z",
    "archived_at": None,
    "cancel_initiated_at": "2026-11-27T09:15:42.987654Z",
    "results_url": None,
}
ENDED_AFTER_CANCEL = {
    **JUST_CANCELLED,
    "processing_status": "ended",
    "request_counts": {"processing": 0, "succeeded": 120, "errored": 5, "canceled": 125, "expired": 0},
    "ended_at": "2026-11-27T09:16:03.5Z",
    "results_url": "https://api.anthropic.com/v1/messages/batches/msgbatch_01Canceling/results",
}
ENDED_NORMALLY = {
    **ENDED_AFTER_CANCEL,
    "cancel_initiated_at": None,
    "request_counts": {"processing": 0, "succeeded": 240, "errored": 3, "canceled": 0, "expired": 7},
}


# --- parsing ---------------------------------------------------------------------------------------


def test_just_cancelled_batch_is_cancelling_with_everything_still_pending():
    batch = adapter().parse_batch("ignored", JUST_CANCELLED)
    assert batch.id == "msgbatch_01Canceling"
    assert batch.status == "cancelling"
    assert batch.counts == RequestCounts(
        total=250, completed=0, failed=0, succeeded=0, expired=0, canceled=0, pending=250
    )
    assert batch.cancelling_at == ts("2026-11-27T09:15:42Z")
    assert batch.cancelled_at is None


def test_ended_after_a_cancel_is_cancelled_at_ended_at():
    batch = adapter().parse_batch("x", ENDED_AFTER_CANCEL)
    assert batch.status == "cancelled"
    assert batch.cancelling_at == ts("2026-11-27T09:15:42Z")
    assert batch.cancelled_at == ts("2026-11-27T09:16:03Z")
    assert batch.counts == RequestCounts(
        total=250, completed=120, failed=5, succeeded=120, expired=0, canceled=125, pending=0
    )


def test_plain_ended_batch_is_ended_without_cancel_times():
    batch = adapter().parse_batch("x", ENDED_NORMALLY)
    assert (batch.status, batch.cancelling_at, batch.cancelled_at) == ("ended", None, None)
    assert batch.counts.total == 250 and batch.counts.expired == 7 and batch.counts.failed == 3


def test_reference_example_keeps_in_progress_and_sums_all_five_counts():
    batch = adapter().parse_batch("x", DOCS_EXAMPLE)
    assert batch.status == "in_progress"
    assert batch.cancelling_at == ts("2024-08-20T18:37:24Z")
    assert batch.cancelled_at is None  # only an ended batch has been cancelled
    assert batch.counts == RequestCounts(
        total=200, completed=50, failed=30, succeeded=50, expired=10, canceled=10, pending=100
    )


def test_ugly_answer_string_counts_capitalised_status_and_missing_id():
    data = {
        "processing_status": "Ended",
        "cancel_initiated_at": "2026-11-27T09:15:42+00:00",
        "ended_at": "2026-11-27T11:16:03.123456789+02:00",
        "request_counts": {"processing": "0", "succeeded": "7", "errored": 1, "canceled": "2", "expired": 0.0},
    }
    batch = adapter().parse_batch("msgbatch_from_caller", data)
    assert batch.id == "msgbatch_from_caller"
    assert batch.status == "cancelled"
    assert batch.cancelled_at == ts("2026-11-27T09:16:03Z")  # the +02:00 offset is honoured
    assert batch.counts == RequestCounts(total=10, completed=7, failed=1, succeeded=7, expired=0, canceled=2, pending=0)


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-11-27T09:15:42Z",
        "2026-11-27T09:15:42.1Z",
        "2026-11-27T09:15:42.123Z",
        "2026-11-27T09:15:42.123456Z",
        "2026-11-27T09:15:42.123456789Z",
        "2026-11-27T09:15:42.999999+00:00",
        "2026-11-27T10:15:42.5+01:00",
    ],
)
def test_rfc3339_with_any_fraction_digits_is_whole_unix_seconds(stamp):
    batch = adapter().parse_batch("x", {**JUST_CANCELLED, "cancel_initiated_at": stamp})
    assert batch.cancelling_at == ts("2026-11-27T09:15:42Z")


def test_missing_count_leaves_the_total_unknown_rather_than_undercounted():
    counts = {"processing": 3, "succeeded": 4, "errored": None, "canceled": 0}  # expired absent
    batch = adapter().parse_batch("x", {**JUST_CANCELLED, "request_counts": counts})
    assert batch.counts == RequestCounts(
        total=None, completed=4, failed=None, succeeded=4, expired=None, canceled=0, pending=3
    )


@pytest.mark.parametrize("counts", [None, "n/a", []])
def test_absent_counts_are_unknown_not_zero(counts):
    data = {**JUST_CANCELLED, "request_counts": counts}
    if counts is None:
        del data["request_counts"]
    assert adapter().parse_batch("x", data).counts is None


@pytest.mark.parametrize("bad_time", [None, "", "yesterday", 0, True])
def test_missing_or_unparseable_times_are_unknown(bad_time):
    data = {**JUST_CANCELLED, "cancel_initiated_at": bad_time}
    batch = adapter().parse_batch("x", data)
    assert batch.cancelling_at is None


@pytest.mark.parametrize(
    "stamp", ["0001-01-01T00:00:00Z", "1969-12-31T23:59:59.5Z", "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z"]
)
def test_times_the_answer_cannot_carry_are_unknown_not_a_crash(stamp):
    assert adapter().parse_batch("x", {**JUST_CANCELLED, "cancel_initiated_at": stamp}).cancelling_at is None


def test_counts_the_answer_cannot_carry_are_unknown_not_a_crash():
    counts = {"processing": "1²", "succeeded": 1 << 32, "errored": -1, "canceled": "3", "expired": 0}
    batch = adapter().parse_batch("x", {**JUST_CANCELLED, "request_counts": counts})
    assert batch.counts == RequestCounts(
        total=None, completed=None, failed=None, succeeded=None, expired=0, canceled=3, pending=None
    )


def test_ended_with_unparseable_end_time_is_still_cancelled_without_a_time():
    batch = adapter().parse_batch("x", {**ENDED_AFTER_CANCEL, "ended_at": "soon"})
    assert (batch.status, batch.cancelled_at) == ("cancelled", None)


@pytest.mark.parametrize("data", [{}, {"type": "message_batch"}, [], "ended", {"processing_status": ""}])
def test_answer_without_a_message_batch_is_an_upstream_failure(data):
    with pytest.raises(UpstreamUnavailable):
        adapter().parse_batch("x", data)


# --- status table ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider_status", "unified"),
    [
        ("in_progress", "in_progress"),
        ("canceling", "cancelling"),
        ("Canceling", "cancelling"),
        ("CANCELING", "cancelling"),
        ("cancelling", "cancelling"),
        ("ended", "ended"),
        (" ended ", "ended"),
    ],
)
def test_status_table(provider_status, unified):
    assert adapter().status(provider_status) == unified


def test_registered_under_its_name():
    assert ADAPTERS["anthropic"] is AnthropicAdapter


# --- ids -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_id", ["msgbatch_013Zva2CMHLNnXjNJJKqJ2EF", "msgbatch:01", "a.b", "msgbatch-01~x"])
def test_accepted_ids(batch_id):
    assert adapter().parse_id(batch_id) == batch_id


# --- request building ------------------------------------------------------------------------------


def test_cancel_request_is_a_bodiless_post_with_api_key_and_version():
    a = adapter()
    key = a.config.batch_keys[0]
    request = a.cancel_request(key, a.parse_id("msgbatch_01"))
    assert request.method == "POST"
    assert request.url == "https://api.anthropic.com/v1/messages/batches/msgbatch_01/cancel"
    assert request.body is None
    assert request.headers == {"x-api-key": KEY, "anthropic-version": API_VERSION, "Accept": "application/json"}
    # What the pinned official SDK sends (anthropic 2.14.0 `_constants.ANTHROPIC_API_VERSION`).
    assert API_VERSION == "2026-10-21"
    assert a.status_request(key, "msgbatch_01") is None  # the cancel answers the batch itself


def test_base_url_override_and_one_segment_escaping():
    a = adapter(base_url="http://127.0.0.1:9/anthropic/")
    request = a.cancel_request(a.config.batch_keys[0], "msgbatch:01~x")
    assert request.url == "http://127.0.0.1:9/anthropic/v1/messages/batches/msgbatch%3A01~x/cancel"


def test_extra_headers_are_sent_but_never_replace_the_key():
    a = adapter(extra_headers={"anthropic-beta": "message-batches-2024-09-24", "X-Api-Key": "evil",
                               "Authorization": "Bearer evil", "accept": "text/html"})  # fmt: skip
    headers = a.cancel_request(a.config.batch_keys[0], "b").headers
    assert headers == {
        "anthropic-beta": "message-batches-2024-09-24",
        "anthropic-version": API_VERSION,
        "Accept": "application/json",
        "x-api-key": KEY,
    }


def test_configured_version_replaces_the_default_in_any_case():
    a = adapter(extra_headers={"Anthropic-Version": "2023-06-01"})
    headers = CIMultiDict(a.cancel_request(a.config.batch_keys[0], "b").headers)
    assert headers.getall("anthropic-version") == ["2023-06-01"]


def test_the_version_is_a_provider_setting():
    config = parse_config(
        {"providers": {"anthropic": {"keys": [{"name": "k", "value": KEY, "use_for_batch_api": True}],
                                     "api_version": "2024-01-01"}}},
        env={},
    )  # fmt: skip
    a = AnthropicAdapter(config.providers["anthropic"])
    headers = CIMultiDict(a.cancel_request(a.config.batch_keys[0], "b").headers)
    assert headers.getall("anthropic-version") == ["2024-01-01"]


def test_the_anthropic_route_passes_the_callers_version_and_only_that():
    a = adapter()
    assert SURFACES["anthropic"].default_provider == a.name  # the Anthropic route is its own
    caller = {"anthropic-version": "2023-06-01", "anthropic-beta": "x", "x-api-key": "sk-bf-caller"}
    assert a.caller_headers(caller) == {"anthropic-version": "2023-06-01"}
    assert a.caller_headers({}) == {}


@pytest.mark.parametrize("value", ["", "latest", "2023-06-01\r\nx-api-key: y", "2023-6-1", "2023-06-01 "])
def test_a_callers_malformed_version_is_refused(value):
    with pytest.raises(InvalidRequest) as info:
        adapter().caller_headers({"anthropic-version": value})
    assert info.value.status_code == 400 and info.value.param == "anthropic-version"


def test_each_request_gets_its_own_headers():
    a = adapter()
    key = a.config.batch_keys[0]
    first = a.cancel_request(key, "a")
    first.headers["x-api-key"] = "changed"
    assert a.cancel_request(key, "b").headers["x-api-key"] == KEY


def test_the_key_never_shows_in_the_adapter_or_config_repr():
    a = adapter()
    assert KEY not in repr(a.config) and KEY not in repr(a.config.batch_keys[0])


# --- errors ----------------------------------------------------------------------------------------


def anthropic_error(status: int, error_type: str, message: str) -> UpstreamResponse:
    body = {"type": "error", "error": {"type": error_type, "message": message}, "request_id": "req_011CAbc"}
    headers = CIMultiDict({"Content-Type": "application/json", "request-id": "req_011CAbc"})
    return UpstreamResponse(status, headers, orjson.dumps(body))


@pytest.mark.parametrize(
    ("status", "error_type", "message"),
    [
        (400, "invalid_request_error", "anthropic-version: header is required"),
        (401, "authentication_error", "invalid x-api-key"),
        (403, "permission_error", "Your API key does not have permission to use the specified resource."),
        (404, "not_found_error", "Not Found"),
        (409, "invalid_request_error", "Message Batch msgbatch_01 has already ended."),
        (413, "request_too_large", "Request exceeds the maximum allowed number of bytes."),
        (429, "rate_limit_error", "Number of requests has exceeded your per-minute rate limit."),
        (500, "api_error", "Internal server error"),
        (529, "overloaded_error", "Overloaded"),
    ],
)
def test_parse_error_keeps_status_type_and_message(status, error_type, message):
    error = adapter().parse_error(anthropic_error(status, error_type, message))
    assert (error.status_code, error.type, error.message) == (status, error_type, message)
    assert error.code is None and error.param is None
    assert error.provider == "anthropic" and error.is_bifrost_error is False


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", "text/html"),
        (b"", "application/json"),
        (b'{"type":"error","error":{"type":"api_e', "application/json"),
        (b'{"type":"error"}', "application/json"),
    ],
)
def test_error_without_the_envelope_keeps_the_status_with_a_generic_message(body, content_type):
    error = adapter().parse_error(UpstreamResponse(503, CIMultiDict({"Content-Type": content_type}), body))
    assert (error.status_code, error.type, error.message) == (503, "provider_error", "anthropic answered HTTP 503")


def test_error_as_a_plain_string_keeps_its_message():
    response = UpstreamResponse(403, CIMultiDict(), b'{"error": "Forbidden"}')
    error = adapter().parse_error(response)
    assert (error.status_code, error.type, error.message) == (403, "provider_error", "Forbidden")


# --- simulator -------------------------------------------------------------------------------------

SIM_KEY = "sk-ant-api03-simSECRETkey-2222"
HEADERS = {"x-api-key": SIM_KEY, "anthropic-version": API_VERSION}
MESSAGE_BATCH_FIELDS = {
    "id", "type", "processing_status", "request_counts", "ended_at", "created_at", "expires_at", "archived_at",
    "cancel_initiated_at", "results_url",
}  # fmt: skip


@asynccontextmanager
async def sandbox():
    async with TestClient(TestServer(build_app(keys={"anthropic": [SIM_KEY]}))) as client:
        yield client, client.app[SIMULATOR_KEY]


async def sim_cancel(client, batch_id, headers=HEADERS):
    async with client.post(f"/anthropic/v1/messages/batches/{batch_id}/cancel", headers=headers) as response:
        return response.status, await response.json(), response.headers


async def sim_get(client, batch_id, headers=HEADERS):
    async with client.get(f"/anthropic/v1/messages/batches/{batch_id}", headers=headers) as response:
        return response.status, await response.json(), response.headers


def is_rfc3339_micro(value: str) -> bool:
    """Anthropic's time format: `2024-08-20T18:37:24.100435Z`."""
    try:
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
    except (TypeError, ValueError):
        return False
    return len(value) == 27


async def test_sim_cancel_goes_canceling_then_ended_with_counts_moved_to_canceled():
    async with sandbox() as (client, sim):
        counts = {"total": 40, "completed": 9, "failed": 1}
        sim.seed("anthropic", "msgbatch_1", cancel_delay_s=0.05, request_counts=counts)
        before = int(time.time())
        status, body, headers = await sim_cancel(client, "msgbatch_1")
        assert status == 200 and set(body) == MESSAGE_BATCH_FIELDS
        assert headers["request-id"].startswith("req_")
        assert (body["id"], body["type"], body["processing_status"]) == ("msgbatch_1", "message_batch", "canceling")
        # Everything stays in processing until the batch ends.
        assert body["request_counts"] == {"processing": 40, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        assert is_rfc3339_micro(body["cancel_initiated_at"]) and is_rfc3339_micro(body["created_at"])
        assert before <= ts(body["cancel_initiated_at"]) <= time.time()
        assert body["ended_at"] is None and body["results_url"] is None and body["archived_at"] is None
        assert ts(body["expires_at"]) - ts(body["created_at"]) == 24 * 3600

        # A second cancel while canceling answers the batch again, unchanged.
        status, again, _ = await sim_cancel(client, "msgbatch_1")
        assert (status, again["processing_status"], again["cancel_initiated_at"]) == (
            200, "canceling", body["cancel_initiated_at"],
        )  # fmt: skip

        await asyncio.sleep(0.06)
        status, ended, _ = await sim_get(client, "msgbatch_1")
        assert (status, ended["processing_status"]) == (200, "ended")
        assert ended["cancel_initiated_at"] == body["cancel_initiated_at"]
        assert ts(ended["ended_at"]) == sim.batch("anthropic", "msgbatch_1").cancelled_at
        assert ended["request_counts"] == {"processing": 0, "succeeded": 9, "errored": 1, "canceled": 30, "expired": 0}
        assert ended["results_url"].endswith("/anthropic/v1/messages/batches/msgbatch_1/results")


@pytest.mark.parametrize(
    ("status", "tallies"),
    [
        ("validating", {"processing": 50}),
        ("finalizing", {"processing": 50}),
        ("completed", {"succeeded": 46, "errored": 4}),
        ("failed", {"succeeded": 20, "errored": 30}),
        ("expired", {"succeeded": 20, "errored": 4, "expired": 26}),
        ("cancelled", {"succeeded": 20, "errored": 4, "canceled": 26}),
    ],
)
def test_sim_counts_per_state_always_sum_to_the_total(status, tallies):
    batch = SimBatch("anthropic", "b", status=status, request_counts={"total": 50, "completed": 20, "failed": 4})
    expected = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0, **tallies}
    assert message_batch_counts(batch) == expected and sum(expected.values()) == 50


def test_sim_renders_every_state_in_anthropics_vocabulary():
    created = 1_790_000_000
    rendered = {
        status: render_message_batch(SimBatch("anthropic", "b", status=status, created_at=created), "http://h/p")
        for status in ("validating", "in_progress", "finalizing", "cancelling", "completed", "failed", "expired",
                       "cancelled")
    }  # fmt: skip
    assert {s: r["processing_status"] for s, r in rendered.items()} == {
        "validating": "in_progress", "in_progress": "in_progress", "finalizing": "in_progress",
        "cancelling": "canceling", "completed": "ended", "failed": "ended", "expired": "ended", "cancelled": "ended",
    }  # fmt: skip
    assert rendered["completed"]["cancel_initiated_at"] is None and rendered["cancelled"]["cancel_initiated_at"]
    assert rendered["expired"]["ended_at"] == rendered["expired"]["expires_at"]
    assert rendered["in_progress"]["created_at"] == "2026-09-21T14:13:20.000000Z"
    assert rendered["completed"]["results_url"] == "http://h/p/v1/messages/batches/b/results"


@pytest.mark.parametrize("finished", ["completed", "failed", "expired", "cancelled"])
async def test_sim_ended_batch_refuses_a_cancel_with_a_configurable_status(finished):
    async with sandbox() as (client, sim):
        sim.seed("anthropic", "done", status=finished)
        status, body, headers = await sim_cancel(client, "done")
        assert status == 400 and body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error" and "already ended" in body["error"]["message"]
        assert body["request_id"] == headers["request-id"]

        anthropic_options(sim).ended_cancel_status = 409
        assert (await sim_cancel(client, "done"))[0] == 409
        assert sim.batch("anthropic", "done").status == finished
        with pytest.raises(ValueError):
            AnthropicOptions(ended_cancel_status=200)


async def test_sim_accepts_the_key_as_x_api_key_or_bearer_with_any_version():
    async with sandbox() as (client, sim):
        sim.seed("anthropic", "b")
        bearer = {"Authorization": f"Bearer {SIM_KEY}", "anthropic-version": "2026-10-21"}
        assert (await sim_cancel(client, "b", headers=bearer))[0] == 200
        assert (await sim_get(client, "b", headers={**HEADERS, "anthropic-version": "2099-01-01"}))[0] == 200


@pytest.mark.parametrize(
    ("headers", "status", "error_type", "message"),
    [
        ({"anthropic-version": API_VERSION}, 401, "authentication_error", "x-api-key header is required"),
        ({**HEADERS, "x-api-key": "sk-ant-api03-WRONGkey-9999"}, 401, "authentication_error", "invalid x-api-key"),
        ({"Authorization": "Bearer sk-ant-WRONG", "anthropic-version": API_VERSION}, 401, "authentication_error",
         "Invalid bearer token"),
        ({"x-api-key": SIM_KEY}, 400, "invalid_request_error", "anthropic-version: header is required"),
        ({"x-api-key": SIM_KEY, "anthropic-version": " "}, 400, "invalid_request_error",
         "anthropic-version: header is required"),
    ],
)  # fmt: skip
async def test_sim_auth_and_version_refusals(headers, status, error_type, message):
    async with sandbox() as (client, sim):
        sim.seed("anthropic", "b")
        got, body, response_headers = await sim_cancel(client, "b", headers=headers)
        assert got == status
        assert body == {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": response_headers["request-id"],
        }
        assert "WRONG" not in orjson.dumps(body).decode()
        assert sim.batch("anthropic", "b").status == "in_progress"  # a refused call changes nothing


async def test_sim_unknown_batch_and_unknown_route_are_not_found_error():
    async with sandbox() as (client, _):
        status, body, _ = await sim_cancel(client, "msgbatch_nope")
        assert status == 404 and body["error"]["type"] == "not_found_error"
        assert "msgbatch_nope" in body["error"]["message"]
        async with client.post("/anthropic/v1/message/batches/b/cancel", headers=HEADERS) as response:
            assert response.status == 404
            assert (await response.json())["error"] == {"type": "not_found_error", "message": "Not Found"}


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(400, "invalid_request_error"), (403, "permission_error"), (429, "rate_limit_error"), (500, "api_error"),
     (529, "overloaded_error"), (418, "invalid_request_error"), (503, "api_error")],
)  # fmt: skip
async def test_sim_injected_statuses_use_anthropics_envelope(status, error_type):
    async with sandbox() as (client, sim):
        sim.add_fault("anthropic", {"status": status, "retry_after": 2})
        got, body, headers = await sim_cancel(client, "b")
        assert (got, body["type"], body["error"]["type"]) == (status, "error", error_type)
        assert body["request_id"] == headers["request-id"] and headers["Retry-After"] == "2"


def test_sim_gateway_config_points_batchgate_at_the_prefix():
    block = AnthropicSim.gateway_config("http://127.0.0.1:1/anthropic", AnthropicSim.default_key)
    config = parse_config({"providers": {"anthropic": block}}, env={}).providers["anthropic"]
    assert config.network.base_url == "http://127.0.0.1:1/anthropic"
    assert [k.value for k in config.batch_keys] == [AnthropicSim.default_key]


async def test_official_sdk_reads_the_simulator():
    anthropic = pytest.importorskip("anthropic")
    async with sandbox() as (client, sim):
        sim.seed("anthropic", "msgbatch_sdk", cancel_delay_s=3600)
        sim.seed("anthropic", "msgbatch_done", status="completed")
        sdk = anthropic.AsyncAnthropic(api_key=SIM_KEY, base_url=str(client.make_url("/anthropic")), max_retries=0)
        try:
            batch = await sdk.messages.batches.cancel("msgbatch_sdk")
            assert (batch.processing_status, batch.request_counts.processing) == ("canceling", 100)
            assert batch.cancel_initiated_at.tzinfo is not None and batch.ended_at is None
            with pytest.raises(anthropic.BadRequestError) as info:
                await sdk.messages.batches.cancel("msgbatch_done")
            assert info.value.request_id and info.value.body["error"]["type"] == "invalid_request_error"
            with pytest.raises(anthropic.NotFoundError):
                await sdk.messages.batches.retrieve("msgbatch_missing")
        finally:
            await sdk.close()
        # The SDK sends the key as a Bearer token with its own version date; both are accepted.
        call = sim.calls("anthropic")[0]
        assert call["headers"]["Authorization"] == f"Bearer {SIM_KEY}" and call["headers"]["anthropic-version"]
