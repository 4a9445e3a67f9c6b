"""Finding batches, with no network: each adapter's list request and its reading of list pages
written as the providers document them (including the ugly ones: string counts, ISO times,
capitalised statuses, missing fields), the one local filter, and the listing loop over a fake
executor (pagination to the end, early stop, repeated tokens, errors)."""

from __future__ import annotations

import asyncio
from types import MappingProxyType
from urllib.parse import parse_qs, parse_qsl, urlsplit

import orjson
import pytest

from sandbox.server import SIMULATORS
from service.domain.errors import ProviderError, UnsupportedOperation, UpstreamUnavailable
from service.domain.model import BatchState, ListedBatch, ListQuery, matches
from service.infra.providers.base import Adapter, UpstreamRequest, UpstreamResponse, with_query
from service.infra.providers.catalog import ADAPTERS, parse_config
from service.infra.providers.vertex import VertexJobRef
from service.usecases.context import CallContext
from service.usecases.listing import list_batches, providers_that_can_list

BASE = "http://127.0.0.1:9"
RUNNING = frozenset({"validating", "in_progress", "finalizing"})
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def adapter(name: str) -> Adapter:
    (sim,) = [sim for sim in SIMULATORS if sim.name == name]
    block = sim.gateway_config(f"{BASE}{sim.prefix}", sim.default_key)
    config = parse_config({"providers": {name: block}}, env={})
    return ADAPTERS[name](config.providers[name])


def key_of(a: Adapter):
    return a.config.batch_keys[0]


def query(**fields) -> ListQuery:
    return ListQuery(statuses=fields.pop("statuses", RUNNING), **fields)


def params(request: UpstreamRequest) -> dict[str, list[str]]:
    return parse_qs(urlsplit(request.url).query, keep_blank_values=True)


def path(request: UpstreamRequest) -> str:
    return urlsplit(request.url).path


# --- the local filter ------------------------------------------------------------------------------


def listed(status="in_progress", created=T0, **metadata) -> ListedBatch:
    return ListedBatch(BatchState("b", status, created_at=created), dict(metadata))


@pytest.mark.parametrize(
    ("batch", "q", "expected"),
    [
        (listed(), query(), True),
        (listed("completed"), query(), False),
        (listed(created=T0), query(created_after=T0), True),  # inclusive
        (listed(created=T0 - 1), query(created_after=T0), False),
        (listed(created=T0), query(created_before=T0), False),  # exclusive
        (listed(created=T0 - 1), query(created_before=T0), True),
        (listed(created=None), query(created_after=T0), False),  # a bound needs a known time
        (listed(created=None), query(), True),
        (listed(team="search", job="x"), query(metadata={"team": "search"}), True),
        (listed(team="ads"), query(metadata={"team": "search"}), False),
        (listed(), query(metadata={"team": "search"}), False),  # no metadata never matches a selector
        (listed(team="search"), query(metadata={"team": "search", "job": "x"}), False),
    ],
)
def test_matches(batch, q, expected):
    assert matches(batch, q) is expected


def test_query_is_frozen_and_has_no_metadata_by_default():
    q = query()
    assert q.metadata == {} and isinstance(q.metadata, MappingProxyType)
    with pytest.raises(AttributeError):
        q.created_after = 5  # type: ignore[misc]


def test_every_adapter_can_list_and_the_helper_keeps_to_the_allowed():
    adapters = {name: adapter(name) for name in ADAPTERS}
    assert all(cls.can_list() for cls in ADAPTERS.values())
    assert not Adapter.can_list()
    assert providers_that_can_list(adapters) == sorted(ADAPTERS)
    assert providers_that_can_list(adapters, ["openai", "bedrock", "fireworks", "nowhere"]) == ["bedrock", "openai"]
    assert providers_that_can_list(adapters, []) == []


def test_with_query_encodes_as_rfc_3986():
    assert with_query("http://h/p", {"a": "x y", "b": None, "c": 3}) == "http://h/p?a=x%20y&c=3"
    assert with_query("http://h/p?v=1", [("s", "A"), ("s", "B")]) == "http://h/p?v=1&s=A&s=B"
    assert (
        with_query("http://h/p", {"t": "2026-01-01T00:00:00Z"}, safe="-_.~") == "http://h/p?t=2026-01-01T00%3A00%3A00Z"
    )


# --- OpenAI, Azure, Groq ---------------------------------------------------------------------------


def test_openai_list_request_pages_by_after():
    a = adapter("openai")
    first = a.list_request(key_of(a), query(), None)
    assert (first.method, first.operation, path(first)) == ("GET", "list", "/openai/v1/batches")
    assert params(first) == {"limit": ["100"]} and first.body is None
    assert first.headers["Authorization"] == f"Bearer {key_of(a).value}"
    assert params(a.list_request(key_of(a), query(), "batch_abc")) == {"limit": ["100"], "after": ["batch_abc"]}
    assert a.lists_newest_first and a.keeps_metadata


OPENAI_PAGE = {
    "object": "list",
    "data": [
        {"id": "batch_2", "object": "batch", "status": "in_progress", "created_at": T0 + 60,
         "request_counts": {"total": 10, "completed": 4, "failed": 0}, "metadata": {"team": "search", "n": 3}},
        {"id": "batch_1", "object": "batch", "status": "completed", "created_at": T0,
         "request_counts": None, "metadata": None},
    ],
    "first_id": "batch_2",
    "last_id": "batch_1",
    "has_more": True,
}  # fmt: skip


def test_openai_parse_list_reads_metadata_counts_and_the_cursor():
    batches, token = adapter("openai").parse_list(OPENAI_PAGE)
    assert token == "batch_1"
    first, second = batches
    assert (first.state.id, first.state.status, first.state.created_at) == ("batch_2", "in_progress", T0 + 60)
    assert first.state.counts.total == 10 and first.metadata == {"team": "search", "n": "3"}
    assert (second.state.status, second.state.counts, second.metadata) == ("completed", None, {})
    assert adapter("openai").parse_list({**OPENAI_PAGE, "has_more": False})[1] is None
    assert adapter("openai").parse_list({"object": "list", "data": [], "has_more": False}) == ([], None)


def test_azure_preview_answers_with_capitalised_statuses_and_iso_times():
    a = adapter("azure")
    request = a.list_request(key_of(a), query(), "batch_x")
    assert path(request) == "/azure/openai/batches"
    assert params(request) == {"api-version": ["2024-10-21"], "limit": ["100"], "after": ["batch_x"]}
    assert request.headers["api-key"] == key_of(a).value
    page = {"data": [{"id": "batch_a", "status": "In_progress", "created_at": "2026-01-01T00:00:00+00:00",
                      "request_counts": None}], "has_more": False}  # fmt: skip
    (batch,), token = a.parse_list(page)
    assert (batch.state.status, batch.state.created_at, token) == ("in_progress", T0, None)


def test_groq_lists_on_its_path_and_an_answer_without_has_more_continues_only_from_a_full_page():
    a = adapter("groq")
    assert path(a.list_request(key_of(a), query(), None)) == "/groq/openai/v1/batches"
    assert not a.lists_newest_first
    short = {"object": "list", "data": [{"id": "b1", "status": "in_progress", "created_at": T0}]}
    assert a.parse_list(short)[1] is None
    full = {"object": "list", "data": [{"id": f"b{i}", "status": "failed", "created_at": T0} for i in range(100)]}
    assert a.parse_list(full)[1] == "b99"


@pytest.mark.parametrize("page", [{"data": "nope"}, [], {"data": [{"status": "in_progress"}]}, {"data": [5]}])
def test_openai_page_of_the_wrong_shape_is_an_upstream_failure(page):
    with pytest.raises(UpstreamUnavailable):
        adapter("openai").parse_list(page)


# --- Anthropic -------------------------------------------------------------------------------------


def test_anthropic_list_request_and_page():
    a = adapter("anthropic")
    request = a.list_request(key_of(a), query(), "msgbatch_9")
    assert path(request) == "/anthropic/v1/messages/batches"
    assert params(request) == {"limit": ["1000"], "after_id": ["msgbatch_9"]}
    assert request.headers["x-api-key"] == key_of(a).value and request.headers["anthropic-version"]
    page = {
        "data": [
            {"id": "msgbatch_2", "type": "message_batch", "processing_status": "in_progress",
             "request_counts": {"processing": "5", "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
             "created_at": "2026-01-01T00:01:00.123456Z", "ended_at": None, "cancel_initiated_at": None},
            {"id": "msgbatch_1", "type": "message_batch", "processing_status": "ended",
             "request_counts": {"processing": 0, "succeeded": 3, "errored": 1, "canceled": 6, "expired": 0},
             "created_at": "2026-01-01T00:00:00Z", "ended_at": "2026-01-01T02:00:00Z",
             "cancel_initiated_at": "2026-01-01T01:00:00Z"},
        ],
        "has_more": True, "first_id": "msgbatch_2", "last_id": "msgbatch_1",
    }  # fmt: skip
    (running, cancelled), token = a.parse_list(page)
    assert (running.state.status, running.state.created_at, running.state.counts.pending) == ("in_progress", T0 + 60, 5)
    assert (cancelled.state.status, cancelled.state.created_at, cancelled.metadata) == ("cancelled", T0, {})
    assert token == "msgbatch_1" and a.lists_newest_first and not a.keeps_metadata
    assert a.parse_list({**page, "has_more": False})[1] is None


# --- Bedrock ---------------------------------------------------------------------------------------


def test_bedrock_lists_once_per_status_with_submit_time_bounds_and_signs_the_query():
    a = adapter("bedrock")
    q = query(created_after=T0, created_before=T0 + 3600)
    assert a.list_statuses(q) == ["InProgress", "Scheduled", "Submitted", "Validating"]
    request = a.list_request(key_of(a), q, None)
    assert (request.method, request.operation, path(request)) == ("GET", "list", "/bedrock/model-invocation-jobs")
    assert params(request) == {
        "maxResults": ["1000"], "sortBy": ["CreationTime"], "sortOrder": ["Descending"], "statusEquals": ["InProgress"],
        "submitTimeAfter": ["2025-12-31T23:59:59Z"], "submitTimeBefore": ["2026-01-01T01:00:00Z"],
    }  # fmt: skip
    assert "%3A" in request.url  # RFC 3986, as SigV4 signs it
    signed = asyncio.run(a.prepare(key_of(a), request))
    assert signed.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=")

    page = {"invocationJobSummaries": [], "nextToken": "tok/+="}
    assert a.parse_list(page, page_token=None, query=q) == ([], "0|tok/+=")
    assert params(a.list_request(key_of(a), q, "0|tok/+="))["nextToken"] == ["tok/+="]
    # The first status is done: the next one starts without a token.
    assert a.parse_list({"invocationJobSummaries": []}, page_token="0|tok", query=q) == ([], "1|")
    assert params(a.list_request(key_of(a), q, "1|"))["statusEquals"] == ["Scheduled"]
    assert "nextToken" not in params(a.list_request(key_of(a), q, "1|"))
    assert a.parse_list({"invocationJobSummaries": []}, page_token="3|", query=q) == ([], None)


def test_bedrock_every_status_is_one_listing_without_the_filter():
    a = adapter("bedrock")
    everything = query(statuses=frozenset(a.statuses.values()))
    assert a.list_statuses(everything) == []
    assert "statusEquals" not in params(a.list_request(key_of(a), everything, None))
    assert a.parse_list({"invocationJobSummaries": []}, query=everything) == ([], None)
    assert a.list_statuses(query(statuses=frozenset({"cancelling"}))) == ["Stopping"]


def test_bedrock_summary_is_read_with_its_arn_and_submit_time():
    a = adapter("bedrock")
    arn = "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abcdefabcdef"
    page = {"invocationJobSummaries": [
        {"jobArn": arn, "jobName": "j", "status": "InProgress", "submitTime": "2026-01-01T00:00:00.000Z",
         "totalRecordCount": 10, "processedRecordCount": 4, "successRecordCount": 4, "errorRecordCount": 0},
        {"jobArn": arn.replace("abcdef", "ffffff", 1), "status": "PartiallyCompleted",
         "submitTime": 1767225500.5},
    ]}  # fmt: skip
    (job, done), token = a.parse_list(page, query=query(statuses=frozenset(a.statuses.values())))
    assert (job.state.id, job.state.status, job.state.created_at, job.state.counts.pending) == (
        arn,
        "in_progress",
        T0,
        6,
    )
    assert (done.state.status, done.state.created_at, done.metadata, token) == ("completed", T0 - 100, {}, None)
    assert a.parse_id(job.state.id) == arn


# --- Google ----------------------------------------------------------------------------------------


def test_vertex_filter_does_the_query_on_the_server():
    a = adapter("vertex")
    q = query(created_after=T0, created_before=T0 + 60, metadata={"team": "search", "Bad.Key": "x", "q": 'a"b\\'})
    assert a.list_filter(q) == (
        '(state="JOB_STATE_PAUSED" OR state="JOB_STATE_PENDING" OR state="JOB_STATE_QUEUED" OR '
        'state="JOB_STATE_RUNNING" OR state="JOB_STATE_UPDATING") AND create_time>="2026-01-01T00:00:00Z" AND '
        'create_time<"2026-01-01T00:01:00Z" AND labels.q="a\\"b\\\\" AND labels.team="search"'
    )
    assert a.list_filter(query(statuses=frozenset(a.statuses.values()))) == ""
    request = a.list_request(key_of(a), q, "next-page")
    assert path(request) == "/vertex/v1/projects/batchgate-sandbox/locations/us-central1/batchPredictionJobs"
    assert params(request)["pageSize"] == ["1000"] and params(request)["pageToken"] == ["next-page"]
    assert dict(parse_qsl(urlsplit(request.url).query))["filter"] == a.list_filter(q)
    assert "Authorization" not in request.headers  # the token is minted in prepare
    assert not a.lists_newest_first and a.keeps_metadata


def test_vertex_page_reads_names_labels_and_string_counts():
    a = adapter("vertex")
    name = "projects/731902548316/locations/us-central1/batchPredictionJobs/123"
    page = {"batchPredictionJobs": [
        {"name": name, "state": "JOB_STATE_RUNNING", "createTime": "2026-01-01T00:00:00.123456789Z",
         "completionStats": {"successfulCount": "7", "incompleteCount": "-1"}, "labels": {"team": "search"}},
    ], "nextPageToken": "abc"}  # fmt: skip
    (job,), token = a.parse_list(page)
    assert (job.state.id, job.state.status, job.state.created_at, token) == (name, "in_progress", T0, "abc")
    assert job.state.counts.completed == 7 and job.state.counts.total is None and job.metadata == {"team": "search"}
    assert a.parse_id(job.state.id) == VertexJobRef("123", "731902548316", "us-central1")
    assert a.parse_list({}) == ([], None)  # proto3 JSON: no jobs, no field


def test_gemini_lists_operations_by_page_token():
    a = adapter("gemini")
    request = a.list_request(key_of(a), query(), "t1")
    assert path(request) == "/gemini/v1beta/batches"
    assert params(request) == {"pageSize": ["1000"], "pageToken": ["t1"]}
    assert request.headers["x-goog-api-key"] == key_of(a).value
    batch = {"@type": "type.googleapis.com/x", "state": "BATCH_STATE_PENDING", "createTime": "2026-01-01T00:00:00Z",
             "batchStats": {"requestCount": "4"}}  # fmt: skip
    page = {"operations": [
        {"name": "batches/abc", "metadata": batch},
        {"name": "batches/def", "done": True, "error": {"code": 1, "message": "cancelled"}},
    ], "nextPageToken": ""}  # fmt: skip
    (pending, cancelled), token = a.parse_list(page)
    assert (pending.state.id, pending.state.status, pending.state.created_at) == ("batches/abc", "validating", T0)
    assert pending.state.counts.total == 4 and a.parse_id(pending.state.id) == "abc"
    assert (cancelled.state.status, cancelled.state.created_at, token) == ("cancelled", None, None)
    assert a.parse_list({}) == ([], None)


# --- Mistral, Cohere, Together, xAI ----------------------------------------------------------------


def test_mistral_pages_by_number_with_server_status_and_created_after():
    a = adapter("mistral")
    q = query(created_after=T0)
    request = a.list_request(key_of(a), q, None)
    assert path(request) == "/mistral/v1/batch/jobs"
    assert params(request) == {
        "page": ["0"], "page_size": ["100"], "order_by": ["-created"], "status": ["QUEUED", "RUNNING"],
        "created_after": ["2025-12-31T23:59:59Z"],
    }  # fmt: skip
    assert params(a.list_request(key_of(a), query(statuses=frozenset(a.statuses.values())), "3")) == {
        "page": ["3"], "page_size": ["100"], "order_by": ["-created"]
    }  # fmt: skip
    item = {"id": "00000000-0000-4000-8000-000000000001", "status": "RUNNING", "created_at": T0,
            "total_requests": "9", "succeeded_requests": 1, "failed_requests": 0,
            "metadata": {"team": "search"}}  # fmt: skip
    batches, token = a.parse_list({"object": "list", "data": [item] * 100, "total": 250}, page_token="1", query=q)
    assert token == "2" and batches[0].metadata == {"team": "search"} and batches[0].state.counts.total == 9
    assert a.parse_list({"data": [item], "total": 250}, page_token="2", query=q)[1] is None
    assert a.parse_list({"data": [], "total": 250}, page_token="0", query=q)[1] is None
    assert a.parse_list({"data": [item] * 100}, page_token=None, query=q)[1] == "1"  # no total: a full page
    assert a.lists_newest_first and a.keeps_metadata


def test_cohere_pages_by_token():
    a = adapter("cohere")
    assert params(a.list_request(key_of(a), query(), "t")) == {"page_size": ["1000"], "page_token": ["t"]}
    page = {"batches": [{"id": "c1", "status": "BATCH_STATUS_IN_PROGRESS", "created_at": "2026-01-01T00:00:00.000Z",
                         "num_records": "12", "num_successful_records": 2}], "next_page_token": "n"}  # fmt: skip
    (batch,), token = a.parse_list(page)
    assert (batch.state.status, batch.state.created_at, batch.state.counts.total, token) == ("in_progress", T0, 12, "n")
    assert a.parse_list({"batches": []}) == ([], None)


def test_together_lists_one_plain_array():
    a = adapter("together")
    request = a.list_request(key_of(a), query(), None)
    assert (path(request), params(request)) == ("/together/v1/batches", {})
    page = [
        {"id": "t1", "status": "IN_PROGRESS", "created_at": "2026-01-01T00:00:00.000000Z"},
        {"id": "t2", "status": "CANCELLED", "created_at": "2026-01-01T00:00:00Z", "completed_at": None},
    ]
    (running, cancelled), token = a.parse_list(page)
    assert (running.state.status, running.state.created_at, cancelled.state.status, token) == (
        "in_progress", T0, "cancelled", None
    )  # fmt: skip
    with pytest.raises(UpstreamUnavailable):
        a.parse_list({"data": page})


def test_xai_pages_by_pagination_token_and_derives_the_status():
    a = adapter("xai")
    assert params(a.list_request(key_of(a), query(), "p")) == {"limit": ["100"], "pagination_token": ["p"]}
    page = {"batches": [
        {"batch_id": "batch_1", "create_time": "2026-01-01T00:00:00Z",
         "state": {"num_requests": "5", "num_pending": "5"}},
        {"batch_id": "batch_2", "create_time": "2026-01-01T00:00:00Z", "cancel_time": "2026-01-01T00:05:00Z",
         "state": {"num_requests": 5, "num_cancelled": 5}},
    ], "pagination_token": "next"}  # fmt: skip
    (running, cancelled), token = a.parse_list(page)
    assert (running.state.status, running.state.created_at, cancelled.state.status, token) == (
        "in_progress", T0, "cancelled", "next"
    )  # fmt: skip
    assert a.parse_list({"batches": []}) == ([], None)


# --- the listing loop ------------------------------------------------------------------------------


class FakeExecutor:
    """Answers list pages from memory by the request's `after` cursor (an OpenAI-shaped account)."""

    def __init__(self, pages: dict[str | None, object], status: int = 200) -> None:
        self.pages = pages
        self.status = status
        self.sent: list[UpstreamRequest] = []

    async def send(self, request, deadline, record=None):
        self.sent.append(request)
        after = params(request).get("after", [None])[0]
        body = orjson.dumps(self.pages[after])
        return UpstreamResponse(self.status, {"Content-Type": "application/json"}, body)

    async def close(self):
        pass


def page(ids: list[tuple[str, int, str]], more: bool) -> dict:
    data = [{"id": i, "status": status, "created_at": created} for i, created, status in ids]
    return {"object": "list", "data": data, "has_more": more, "last_id": data[-1]["id"] if data else None}


async def collect(a, executor, q, record=None):
    call = CallContext(record=record, deadline=asyncio.get_running_loop().time() + 30)
    return [batch async for batch in list_batches(a, executor, key_of(a), q, call)]


async def test_listing_follows_pages_to_the_end_and_yields_only_matches():
    a = adapter("openai")
    executor = FakeExecutor({
        None: page([("b5", T0 + 5, "in_progress"), ("b4", T0 + 4, "completed")], True),
        "b4": page([("b3", T0 + 3, "validating"), ("b2", T0 + 2, "in_progress")], True),
        "b2": page([("b1", T0 + 1, "in_progress")], False),
    })  # fmt: skip
    found = await collect(a, executor, query())
    assert [b.state.id for b in found] == ["b5", "b3", "b2", "b1"]
    assert all(r.method == "GET" and r.operation == "list" for r in executor.sent) and len(executor.sent) == 3


async def test_newest_first_listing_stops_after_the_page_that_passes_created_after():
    a = adapter("openai")
    executor = FakeExecutor({
        None: page([("b5", T0 + 5, "in_progress"), ("b4", T0 + 4, "in_progress")], True),
        "b4": page([("b3", T0 + 3, "in_progress"), ("b2", T0 + 2, "in_progress")], True),
        "b2": page([("b1", T0 + 1, "in_progress")], False),
    })  # fmt: skip
    found = await collect(a, executor, query(created_after=T0 + 3))
    assert [b.state.id for b in found] == ["b5", "b4", "b3"] and len(executor.sent) == 2
    # The same pages from a provider that documents no order are read to the end.
    groq = adapter("groq")
    executor.sent.clear()
    assert len(await collect(groq, executor, query(created_after=T0 + 3))) == 3 and len(executor.sent) == 3


async def test_listing_ends_at_a_repeated_token_and_yields_each_batch_once():
    a = adapter("openai")
    executor = FakeExecutor({
        None: page([("b2", T0, "in_progress"), ("b1", T0, "in_progress")], True),
        "b1": page([("b1", T0, "in_progress")], True),  # a provider that ignores the cursor past the end
    })  # fmt: skip
    found = await collect(a, executor, query())
    assert [b.state.id for b in found] == ["b2", "b1"] and len(executor.sent) == 2


async def test_listing_leaves_out_ids_a_cancel_would_refuse():
    a = adapter("openai")
    executor = FakeExecutor({None: page([("../x", T0, "in_progress"), ("ok", T0, "in_progress")], False)})
    assert [b.state.id for b in await collect(a, executor, query())] == ["ok"]


async def test_a_provider_error_answer_raises_the_adapters_error():
    a = adapter("openai")
    body = {
        "error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}
    }
    with pytest.raises(ProviderError) as raised:
        await collect(a, FakeExecutor({None: body}, status=401), query())
    assert (raised.value.status_code, raised.value.code) == (401, "invalid_api_key")
    with pytest.raises(UpstreamUnavailable):
        await collect(a, FakeExecutor({None: {"object": "list", "data": "x"}}), query())


async def test_an_adapter_that_cannot_list_is_unsupported():
    class NoList(Adapter):
        name = "nolist"

    with pytest.raises(UnsupportedOperation):
        await collect(NoList(adapter("openai").config), FakeExecutor({}), query())


async def test_the_request_id_travels_where_the_provider_takes_one():
    from service.infra.observability import CallRecord

    a = adapter("openai")
    executor = FakeExecutor({None: page([], False)})
    await collect(a, executor, query(), record=CallRecord("req-123", "op"))
    assert executor.sent[0].headers["X-Client-Request-Id"] == "req-123"
