"""The sandbox's list endpoints (each provider's own list call and wire format, driven where there
is one by the provider's official SDK), per-key accounts, bulk seeding, the demo mix and the
cancel rate limit."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from time import time

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from sandbox import SIMULATOR_KEY, build_app
from sandbox.bedrock import BedrockSim
from sandbox.core import RateLimit, page_token, parse_page_token
from sandbox.filters import FilterError, Job, parse_filter
from sandbox.google import SANDBOX_PROJECT, SANDBOX_SERVICE_ACCOUNT, _state
from sandbox.seeding import DEMO_MIX, generate, seed_demo
from sandbox.server import SIMULATORS

KEY_A, KEY_B = "key-a-0000000000000", "key-b-0000000000000"
OTHER_SA = "other@batchgate-sandbox.iam.gserviceaccount.com"
BEDROCK_A = BedrockSim.default_key
BEDROCK_B = "AKIASANDBOXBEDROCK02:other/Secret0Key000000000000000000000000"
KEYS = {sim.name: [KEY_A, KEY_B] for sim in SIMULATORS}
KEYS["bedrock"] = [BEDROCK_A, BEDROCK_B]
KEYS["vertex"] = [SANDBOX_SERVICE_ACCOUNT, OTHER_SA]
NOW = 1_800_000_000


@asynccontextmanager
async def sandbox(**options):
    async with TestClient(TestServer(build_app(keys=KEYS, **options))) as client:
        yield client, client.app[SIMULATOR_KEY]


def seed_five(sim, provider: str, **fields) -> list[str]:
    """Five batches b0..b4 created a minute apart (b4 newest); returns their ids oldest first."""
    ids = [f"b{i}" for i in range(5)]
    for i, batch_id in enumerate(ids):
        sim.seed(provider, batch_id, created_at=NOW + 60 * i, **fields)
    return ids


async def get(client, path: str, headers: dict | None = None, **params):
    async with client.get(path, headers=headers or {}, params=params) as response:
        return response.status, await response.json(), response.headers


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


# --- OpenAI, Azure, Groq --------------------------------------------------------------------------


async def test_openai_list_pages_newest_first_to_the_end():
    async with sandbox() as (client, sim):
        seed_five(sim, "openai", metadata={"team": "search"})
        seen, after = [], None
        while True:
            params = {"limit": "2", **({"after": after} if after else {})}
            status, page, _ = await get(client, "/openai/v1/batches", bearer(KEY_A), **params)
            assert status == 200 and page["object"] == "list"
            assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][-1]["id"]
            seen += [batch["id"] for batch in page["data"]]
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert seen == ["b4", "b3", "b2", "b1", "b0"]
        assert page["data"][-1]["metadata"] == {"team": "search"} and page["data"][-1]["created_at"] == NOW
        listed = [call for call in sim.calls("openai") if call["method"] == "GET"]
        assert [call["query"] for call in listed] == [
            {"limit": "2"}, {"limit": "2", "after": "b3"}, {"limit": "2", "after": "b1"}
        ]  # fmt: skip


async def test_openai_list_default_limit_and_official_sdk_auto_pagination():
    import openai

    async with sandbox() as (client, sim):
        sim.seed_many("openai", [{"id": f"batch_{i:03}", "created_at": NOW + i} for i in range(45)])
        status, page, _ = await get(client, "/openai/v1/batches", bearer(KEY_A))
        assert (status, len(page["data"]), page["has_more"]) == (200, 20, True)
        sdk = openai.AsyncOpenAI(api_key=KEY_A, base_url=str(client.make_url("/openai/v1")), max_retries=0)
        ids = [batch.id async for batch in sdk.batches.list(limit=100)]
        assert ids == [f"batch_{i:03}" for i in reversed(range(45))]


@pytest.mark.parametrize(
    ("limit", "code", "message"),
    [
        ("101", "integer_above_max_value", "Expected a value <= 100, but got 101 instead."),
        ("-1", "integer_below_min_value", "Expected a value >= 0, but got -1 instead."),
        ("ten", "invalid_type", "expected an integer, but got 'ten' instead."),
    ],
)
async def test_openai_limit_out_of_range_is_openais_400(limit, code, message):
    async with sandbox() as (client, sim):
        status, body, _ = await get(client, "/openai/v1/batches", bearer(KEY_A), limit=limit)
        assert status == 400
        assert body["error"]["code"] == code and body["error"]["param"] == "limit"
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"].endswith(message)


async def test_openai_limit_zero_is_an_empty_page_and_unknown_cursor_ends():
    async with sandbox() as (client, sim):
        seed_five(sim, "openai")
        status, page, _ = await get(client, "/openai/v1/batches", bearer(KEY_A), limit="0")
        assert (status, page["data"], page["first_id"], page["has_more"]) == (200, [], None, True)
        status, page, _ = await get(client, "/openai/v1/batches", bearer(KEY_A), after="nope")
        assert (status, page["data"], page["has_more"]) == (200, [], False)


async def test_accounts_list_read_and_cancel_only_their_own_batches():
    async with sandbox() as (client, sim):
        sim.seed("openai", "mine", owner=KEY_A, created_at=NOW)
        sim.seed("openai", "theirs", owner=KEY_B, created_at=NOW + 1)
        sim.seed("openai", "shared", created_at=NOW + 2)
        _, page_a, _ = await get(client, "/openai/v1/batches", bearer(KEY_A))
        _, page_b, _ = await get(client, "/openai/v1/batches", bearer(KEY_B))
        assert [b["id"] for b in page_a["data"]] == ["shared", "mine"]
        assert [b["id"] for b in page_b["data"]] == ["shared", "theirs"]
        status, body, _ = await get(client, "/openai/v1/batches/theirs", bearer(KEY_A))
        assert status == 404 and body["error"]["message"] == "No batch found with id 'theirs'."
        async with client.post("/openai/v1/batches/theirs/cancel", headers=bearer(KEY_A)) as response:
            assert response.status == 404
        assert sim.batch("openai", "theirs").status == "in_progress"
        async with client.post("/openai/v1/batches/theirs/cancel", headers=bearer(KEY_B)) as response:
            assert (response.status, (await response.json())["status"]) == (200, "cancelling")
        # Another key's batch is no cursor either.
        _, page, _ = await get(client, "/openai/v1/batches", bearer(KEY_A), after="theirs")
        assert page["data"] == []


async def test_owned_ids_are_not_auto_created_for_another_key():
    async with sandbox(auto_create=True) as (client, sim):
        sim.seed("openai", "owned", owner=KEY_B)
        async with client.post("/openai/v1/batches/owned/cancel", headers=bearer(KEY_A)) as response:
            assert response.status == 404
        _, page, _ = await get(client, "/openai/v1/batches", bearer(KEY_A))
        assert page["data"] == []  # auto-created batches are never listed
        async with client.post("/openai/v1/batches/anything/cancel", headers=bearer(KEY_A)) as response:
            assert response.status == 200
        _, page, _ = await get(client, "/openai/v1/batches", bearer(KEY_A))
        assert page["data"] == []


async def test_azure_and_groq_list_on_their_paths():
    async with sandbox(azure_quirks=True) as (client, sim):
        seed_five(sim, "azure", metadata={"job": "x"})
        seed_five(sim, "groq")
        status, body, _ = await get(client, "/azure/openai/batches", {"api-key": KEY_A}, limit="3")
        assert status == 404  # the versioned route needs api-version
        status, page, _ = await get(
            client, "/azure/openai/batches", {"api-key": KEY_A}, limit="3", **{"api-version": "2024-10-21"}
        )
        assert [b["id"] for b in page["data"]] == ["b4", "b3", "b2"] and page["has_more"]
        assert page["data"][0]["status"] == "In_progress" and page["data"][0]["created_at"].startswith("2027-")
        assert page["data"][0]["metadata"] == {"job": "x"}
        status, page, _ = await get(client, "/azure/openai/v1/batches", bearer(KEY_A), after="b2")
        assert [b["id"] for b in page["data"]] == ["b1", "b0"] and not page["has_more"]
        status, page, _ = await get(client, "/groq/openai/v1/batches", bearer(KEY_A), limit="4", after="b4")
        assert [b["id"] for b in page["data"]] == ["b3", "b2", "b1", "b0"] and page["has_more"] is False
        status, body, _ = await get(client, "/groq/openai/v1/batches", bearer("nope"))
        assert status == 401 and body["error"]["code"] == "invalid_api_key"


# --- Anthropic ------------------------------------------------------------------------------------


async def test_anthropic_list_pages_both_ways_with_the_official_sdk():
    import anthropic

    headers = {"x-api-key": KEY_A, "anthropic-version": "2023-06-01"}
    async with sandbox() as (client, sim):
        seed_five(sim, "anthropic", metadata={"team": "x"})
        status, page, _ = await get(client, "/anthropic/v1/messages/batches", headers, limit="2")
        assert status == 200 and set(page) == {"data", "has_more", "first_id", "last_id"}
        assert [b["id"] for b in page["data"]] == ["b4", "b3"] and page["has_more"]
        assert page["data"][0]["type"] == "message_batch" and "metadata" not in page["data"][0]
        assert page["data"][1]["created_at"] == "2027-01-15T08:03:00.000000Z"
        _, page, _ = await get(client, "/anthropic/v1/messages/batches", headers, limit="2", after_id="b3")
        assert [b["id"] for b in page["data"]] == ["b2", "b1"] and page["has_more"]
        _, page, _ = await get(client, "/anthropic/v1/messages/batches", headers, limit="2", before_id="b1")
        assert [b["id"] for b in page["data"]] == ["b3", "b2"] and page["has_more"]
        _, page, _ = await get(client, "/anthropic/v1/messages/batches", headers, limit="2", before_id="b3")
        assert [b["id"] for b in page["data"]] == ["b4"] and not page["has_more"]

        sdk = anthropic.AsyncAnthropic(api_key=KEY_A, base_url=str(client.make_url("/anthropic")), max_retries=0)
        ids = [batch.id async for batch in sdk.messages.batches.list(limit=2)]
        assert ids == ["b4", "b3", "b2", "b1", "b0"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "1001"}, "limit: Input should be less than or equal to 1000"),
        ({"limit": "0"}, "limit: Input should be greater than or equal to 1"),
        ({"after_id": "a", "before_id": "b"}, "Only one of before_id and after_id may be provided."),
    ],
)
async def test_anthropic_list_refusals(params, message):
    headers = {"x-api-key": KEY_A, "anthropic-version": "2023-06-01"}
    async with sandbox() as (client, sim):
        status, body, _ = await get(client, "/anthropic/v1/messages/batches", headers, **params)
        assert status == 400 and body["type"] == "error"
        assert body["error"] == {"type": "invalid_request_error", "message": message}


async def test_anthropic_accounts_by_bearer_and_api_key():
    async with sandbox() as (client, sim):
        sim.seed("anthropic", "mine", owner=KEY_A)
        sim.seed("anthropic", "theirs", owner=KEY_B)
        version = {"anthropic-version": "2023-06-01"}
        _, page, _ = await get(client, "/anthropic/v1/messages/batches", {**bearer(KEY_B), **version})
        assert [b["id"] for b in page["data"]] == ["theirs"]
        status, _, _ = await get(client, "/anthropic/v1/messages/batches/theirs", {"x-api-key": KEY_A, **version})
        assert status == 404


# --- Bedrock (botocore as the client) -------------------------------------------------------------


def bedrock_client(url: str, key: str, validate: bool = True):
    import botocore.session
    from botocore.config import Config

    access, secret = key.split(":")[:2]
    return botocore.session.get_session().create_client(
        "bedrock",
        region_name="us-east-1",
        endpoint_url=f"{url}/bedrock",
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, parameter_validation=validate),
    )


@asynccontextmanager
async def served(**options):
    """A sandbox on a real port (for the synchronous SDKs, run in a thread)."""
    async with TestServer(build_app(keys=KEYS, **options)) as server:
        yield str(server.make_url("")).rstrip("/"), server.app[SIMULATOR_KEY]


async def test_bedrock_list_with_botocore_paginator_filters_and_sort():
    async with served() as (url, sim):
        seed_five(sim, "bedrock")
        sim.seed("bedrock", "done", status="completed", created_at=NOW + 600)
        sim.seed("bedrock", "hidden", owner=BEDROCK_B, created_at=NOW + 700)

        def calls():
            bedrock = bedrock_client(url, BEDROCK_A)
            paginator = bedrock.get_paginator("list_model_invocation_jobs")
            pages = list(paginator.paginate(PaginationConfig={"PageSize": 2}))
            running = bedrock.list_model_invocation_jobs(statusEquals="InProgress", maxResults=1000)
            window = bedrock.list_model_invocation_jobs(
                submitTimeAfter=datetime.fromtimestamp(NOW + 60, UTC),
                submitTimeBefore=datetime.fromtimestamp(NOW + 240, UTC),
                sortOrder="Ascending",
            )
            return pages, running, window

        pages, running, window = await asyncio.to_thread(calls)
        jobs = [job for page in pages for job in page["invocationJobSummaries"]]
        assert [job["jobArn"].rsplit("/", 1)[1] for job in jobs] == ["done", "b4", "b3", "b2", "b1", "b0"]
        assert [len(page["invocationJobSummaries"]) for page in pages] == [2, 2, 2]
        assert "nextToken" not in pages[-1]
        assert jobs[0]["status"] == "Completed" and jobs[1]["status"] == "InProgress"
        assert jobs[-1]["submitTime"] == datetime.fromtimestamp(NOW, UTC)
        assert [job["jobArn"][-2:] for job in running["invocationJobSummaries"]] == ["b4", "b3", "b2", "b1", "b0"]
        # After and before are strict.
        assert [job["jobArn"][-2:] for job in window["invocationJobSummaries"]] == ["b2", "b3"]
        listed = [call for call in sim.calls("bedrock") if call["path"] == "/bedrock/model-invocation-jobs"]
        assert listed[0]["query"] == {"maxResults": "2"} and listed[1]["query"]["nextToken"]
        assert all(call["method"] == "GET" for call in listed)


async def test_bedrock_list_refuses_values_out_of_the_model_constraints():
    async with served() as (url, sim):

        def calls():
            bedrock = bedrock_client(url, BEDROCK_A, validate=False)
            errors = []
            for kwargs in ({"maxResults": 0}, {"maxResults": 1001}, {"statusEquals": "Running"}, {"nextToken": "x"}):
                try:
                    bedrock.list_model_invocation_jobs(**kwargs)
                except bedrock.exceptions.ValidationException as exc:
                    errors.append(exc.response["Error"]["Message"])
            return errors

        errors = await asyncio.to_thread(calls)
        assert errors[0].startswith("1 validation error detected: Value '0' at 'maxResults' failed to satisfy")
        assert "less than or equal to 1000" in errors[1] and "'Running' at 'statusEquals'" in errors[2]
        assert len(errors) == 4


async def test_bedrock_accounts_follow_the_signing_access_key():
    async with served() as (url, sim):
        sim.seed("bedrock", "abcdefabcdef", owner=BEDROCK_B)

        def calls():
            mine = bedrock_client(url, BEDROCK_A)
            theirs = bedrock_client(url, BEDROCK_B)
            try:
                mine.stop_model_invocation_job(jobIdentifier="abcdefabcdef")
            except mine.exceptions.ResourceNotFoundException:
                refused = True
            return refused, mine.list_model_invocation_jobs(), theirs.list_model_invocation_jobs()

        refused, mine, theirs = await asyncio.to_thread(calls)
        assert refused and mine["invocationJobSummaries"] == []
        assert [job["jobArn"][-12:] for job in theirs["invocationJobSummaries"]] == ["abcdefabcdef"]


# --- Google ---------------------------------------------------------------------------------------


def vertex_token(sim, email: str = SANDBOX_SERVICE_ACCOUNT) -> dict:
    _state(sim).tokens[f"tok-{email}"] = (time() + 600, email)
    return bearer(f"tok-{email}")


VERTEX_JOBS = f"/vertex/v1/projects/{SANDBOX_PROJECT}/locations/us-central1/batchPredictionJobs"


async def test_vertex_list_pages_and_labels():
    async with sandbox() as (client, sim):
        seed_five(sim, "vertex", metadata={"team": "search"})
        auth, seen, token = vertex_token(sim), [], None
        while True:
            status, page, _ = await get(
                client, VERTEX_JOBS, auth, pageSize="2", **({"pageToken": token} if token else {})
            )
            assert status == 200
            seen += [job["name"].rsplit("/", 1)[1] for job in page["batchPredictionJobs"]]
            token = page.get("nextPageToken")
            if not token:
                break
        assert seen == ["b4", "b3", "b2", "b1", "b0"]
        assert page["batchPredictionJobs"][0]["labels"] == {"team": "search"}
        assert page["batchPredictionJobs"][0]["createTime"] == "2027-01-15T08:00:00.123456Z"


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('state="JOB_STATE_RUNNING"', ["b4", "b3", "b1", "b0"]),
        ("state!=JOB_STATE_RUNNING", ["done", "b2"]),
        ('create_time>="2027-01-15T08:02:00Z" AND create_time<"2027-01-15T08:04:00Z"', ["b3", "b2"]),
        ('createTime>"2027-01-15T08:02:00Z"', ["done", "b4", "b3"]),
        ("labels.team=search", ["b3", "b1"]),
        ('labels.team="search" AND labels.job:*', ["b1"]),
        ('(state="JOB_STATE_RUNNING" OR state="JOB_STATE_PENDING") AND labels.team=search', ["b3", "b1"]),
        ('state="JOB_STATE_PENDING" OR state="JOB_STATE_SUCCEEDED" labels.team:*', []),
        ('NOT labels.team:* -state="JOB_STATE_SUCCEEDED"', ["b4", "b2", "b0"]),
        ('display_name:"sandbox-b*"', ["b4", "b3", "b2", "b1", "b0"]),
    ],
)
async def test_vertex_filter(expression, expected):
    async with sandbox() as (client, sim):
        seed_five(sim, "vertex")
        sim.seed("vertex", "b1", created_at=NOW + 60, metadata={"team": "search", "job": "e"})
        sim.seed("vertex", "b3", created_at=NOW + 180, metadata={"team": "search"})
        sim.seed("vertex", "b2", created_at=NOW + 120, status="validating")
        sim.seed("vertex", "done", created_at=NOW + 600, status="completed")
        status, page, _ = await get(client, VERTEX_JOBS, vertex_token(sim), filter=expression)
        assert status == 200
        assert [job["name"].rsplit("/", 1)[1] for job in page.get("batchPredictionJobs", [])] == expected


@pytest.mark.parametrize(
    "expression",
    ["state>JOB_STATE_RUNNING", "nonsense=1", "(state=A", 'create_time>"yesterday"', "state=", "labels.k<3"],
)
async def test_vertex_bad_filter_is_invalid_argument(expression):
    async with sandbox() as (client, sim):
        status, body, _ = await get(client, VERTEX_JOBS, vertex_token(sim), filter=expression)
        assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
        assert body["error"]["message"].startswith("Invalid filter: ")


async def test_vertex_empty_page_other_project_and_accounts():
    async with sandbox() as (client, sim):
        status, page, _ = await get(client, VERTEX_JOBS, vertex_token(sim))
        assert (status, page) == (200, {})
        path = VERTEX_JOBS.replace(SANDBOX_PROJECT, "someone-else")
        status, body, _ = await get(client, path, vertex_token(sim))
        assert status == 403 and "aiplatform.batchPredictionJobs.list" in body["error"]["message"]
        sim.seed("vertex", "7", owner=OTHER_SA)
        _, page, _ = await get(client, VERTEX_JOBS, vertex_token(sim))
        assert page == {}
        _, page, _ = await get(client, VERTEX_JOBS, vertex_token(sim, OTHER_SA))
        assert len(page["batchPredictionJobs"]) == 1
        status, _, _ = await get(client, f"{VERTEX_JOBS}/7", vertex_token(sim))
        assert status == 404


async def test_gemini_list_operations_with_the_official_sdk():
    from google import genai

    async with served() as (url, sim):
        seed_five(sim, "gemini")
        sim.seed("gemini", "theirs", owner=KEY_B, created_at=NOW + 900)

        def calls():
            sdk = genai.Client(api_key=KEY_A, http_options={"base_url": f"{url}/gemini"})
            return [job.name for job in sdk.batches.list(config={"page_size": 2})]

        names = await asyncio.to_thread(calls)
        assert names == [f"batches/b{i}" for i in (4, 3, 2, 1, 0)]
        queries = [call["query"] for call in sim.calls("gemini")]
        assert queries[0] == {"pageSize": "2"} and queries[1]["pageToken"]


async def test_gemini_list_shape_and_refusals():
    async with sandbox() as (client, sim):
        auth = {"x-goog-api-key": KEY_A}
        status, page, _ = await get(client, "/gemini/v1beta/batches", auth)
        assert (status, page) == (200, {})
        seed_five(sim, "gemini")
        _, page, _ = await get(client, "/gemini/v1beta/batches", auth, pageSize="100000")
        assert len(page["operations"]) == 5 and "nextPageToken" not in page
        operation = page["operations"][0]
        assert operation["name"] == "batches/b4" and operation["metadata"]["state"] == "BATCH_STATE_RUNNING"
        status, body, _ = await get(client, "/gemini/v1beta/batches", auth, pageSize="-1")
        assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
        status, body, _ = await get(client, "/gemini/v1beta/batches", auth, pageToken="garbage!")
        assert status == 400 and body["error"]["message"] == "Invalid page token."


# --- Mistral, Cohere, Together, xAI ---------------------------------------------------------------


async def test_mistral_pages_filters_and_total():
    async with sandbox() as (client, sim):
        ids = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(6)]
        for i, batch_id in enumerate(ids):
            sim.seed(
                "mistral", batch_id, created_at=NOW + 60 * i,
                status="completed" if i == 5 else "in_progress",
                metadata={"team": "search"} if i % 2 else None,
            )  # fmt: skip
        auth = bearer(KEY_A)
        _, page, _ = await get(client, "/mistral/v1/batch/jobs", auth, page="1", page_size="2")
        assert page["object"] == "list" and page["total"] == 6
        assert [job["id"] for job in page["data"]] == [ids[3], ids[2]]
        path = "/mistral/v1/batch/jobs?status=RUNNING&status=QUEUED&page_size=10"
        _, page, _ = await get(client, path, auth)
        assert page["total"] == 5 and page["data"][0]["status"] == "RUNNING"
        after = datetime.fromtimestamp(NOW + 120, UTC).isoformat().replace("+00:00", "Z")
        _, page, _ = await get(client, "/mistral/v1/batch/jobs", auth, created_after=after, order_by="created")
        assert [job["id"] for job in page["data"]] == ids[2:]
        _, page, _ = await get(
            client, "/mistral/v1/batch/jobs", auth, metadata=orjson.dumps({"team": "search"}).decode()
        )
        assert [job["id"] for job in page["data"]] == [ids[5], ids[3], ids[1]]
        assert page["data"][0]["metadata"] == {"team": "search"}
        _, page, _ = await get(client, "/mistral/v1/batch/jobs", auth, page="9")
        assert (page["data"], page["total"]) == ([], 6)


async def test_mistral_refusals_are_fastapi_422s():
    async with sandbox() as (client, sim):
        path = "/mistral/v1/batch/jobs?status=RUNNING&status=BOGUS&page_size=0&metadata=[1]&order_by=new"
        status, body, _ = await get(client, path, bearer(KEY_A))
        assert status == 422
        assert [(p["type"], p["loc"]) for p in body["detail"]] == [
            ("greater_than_equal", ["query", "page_size"]),
            ("enum", ["query", "status", 1]),
            ("json_invalid", ["query", "metadata"]),
            ("enum", ["query", "order_by"]),
        ]
        status, body, _ = await get(client, "/mistral/v1/batch/jobs", bearer("nope"))
        assert status == 401 and body["message"] == "Unauthorized"


async def test_cohere_pages_with_tokens_default_and_coerced_size():
    async with sandbox() as (client, sim):
        sim.seed_many("cohere", [{"id": f"c{i:03}", "created_at": NOW + i} for i in range(120)])
        auth = bearer(KEY_A)
        _, page, _ = await get(client, "/cohere/v2/batches", auth)
        assert len(page["batches"]) == 50 and page["batches"][0]["id"] == "c119" and page["next_page_token"]
        _, rest, _ = await get(client, "/cohere/v2/batches", auth, page_size="5000", page_token=page["next_page_token"])
        assert [b["id"] for b in rest["batches"]] == [f"c{i:03}" for i in reversed(range(70))]
        assert "next_page_token" not in rest
        sim.seed("cohere", "c000", created_at=NOW, cancelling_at=NOW + 5000, status="cancelling")
        _, page, _ = await get(client, "/cohere/v2/batches", auth, order_by="updated_at", page_size="1")
        assert page["batches"][0]["id"] == "c000"
        _, page, _ = await get(
            client, "/cohere/v2/batches", auth, order_by="updated_at", page_token=page["next_page_token"]
        )
        assert page["batches"][0]["id"] == "c119" and len(page["batches"]) == 50
        status, body, _ = await get(client, "/cohere/v2/batches", auth, order_by="name")
        assert status == 400 and set(body) == {"id", "message"}


async def test_together_answers_a_plain_array_of_the_keys_batches():
    async with sandbox() as (client, sim):
        seed_five(sim, "together")
        sim.seed("together", "theirs", owner=KEY_B)
        status, body, _ = await get(client, "/together/v1/batches", bearer(KEY_A))
        assert status == 200 and [job["id"] for job in body] == ["b4", "b3", "b2", "b1", "b0"]
        assert body[0]["status"] == "IN_PROGRESS"


async def test_xai_pages_with_pagination_tokens():
    async with sandbox() as (client, sim):
        seed_five(sim, "xai")
        auth, seen, token = bearer(KEY_A), [], None
        while True:
            params = {"limit": "2", **({"pagination_token": token} if token else {})}
            status, page, _ = await get(client, "/xai/v1/batches", auth, **params)
            seen += [batch["batch_id"] for batch in page["batches"]]
            token = page.get("pagination_token")
            if token is None:
                break
        assert seen == ["b4", "b3", "b2", "b1", "b0"]
        status, body, _ = await get(client, "/xai/v1/batches", auth, limit="-3")
        assert status == 400 and body["code"] == "Client specified an invalid argument"


# --- the parts ------------------------------------------------------------------------------------


def test_page_tokens_round_trip_and_refuse_garbage():
    assert parse_page_token(page_token((NOW, 42))) == (NOW, 42)
    for garbage in ("", "x", "!!!", page_token((1, 2))[:-2] + "@@"):
        assert parse_page_token(garbage) is None


def test_filter_precedence_or_binds_tighter_than_and():
    job = Job("JOB_STATE_RUNNING", NOW, "n", {"a": "1"})
    # a AND b OR c == a AND (b OR c)
    assert parse_filter('labels.a=2 AND state="JOB_STATE_RUNNING" OR labels.a=1')(job) is False
    assert parse_filter("labels.a=1 AND labels.a=2 OR state=JOB_STATE_RUNNING")(job) is True
    assert parse_filter("")(job) is True
    with pytest.raises(FilterError):
        parse_filter("state=A)")


def test_rate_limit_counts_a_sliding_second():
    limit = RateLimit(2)
    assert limit.admit(10.0) is None and limit.admit(10.2) is None
    assert limit.admit(10.5) == pytest.approx(0.5)
    assert limit.admit(11.0) is None  # the call at 10.0 left the window
    assert limit.admit(11.1) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        RateLimit(0)


RATE_LIMITED = [
    ("openai", "/openai/v1/batches/{id}/cancel", bearer(KEY_A), ("error", "code"), "rate_limit_exceeded"),
    ("mistral", "/mistral/v1/batch/jobs/{id}/cancel", bearer(KEY_A), ("message",), "Requests rate limit exceeded"),
    ("gemini", "/gemini/v1beta/batches/{id}:cancel", {"x-goog-api-key": KEY_A}, ("error", "status"),
     "RESOURCE_EXHAUSTED"),
]  # fmt: skip


@pytest.mark.parametrize(("provider", "path", "headers", "field", "expected"), RATE_LIMITED)
async def test_cancel_rate_limit_answers_429_with_retry_after(provider, path, headers, field, expected):
    async with sandbox() as (client, sim):
        now = [100.0]
        sim.clock = lambda: now[0]
        ids = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(4)]
        sim.seed_many(provider, [{"id": batch_id} for batch_id in ids])
        async with client.put(f"/_sim/{provider}/cancel_rate", json={"per_second": 2}) as response:
            assert (response.status, await response.json()) == (200, {"per_second": 2})
        statuses = []
        for batch_id in ids[:3]:
            async with client.post(path.format(id=batch_id), headers=headers) as response:
                statuses.append(response.status)
                body, retry_after = await response.json(), response.headers.get("Retry-After")
        assert statuses == [200, 200, 429] and retry_after == "1"
        for name in field:
            body = body[name]
        assert body == expected
        # Reads and lists are not cancels; a second later cancels pass again.
        assert sim.batch(provider, ids[2]).status == "in_progress"
        now[0] += 1.0
        async with client.post(path.format(id=ids[2]), headers=headers) as response:
            assert response.status == 200
        async with client.put(f"/_sim/{provider}/cancel_rate", json={"per_second": None}) as response:
            assert (await response.json()) == {"per_second": None}
        async with client.put(f"/_sim/{provider}/cancel_rate", json={"per_second": 0}) as response:
            assert response.status == 400


async def test_bulk_seed_generates_a_mix_and_validates():
    async with sandbox() as (client, sim):
        body = {
            "count": 3000,
            "statuses": {"in_progress": 3, "completed": 1},
            "created_after": NOW,
            "created_before": NOW + 3600,
            "metadata": [{"team": "search"}, None],
            "owners": [KEY_A, None],
            "random_seed": 7,
        }
        async with client.post("/_sim/bedrock/seed", json={**body, "owners": [KEY_A]}) as response:
            assert response.status == 400  # KEY_A is not a Bedrock key
        async with client.post("/_sim/mistral/seed", json=body) as response:
            assert response.status == 201
            created = await response.json()
        assert created["created"] == 3000 and len(set(created["ids"])) == 3000
        batches = [sim.batch("mistral", batch_id) for batch_id in created["ids"]]
        assert {b.status for b in batches} == {"in_progress", "completed"}
        assert 1800 < sum(b.status == "in_progress" for b in batches) < 2700
        assert all(NOW <= b.created_at < NOW + 3600 for b in batches)
        assert {b.owner for b in batches} == {KEY_A, None} and {str(b.metadata) for b in batches} == {
            "{'team': 'search'}", "None"
        }  # fmt: skip
        assert all(len(b.id) == 36 for b in batches)  # Mistral's UUID ids
        explicit = {"batches": [{"id": "x1", "status": "failed"}, {"id": "x2", "owner": KEY_B}]}
        async with client.post("/_sim/openai/seed", json=explicit) as response:
            assert (response.status, (await response.json())["ids"]) == (201, ["x1", "x2"])
        for bad in ({"count": 0}, {"count": 5, "statuses": ["running"]}, {"count": 5, "colour": 1},
                    {"batches": [{"id": "y", "status": "nope"}]}, {"batches": "x"}):  # fmt: skip
            async with client.post("/_sim/openai/seed", json=bad) as response:
                assert response.status == 400, bad
        assert sim.batch("openai", "y") is None


def test_generate_is_deterministic_with_a_seed():
    counter = iter(range(10**6))

    def new_id():
        return f"id{next(counter)}"

    first = generate(new_id, 50, statuses=["in_progress", "failed"], random_seed=3)
    again = generate(new_id, 50, statuses=["in_progress", "failed"], random_seed=3)
    assert [b["status"] for b in first] == [b["status"] for b in again]
    assert [b["created_at"] for b in first] == [b["created_at"] for b in again]


async def test_demo_mix_lists_on_every_provider():
    async with sandbox() as (client, sim):
        assert seed_demo(sim, now=NOW) == len(DEMO_MIX) * len(sim.providers)
        _, page, _ = await get(client, "/openai/v1/batches", bearer(KEY_A), limit="100")
        assert len(page["data"]) == len(DEMO_MIX)
        assert page["data"][0]["status"] == "validating" and page["data"][0]["created_at"] == NOW - 180
        labelled = [b for b in page["data"] if b["metadata"] == {"team": "search", "job": "nightly-eval"}]
        assert {b["status"] for b in labelled} == {"validating", "in_progress", "completed", "expired"}


async def test_listing_ten_thousand_batches_touches_each_once():
    async with sandbox() as (client, sim):
        store = sim.store("openai")
        sim.seed_many("openai", generate(store.new_id, 10_000, random_seed=1))
        seen, after = set(), None
        for _ in range(200):
            params = {"limit": "100", **({"after": after} if after else {})}
            _, page, _ = await get(client, "/openai/v1/batches", bearer(KEY_A), **params)
            seen.update(b["id"] for b in page["data"])
            times = [b["created_at"] for b in page["data"]]
            assert times == sorted(times, reverse=True)
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert len(seen) == 10_000 == len(store)
