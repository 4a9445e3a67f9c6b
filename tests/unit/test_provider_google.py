"""Gemini and Vertex adapters: parsing of recorded answers, status tables, ids, request building,
error envelopes and the Vertex access-token cache (no network)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import threading
import time

import orjson
import pytest

from service.domain.errors import DeadlineExceeded, GatewayError, InvalidRequest, ProviderError, UpstreamUnavailable
from service.infra.providers import google_auth as g
from service.infra.providers.base import UpstreamResponse, after_accepted_cancel
from service.infra.providers.catalog import parse_config
from service.infra.providers.gemini import GeminiAdapter
from service.infra.providers.google import BATCH_STATES, JOB_STATES
from service.infra.providers.vertex import VertexAdapter, VertexJobRef

SA_EMAIL = "svc@proj-a.iam.gserviceaccount.com"
PRIVATE_KEY_MARKER = "MIIE"  # every PKCS#8 RSA key body starts like this


def service_account(email: str = SA_EMAIL, token_uri: str = "https://oauth2.example.test/token") -> dict:
    from sandbox.google import service_account_info

    return service_account_info(email, token_uri)


def gemini(network: dict | None = None, key: str = "AIza-test-key") -> tuple[GeminiAdapter, object]:
    block = {"keys": [{"value": key, "use_for_batch_api": True}], "network_config": network or {}}
    config = parse_config({"providers": {"gemini": block}}, env={})
    pc = config.providers["gemini"]
    return GeminiAdapter(pc), pc.keys[0]


def vertex(
    network: dict | None = None, project: str = "proj-a", region: str = "europe-west4", **creds
) -> tuple[VertexAdapter, object]:
    vkc = {"project_id": project, "region": region, "auth_credentials": service_account(**creds)}
    block = {"keys": [{"use_for_batch_api": True, "vertex_key_config": vkc}], "network_config": network or {}}
    config = parse_config({"providers": {"vertex": block}}, env={})
    pc = config.providers["vertex"]
    return VertexAdapter(pc), pc.keys[0]


def response(status: int, body, content_type: str = "application/json") -> UpstreamResponse:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return UpstreamResponse(status, {"Content-Type": content_type}, raw)


# --- Gemini: parsing ---------------------------------------------------------------------------------

GEMINI_RUNNING = {
    "name": "batches/abc123",
    "metadata": {
        "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
        "model": "models/gemini-2.5-flash",
        "displayName": "nightly",
        "createTime": "2025-07-01T10:00:00.123456789Z",
        "updateTime": "2025-07-01T10:05:00.123Z",
        "batchStats": {
            "requestCount": "40",
            "successfulRequestCount": "12",
            "failedRequestCount": "3",
            "pendingRequestCount": "25",
        },
        "state": "BATCH_STATE_RUNNING",
        "name": "batches/abc123",
    },
    "done": False,
}
GEMINI_CANCELLED = {
    "name": "batches/abc123",
    "metadata": {
        **GEMINI_RUNNING["metadata"],
        "state": "BATCH_STATE_CANCELLED",
        "endTime": "2025-07-01T10:06:07Z",
        "updateTime": "2025-07-01T10:06:09.500Z",
        # proto3 JSON leaves zero counts out
        "batchStats": {"requestCount": "40", "successfulRequestCount": "12", "pendingRequestCount": "28"},
    },
    "done": True,
    "error": {"code": 1, "message": "Batch was cancelled."},
}
T_CANCELLED = int(datetime.datetime(2025, 7, 1, 10, 6, 7, tzinfo=datetime.UTC).timestamp())


def test_gemini_running_right_after_the_cancel_is_cancelling_with_string_counts():
    adapter, _ = gemini()
    state = adapter.parse_batch("batches/abc123", GEMINI_RUNNING)
    assert state.status == "in_progress"  # what Gemini says; the use case reports it as cancelling
    assert after_accepted_cancel(state.status) == "cancelling"
    c = state.counts
    assert (c.total, c.completed, c.failed, c.succeeded, c.pending) == (40, 12, 3, 12, 25)
    assert (c.expired, c.canceled) == (None, None)
    assert (state.cancelling_at, state.cancelled_at) == (None, None)


def test_gemini_cancelled_uses_end_time_and_reads_omitted_counts_as_zero():
    adapter, _ = gemini()
    state = adapter.parse_batch("x", GEMINI_CANCELLED)
    assert state.status == "cancelled"
    assert state.cancelled_at == T_CANCELLED
    assert (state.counts.total, state.counts.failed, state.counts.pending) == (40, 0, 28)


def test_gemini_cancelled_without_end_time_falls_back_to_update_time():
    meta = {k: v for k, v in GEMINI_CANCELLED["metadata"].items() if k != "endTime"}
    meta["updateTime"] = "2025-07-01T10:06:07.999999999+00:00"
    assert gemini()[0].parse_batch("x", {"metadata": meta}).cancelled_at == T_CANCELLED


@pytest.mark.parametrize(
    "answer",
    [
        {**GEMINI_CANCELLED["metadata"], "state": "JOB_STATE_CANCELLED"},  # the batch at the top level
        {"name": "batches/abc123", "done": True, "response": {**GEMINI_CANCELLED["metadata"]}},
        {"name": "batches/abc123", "metadata": {**GEMINI_CANCELLED["metadata"], "state": "Batch_State_Cancelled"}},
    ],
    ids=["top-level-job-state", "under-response", "odd-case"],
)
def test_gemini_batch_is_found_in_every_shape(answer):
    state = gemini()[0].parse_batch("x", answer)
    assert (state.status, state.cancelled_at, state.counts.total) == ("cancelled", T_CANCELLED, 40)


def test_gemini_missing_stats_and_times_stay_unknown():
    state = gemini()[0].parse_batch("x", {"metadata": {"state": "BATCH_STATE_CANCELLED"}})
    assert (state.status, state.counts, state.cancelled_at) == ("cancelled", None, None)


def test_gemini_unreadable_counts_are_unknown_not_zero():
    meta = {"state": "BATCH_STATE_SUCCEEDED", "batchStats": {"requestCount": "n/a", "successfulRequestCount": 7}}
    counts = gemini()[0].parse_batch("x", {"metadata": meta}).counts
    assert (counts.total, counts.completed) == (None, 7)


def test_gemini_unspecified_and_new_states_pass_through_lowercased():
    adapter, _ = gemini()
    unspecified = adapter.parse_batch("x", {"metadata": {"state": "BATCH_STATE_UNSPECIFIED"}})
    assert unspecified.status == "batch_state_unspecified"
    assert adapter.parse_batch("x", {"metadata": {"state": "BATCH_STATE_PAUSED_FOR_QUOTA"}}).status == (
        "batch_state_paused_for_quota"
    )


def test_gemini_done_operation_without_metadata_cancelled_code():
    state = gemini()[0].parse_batch("x", {"name": "batches/x", "done": True, "error": {"code": 1, "message": "x"}})
    assert state.status == "cancelled"


@pytest.mark.parametrize("answer", [{}, {"name": "batches/x", "done": False}, [], "ok", {"metadata": {"state": ""}}])
def test_gemini_answer_without_a_state_is_an_upstream_failure(answer):
    with pytest.raises(UpstreamUnavailable):
        gemini()[0].parse_batch("x", answer)


# --- status tables -----------------------------------------------------------------------------------

GEMINI_TABLE = {
    "BATCH_STATE_PENDING": "validating",
    "BATCH_STATE_RUNNING": "in_progress",
    "BATCH_STATE_SUCCEEDED": "completed",
    "BATCH_STATE_FAILED": "failed",
    "BATCH_STATE_CANCELLED": "cancelled",
    "BATCH_STATE_EXPIRED": "expired",
}
VERTEX_TABLE = {
    "JOB_STATE_QUEUED": "validating",
    "JOB_STATE_PENDING": "validating",
    "JOB_STATE_RUNNING": "in_progress",
    "JOB_STATE_SUCCEEDED": "completed",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_CANCELLING": "cancelling",
    "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_PAUSED": "in_progress",
    "JOB_STATE_EXPIRED": "expired",
    "JOB_STATE_UPDATING": "in_progress",
    "JOB_STATE_PARTIALLY_SUCCEEDED": "completed",
}


def test_status_tables_are_exactly_the_documented_mapping():
    assert dict(BATCH_STATES) == {k.lower(): v for k, v in GEMINI_TABLE.items()}
    assert dict(JOB_STATES) == {k.lower(): v for k, v in VERTEX_TABLE.items()}
    assert GeminiAdapter.statuses == {**BATCH_STATES, **JOB_STATES}  # Gemini also takes JOB_STATE_*
    assert VertexAdapter.statuses == JOB_STATES


@pytest.mark.parametrize(("raw", "unified"), [*GEMINI_TABLE.items(), *VERTEX_TABLE.items()])
def test_status_table_entries(raw, unified):
    assert gemini()[0].status(raw) == unified
    if raw.startswith("JOB_"):
        assert vertex()[0].status(raw) == unified


@pytest.mark.parametrize("raw", ["BATCH_STATE_PENDING", "BATCH_STATE_RUNNING", "JOB_STATE_QUEUED", "JOB_STATE_PAUSED"])
def test_unfinished_states_after_an_accepted_cancel_are_cancelling(raw):
    assert after_accepted_cancel(gemini()[0].status(raw)) == "cancelling"


# --- Gemini: ids and requests ------------------------------------------------------------------------


@pytest.mark.parametrize("batch_id", ["batches/abc123", "batches-abc123", "abc123"])
def test_gemini_id_forms_address_the_same_batch(batch_id):
    adapter, key = gemini()
    ref = adapter.parse_id(batch_id)
    assert ref == "abc123"
    url = adapter.cancel_request(key, ref).url
    assert url == "https://generativelanguage.googleapis.com/v1beta/batches/abc123:cancel"


@pytest.mark.parametrize(
    "batch_id",
    [
        "batches/a/b",
        "batches/../x",
        "batches/",
        "..",
        "a?b",
        "a#b",
        "a%2Fb",
        "a\\b",
        "a b",
        "operations/x",
        "",
        "x\x00",
    ],  # fmt: skip
)
def test_gemini_unsafe_ids_are_refused(batch_id):
    with pytest.raises(InvalidRequest) as info:
        gemini()[0].parse_id(batch_id)
    assert info.value.param == "batch_id"


def test_gemini_requests_carry_the_key_header_and_no_body():
    extra = {"X-Goog-Api-Key": "evil", "x-trace": "1"}
    adapter, key = gemini({"base_url": "http://sim/gemini", "extra_headers": extra})
    cancel = adapter.cancel_request(key, "b:1")
    assert (cancel.method, cancel.url, cancel.body) == ("POST", "http://sim/gemini/v1beta/batches/b%3A1:cancel", None)
    assert cancel.headers == {"x-trace": "1", "Accept": "application/json", "x-goog-api-key": "AIza-test-key"}
    read = adapter.status_request(key, "b:1")
    assert (read.method, read.url, read.headers) == ("GET", "http://sim/gemini/v1beta/batches/b%3A1", cancel.headers)
    assert "Authorization" not in cancel.headers


# --- Vertex: parsing ---------------------------------------------------------------------------------

VERTEX_CANCELLING = {
    "name": "projects/123456789012/locations/europe-west4/batchPredictionJobs/456",
    "displayName": "nightly",
    "model": "publishers/google/models/gemini-2.5-flash",
    "state": "JOB_STATE_CANCELLING",
    "completionStats": {"successfulCount": "30", "failedCount": "2", "incompleteCount": "68"},
    "createTime": "2025-07-01T10:00:00.123456Z",
    "startTime": "2025-07-01T10:00:30.5Z",
    "updateTime": "2025-07-01T10:06:07.000001Z",
    "labels": {},
}


def test_vertex_cancelling_reports_update_time_as_cancelling_at():
    state = vertex()[0].parse_batch("456", VERTEX_CANCELLING)
    assert (state.status, state.cancelling_at, state.cancelled_at) == ("cancelling", T_CANCELLED, None)
    c = state.counts
    assert (c.total, c.completed, c.failed, c.succeeded, c.pending) == (100, 30, 2, 30, 68)


def test_vertex_cancelled_reports_end_time():
    job = {**VERTEX_CANCELLING, "state": "JOB_STATE_CANCELLED", "endTime": "2025-07-01T10:06:07Z",
           "updateTime": "2025-07-01T11:00:00Z", "error": {"code": 1, "message": "CANCELED"}}  # fmt: skip
    state = vertex()[0].parse_batch("456", job)
    assert (state.status, state.cancelling_at, state.cancelled_at) == ("cancelled", None, T_CANCELLED)


def test_vertex_unknown_incomplete_count_leaves_total_and_pending_unknown():
    job = {**VERTEX_CANCELLING, "completionStats": {"successfulCount": "5", "incompleteCount": "-1"}}
    c = vertex()[0].parse_batch("456", job).counts
    assert (c.total, c.completed, c.failed, c.pending) == (None, 5, 0, None)


def test_vertex_running_after_cancel_is_cancelling_and_finished_states_are_kept():
    adapter, _ = vertex()
    assert after_accepted_cancel(adapter.parse_batch("1", {"state": "JOB_STATE_RUNNING"}).status) == "cancelling"
    assert adapter.parse_batch("1", {"state": "JOB_STATE_PARTIALLY_SUCCEEDED"}).status == "completed"
    state = adapter.parse_batch("1", {"state": "JOB_STATE_SUCCEEDED", "completionStats": {}})
    assert (state.status, state.counts.total, state.counts.pending) == ("completed", 0, 0)
    assert adapter.parse_batch("1", {"state": "JOB_STATE_UNSPECIFIED"}).status == "job_state_unspecified"


def test_vertex_missing_stats_are_unknown():
    state = vertex()[0].parse_batch("1", {"state": "JOB_STATE_CANCELLED"})
    assert (state.counts, state.cancelled_at) == (None, None)


@pytest.mark.parametrize("answer", [{}, {"name": "x"}, None, {"state": None}])
def test_vertex_answer_without_a_job_is_an_upstream_failure(answer):
    with pytest.raises(UpstreamUnavailable):
        vertex()[0].parse_batch("1", answer)


# --- Vertex: ids and requests ------------------------------------------------------------------------

NAME = "projects/proj-b/locations/us-east1/batchPredictionJobs/789"


def b64(text: str, pad: bool = False) -> str:
    encoded = base64.urlsafe_b64encode(text.encode()).decode()
    return encoded if pad else encoded.rstrip("=")


@pytest.mark.parametrize("batch_id", [NAME, b64(NAME), b64(NAME, pad=True)])
def test_vertex_full_names_in_every_form_use_their_own_project_and_location(batch_id):
    adapter, key = vertex(project="proj-a", region="europe-west4")
    ref = adapter.parse_id(batch_id)
    assert ref == VertexJobRef("789", "proj-b", "us-east1")
    request = adapter.cancel_request(key, ref)
    assert request.url == f"https://us-east1-aiplatform.googleapis.com/v1/{NAME}:cancel"


def test_vertex_bare_id_uses_the_keys_project_and_region():
    adapter, key = vertex(project="proj-a", region="europe-west4")
    ref = adapter.parse_id("456")
    assert ref == VertexJobRef("456")
    cancel = adapter.cancel_request(key, ref)
    assert cancel.url == (
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/proj-a/locations/europe-west4/"
        "batchPredictionJobs/456:cancel"
    )
    assert (cancel.method, cancel.body, cancel.headers["Content-Type"]) == ("POST", b"{}", "application/json")
    assert "Authorization" not in cancel.headers  # added by prepare()
    read = adapter.status_request(key, ref)
    assert (read.method, read.url, read.body) == ("GET", cancel.url.removesuffix(":cancel"), None)
    assert "Content-Type" not in read.headers


def test_vertex_global_location_and_base_url_override():
    adapter, key = vertex(region="global")
    assert adapter.cancel_request(key, VertexJobRef("1")).url.startswith("https://aiplatform.googleapis.com/v1/")
    adapter, key = vertex({"base_url": "http://sim/vertex"})
    assert adapter.cancel_request(key, adapter.parse_id(NAME)).url == f"http://sim/vertex/v1/{NAME}:cancel"


def test_vertex_a_bare_id_that_happens_to_be_base64_of_nothing_useful_stays_bare():
    adapter, _ = vertex()
    assert adapter.parse_id("1234567890") == VertexJobRef("1234567890")
    assert adapter.parse_id(b64("hello/world")) == VertexJobRef(b64("hello/world"))


@pytest.mark.parametrize(
    "batch_id",
    [
        "projects/p/locations/l/models/1",
        "projects/p/locations/us-east1/batchPredictionJobs/1/extra",
        "projects/p/locations/US_EAST/batchPredictionJobs/1",  # would go into the host name
        "projects/p/locations/evil.com#/batchPredictionJobs/1",
        "projects/../locations/us-east1/batchPredictionJobs/1",
        "projects/p/locations/us-east1/batchPredictionJobs/..",
        "projects/p%2F/locations/us-east1/batchPredictionJobs/1",
        b64("projects/p/locations/us-east1/batchPredictionJobs/a?b"),
        "a/b",
        "..",
        "1?x",
        "",
    ],
)
def test_vertex_unsafe_ids_are_refused(batch_id):
    with pytest.raises(InvalidRequest) as info:
        vertex()[0].parse_id(batch_id)
    assert info.value.param == "batch_id"


def test_vertex_does_not_take_direct_keys():
    assert VertexAdapter.accepts_direct_keys is False
    assert GeminiAdapter.accepts_direct_keys is True


# --- errors ------------------------------------------------------------------------------------------

API_KEY_INVALID = {
    "error": {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
             "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
            {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
             "message": "API key not valid."},
        ],
    }
}  # fmt: skip


def test_bad_gemini_key_keeps_400_but_says_authentication():
    err = gemini()[0].parse_error(response(400, API_KEY_INVALID))
    assert isinstance(err, ProviderError) and not err.is_bifrost_error
    assert (err.status_code, err.type, err.code) == (400, "authentication_error", "INVALID_ARGUMENT")
    assert (err.message, err.provider) == ("API key not valid. Please pass a valid API key.", "gemini")


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, {"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}},
         (404, "not_found_error", "NOT_FOUND", "Requested entity was not found.")),
        (429, {"error": {"code": 429, "message": "You exceeded your current quota.", "status": "RESOURCE_EXHAUSTED"}},
         (429, "rate_limit_error", "RESOURCE_EXHAUSTED", "You exceeded your current quota.")),
        (401, {"error": {"code": 401, "message": "Invalid credentials.", "status": "UNAUTHENTICATED"}},
         (401, "authentication_error", "UNAUTHENTICATED", "Invalid credentials.")),
        (403, {"error": {"code": 403, "message": "Permission denied", "status": "PERMISSION_DENIED"}},
         (403, "permission_error", "PERMISSION_DENIED", "Permission denied")),
        (400, {"error": {"code": 400, "message": "Job is JOB_STATE_SUCCEEDED.", "status": "FAILED_PRECONDITION"}},
         (409, "invalid_request_error", "FAILED_PRECONDITION", "Job is JOB_STATE_SUCCEEDED.")),
        (503, [{"error": {"code": 503, "message": "The service is currently unavailable.", "status": "UNAVAILABLE"}}],
         (503, "api_error", "UNAVAILABLE", "The service is currently unavailable.")),
        (500, {"error": {"code": 500, "message": "boom"}}, (500, "api_error", None, "boom")),
    ],
    ids=["not-found", "rate-limited", "unauthenticated", "permission", "finished-is-409", "list-wrapped", "no-status"],
)  # fmt: skip
def test_google_error_envelope(status, body, expected):
    for adapter in (gemini()[0], vertex()[0]):
        err = adapter.parse_error(response(status, body))
        assert (err.status_code, err.type, err.code, err.message) == expected


# --- Vertex: access tokens ---------------------------------------------------------------------------


class FakeCredentials:
    """Stands in for google.oauth2.service_account.Credentials: counts refreshes, records the thread."""

    def __init__(self, lifetime: float = 3600, delay: float = 0.0, error: Exception | None = None) -> None:
        self.lifetime, self.delay, self.error = lifetime, delay, error
        self.refreshes = 0
        self.threads: set[int] = set()
        self.token = None
        self.expiry = None

    def refresh(self, request) -> None:
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        self.refreshes += 1
        self.token = f"tok-{self.refreshes}"
        utcnow = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        self.expiry = utcnow + datetime.timedelta(seconds=self.lifetime)


@pytest.fixture
def fake_credentials(monkeypatch):
    from google.oauth2 import service_account as sa

    made: list[FakeCredentials] = []
    settings: dict = {}

    def factory(info, scopes=None):
        assert scopes == [g.CLOUD_PLATFORM_SCOPE]
        assert {"client_email", "private_key", "token_uri"} <= info.keys()
        made.append(FakeCredentials(**settings))
        return made[-1]

    monkeypatch.setattr(sa.Credentials, "from_service_account_info", staticmethod(factory))
    return made, settings


async def test_token_is_minted_once_under_concurrency_off_the_event_loop(fake_credentials):
    made, settings = fake_credentials
    settings["delay"] = 0.2
    adapter, key = vertex()
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.ensure_future(ticker())
    try:
        tokens = await asyncio.gather(*(adapter.access_token(key) for _ in range(20)))
    finally:
        task.cancel()
    assert set(tokens) == {"tok-1"}
    assert len(made) == 1 and made[0].refreshes == 1
    assert threading.get_ident() not in made[0].threads  # minted in a worker thread
    assert ticks >= 5  # the loop kept running while the token was minted


async def test_prepare_adds_the_bearer_token_and_reuses_it(fake_credentials):
    made, _ = fake_credentials
    adapter, key = vertex()
    ref = adapter.parse_id("1")
    first = await adapter.prepare(key, adapter.cancel_request(key, ref))
    second = await adapter.prepare(key, adapter.status_request(key, ref))
    assert first.headers["Authorization"] == second.headers["Authorization"] == "Bearer tok-1"
    assert made[0].refreshes == 1


async def test_token_is_replaced_shortly_before_expiry(fake_credentials, monkeypatch):
    made, settings = fake_credentials
    settings["lifetime"] = 3600
    adapter, key = vertex()
    assert await adapter.access_token(key) == "tok-1"
    start = time.time()
    monkeypatch.setattr(g, "time", lambda: start + 3600 - g.TOKEN_REFRESH_MARGIN_S - 5)
    assert await adapter.access_token(key) == "tok-1"
    monkeypatch.setattr(g, "time", lambda: start + 3600 - g.TOKEN_REFRESH_MARGIN_S + 5)
    assert await adapter.access_token(key) == "tok-2"


async def test_short_lived_tokens_are_cached_for_half_their_lifetime(fake_credentials, monkeypatch):
    made, settings = fake_credentials
    settings["lifetime"] = 0.4
    adapter, key = vertex()
    start = time.time()
    assert [await adapter.access_token(key) for _ in range(3)] == ["tok-1"] * 3
    monkeypatch.setattr(g, "time", lambda: start + 0.25)  # past half of the 0.4 s lifetime
    assert await adapter.access_token(key) == "tok-2"


async def test_a_401_from_the_api_drops_the_cached_token(fake_credentials):
    adapter, key = vertex()
    assert await adapter.access_token(key) == "tok-1"
    adapter.parse_error(response(401, {"error": {"code": 401, "message": "x", "status": "UNAUTHENTICATED"}}))
    assert await adapter.access_token(key) == "tok-2"


async def test_refused_credentials_are_401_without_key_material(fake_credentials):
    from google.auth import exceptions

    made, settings = fake_credentials
    data = {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
    settings["error"] = exceptions.RefreshError("invalid_grant: Invalid JWT Signature.", data, retryable=False)
    adapter, key = vertex()
    with pytest.raises(ProviderError) as info:
        await adapter.access_token(key)
    err = info.value
    assert (err.status_code, err.type, err.code) == (401, "authentication_error", "invalid_grant")
    assert "Invalid JWT Signature." in err.message and PRIVATE_KEY_MARKER not in err.message


async def test_token_endpoint_failures_are_502(fake_credentials):
    from google.auth import exceptions

    made, settings = fake_credentials
    settings["error"] = exceptions.RefreshError("<html>oops</html>", retryable=True)
    adapter, key = vertex()
    with pytest.raises(ProviderError) as info:
        await adapter.access_token(key)
    assert info.value.status_code == 502 and "<html>" not in info.value.message
    settings["error"] = exceptions.TransportError("Connection refused to https://oauth2.example.test/token")
    adapter, key = vertex()
    with pytest.raises(UpstreamUnavailable):
        await adapter.access_token(key)


async def test_slow_mint_is_bounded_by_the_provider_timeout(fake_credentials):
    made, settings = fake_credentials
    settings["delay"] = 0.5
    adapter, key = vertex({"default_request_timeout_in_seconds": 0.05})
    with pytest.raises(DeadlineExceeded):
        await adapter.access_token(key)


async def test_unloadable_private_key_is_401_and_never_quoted():
    adapter, key = vertex()
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEnotakey\n-----END PRIVATE KEY-----\n"
    broken = {**key.settings.auth_credentials, "private_key": pem}
    key = dataclasses.replace(key, settings=dataclasses.replace(key.settings, auth_credentials=broken))
    with pytest.raises(GatewayError) as info:
        await adapter.access_token(key)
    assert (info.value.status_code, info.value.code) == (401, "invalid_credentials")
    assert "MIIE" not in info.value.message and "BEGIN" not in info.value.message
