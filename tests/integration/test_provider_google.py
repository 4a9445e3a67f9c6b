"""Gemini and Vertex over real gRPC against the Google simulators over real HTTP (Vertex tokens are
minted by google-auth at the sandbox's OAuth2 token endpoint)."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
import uuid

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox.google import (
    SANDBOX_PROJECT,
    SANDBOX_PROJECT_NUMBER,
    GeminiSim,
    VertexSim,
    gemini_options,
    reset_options,
    vertex_options,
)
from tests.support import cancel, cancel_error, error_detail, running_service, sim_config

REGION = "us-central1"


def new_id(prefix: str = "g") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def new_job_id() -> str:
    return str(uuid.uuid4().int % 10**18)


def job_name(job_id: str, project: str = SANDBOX_PROJECT, location: str = REGION) -> str:
    return f"projects/{project}/locations/{location}/batchPredictionJobs/{job_id}"


def seed_running(sim, **fields):
    """A running Vertex job that stays cancelling after a cancel (however slow the machine is)."""
    return sim.seed("vertex", new_job_id(), cancel_delay_s=3600, **fields)


def b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def google_config(sandbox, *, raw: bool = False) -> dict:
    providers = {}
    for sim in (GeminiSim, VertexSim):
        providers |= sim_config(sim, sandbox.url, send_back_raw_response=raw)["providers"]
    return {"providers": providers}


def api_calls(sim, provider: str) -> list[dict]:
    return [call for call in sim.calls(provider) if not call["path"].endswith("/token")]


def token_calls(sim) -> list[dict]:
    return [call for call in sim.calls("vertex") if call["path"] == "/vertex/token"]


@pytest.fixture
def google_sim(sim):
    reset_options(sim)
    yield sim
    reset_options(sim)


@pytest.fixture
async def service(sandbox, google_sim):
    async with running_service(google_config(sandbox)) as (_, stub):
        yield stub


# --- Gemini ------------------------------------------------------------------------------------------


async def test_gemini_cancel_reads_the_batch_back_cancelled(service, google_sim):
    counts = {"total": 40, "completed": 12, "failed": 3}
    batch = google_sim.seed("gemini", new_id(), cancel_delay_s=0, request_counts=counts)
    response = await cancel(service, f"batches/{batch.id}", provider="gemini")
    state = google_sim.batch("gemini", batch.id)
    assert (response.id, response.status) == (f"batches/{batch.id}", "cancelled")
    assert response.extra_fields.provider == "gemini"
    c = response.request_counts
    assert (c.total, c.completed, c.failed, c.succeeded, c.pending) == (40, 12, 3, 12, 25)
    assert response.cancelled_at == state.cancelled_at
    assert not response.HasField("cancelling_at")
    assert not response.extra_fields.HasField("warning")
    post, get = api_calls(google_sim, "gemini")
    assert (post["method"], post["path"], post["body"]) == ("POST", f"/gemini/v1beta/batches/{batch.id}:cancel", "")
    assert (get["method"], get["path"]) == ("GET", f"/gemini/v1beta/batches/{batch.id}")
    for call in (post, get):
        assert call["headers"]["x-goog-api-key"] == GeminiSim.default_key
        assert "Authorization" not in call["headers"]


async def test_gemini_still_running_after_the_cancel_is_cancelling(service, google_sim):
    batch = google_sim.seed("gemini", new_id(), cancel_delay_s=3600)
    response = await cancel(service, batch.id, provider="gemini")
    assert response.status == "cancelling"
    assert not response.HasField("cancelled_at") and not response.HasField("cancelling_at")
    assert response.request_counts.total == 100


@pytest.mark.parametrize("form", ["batches/{id}", "batches-{id}", "{id}"])
async def test_gemini_id_forms_address_the_same_batch_and_are_echoed(service, google_sim, form):
    batch = google_sim.seed("gemini", new_id(), cancel_delay_s=0)
    response = await cancel(service, form.format(id=batch.id), provider="gemini")
    assert (response.id, response.status) == (form.format(id=batch.id), "cancelled")
    assert api_calls(google_sim, "gemini")[0]["path"] == f"/gemini/v1beta/batches/{batch.id}:cancel"


async def test_gemini_job_state_names_and_top_level_batch_are_understood(service, google_sim):
    options = gemini_options(google_sim)
    options.job_state_names = options.batch_at_top_level = True
    batch = google_sim.seed("gemini", new_id(), cancel_delay_s=0)
    response = await cancel(service, batch.id, provider="gemini")
    assert (response.status, response.cancelled_at) == ("cancelled", google_sim.batch("gemini", batch.id).cancelled_at)


async def test_gemini_unknown_batch_is_not_found(service, google_sim):
    err = await cancel_error(service, f"batches/{new_id()}", provider="gemini")
    assert err.code() == grpc.StatusCode.NOT_FOUND
    detail = error_detail(err)
    assert (detail.status_code, detail.error.code, detail.error.type) == (404, "NOT_FOUND", "not_found_error")
    assert detail.error.message == "Requested entity was not found."


async def test_gemini_finished_batch_is_failed_precondition_409(service, google_sim):
    batch = google_sim.seed("gemini", new_id(), status="completed")
    err = await cancel_error(service, batch.id, provider="gemini")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    detail = error_detail(err)
    assert (detail.status_code, detail.error.code, detail.is_bifrost_error) == (409, "FAILED_PRECONDITION", False)
    assert "BATCH_STATE_SUCCEEDED" in detail.error.message
    assert len(api_calls(google_sim, "gemini")) == 1  # no follow-up read after a refused cancel


async def test_gemini_finished_batch_when_the_cancel_is_ignored_reports_its_state(service, google_sim):
    gemini_options(google_sim).finished_cancel = "ignore"
    batch = google_sim.seed("gemini", new_id(), status="completed")
    response = await cancel(service, batch.id, provider="gemini")
    assert response.status == "completed"


async def test_gemini_bad_key_keeps_400_and_says_authentication(sandbox, google_sim):
    config = google_config(sandbox)
    config["providers"]["gemini"]["keys"][0]["value"] = "AIzaSyWrongKey000000000000000000000"
    async with running_service(config) as (_, stub):
        err = await cancel_error(stub, new_id(), provider="gemini")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = error_detail(err)
    assert (detail.status_code, detail.error.code) == (400, "INVALID_ARGUMENT")
    assert detail.error.type == "authentication_error"
    assert detail.error.message == "API key not valid. Please pass a valid API key."
    assert "AIzaSyWrongKey" not in str(detail)


async def test_gemini_rate_limited(service, google_sim):
    google_sim.add_fault("gemini", {"status": 429})
    err = await cancel_error(service, new_id(), provider="gemini")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    detail = error_detail(err)
    assert (detail.status_code, detail.error.code, detail.error.type) == (429, "RESOURCE_EXHAUSTED", "rate_limit_error")


async def test_gemini_failed_read_after_an_accepted_cancel_is_cancelling_with_a_warning(service, google_sim):
    batch = google_sim.seed("gemini", new_id(), cancel_delay_s=0)
    google_sim.add_fault("gemini", [{"latency_ms": 1}, {"status": 503}])  # the cancel passes, the read fails
    response = await cancel(service, batch.id, provider="gemini")
    assert response.status == "cancelling"
    assert "cancel accepted" in response.extra_fields.warning
    assert google_sim.batch("gemini", batch.id).status == "cancelled"  # the cancel did happen


async def test_gemini_raw_response_holds_both_answers_and_no_key(sandbox, google_sim):
    batch = google_sim.seed("gemini", new_id(), cancel_delay_s=0)
    async with running_service(google_config(sandbox, raw=True)) as (_, stub):
        response = await cancel(stub, batch.id, provider="gemini")
    raw = response.extra_fields.raw_response.struct_value
    assert dict(raw["cancel"]) == {}
    assert raw["retrieve"]["metadata"]["state"] == "BATCH_STATE_CANCELLED"
    assert GeminiSim.default_key not in str(response)


# --- Vertex ------------------------------------------------------------------------------------------


async def test_vertex_cancel_reports_cancelling_with_the_providers_time_and_counts(service, google_sim):
    counts = {"total": 50, "completed": 20, "failed": 3}
    job = google_sim.seed("vertex", new_job_id(), cancel_delay_s=3600, request_counts=counts)
    response = await cancel(service, job.id, provider="vertex")
    state = google_sim.batch("vertex", job.id)
    assert (response.id, response.status, response.extra_fields.provider) == (job.id, "cancelling", "vertex")
    assert response.cancelling_at == state.cancelling_at
    assert not response.HasField("cancelled_at")
    c = response.request_counts
    assert (c.total, c.completed, c.failed, c.succeeded, c.pending) == (50, 20, 3, 20, 27)
    (mint,) = token_calls(google_sim)
    assert "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer" in mint["body"]
    post, get = api_calls(google_sim, "vertex")
    path = f"/vertex/v1/{job_name(job.id)}"
    assert (post["method"], post["path"], post["body"]) == ("POST", f"{path}:cancel", "{}")
    assert (get["method"], get["path"]) == ("GET", path)
    assert post["headers"]["Authorization"] == get["headers"]["Authorization"]
    assert post["headers"]["Authorization"].startswith("Bearer ya29.sandbox-")


async def test_vertex_cancelled_after_the_delay_reports_cancelled_at(service, google_sim):
    job = google_sim.seed("vertex", new_job_id(), cancel_delay_s=0)
    response = await cancel(service, job.id, provider="vertex")
    assert (response.status, response.cancelled_at) == ("cancelled", google_sim.batch("vertex", job.id).cancelled_at)


@pytest.mark.parametrize("form", ["bare", "name", "base64"])
async def test_vertex_id_forms_address_the_same_job_and_are_echoed(service, google_sim, form):
    job = seed_running(google_sim)
    batch_id = {"bare": job.id, "name": job_name(job.id), "base64": b64url(job_name(job.id))}[form]
    response = await cancel(service, batch_id, provider="vertex")
    assert (response.id, response.status) == (batch_id, "cancelling")
    assert api_calls(google_sim, "vertex")[0]["path"] == f"/vertex/v1/{job_name(job.id)}:cancel"


async def test_vertex_full_name_in_another_project_and_region_is_used_as_given(service, google_sim):
    vertex_options(google_sim).projects.add("other-project")
    job = seed_running(google_sim)
    name = job_name(job.id, "other-project", "europe-west4")
    response = await cancel(service, b64url(name), provider="vertex")
    assert response.status == "cancelling"
    assert [c["path"] for c in api_calls(google_sim, "vertex")] == [f"/vertex/v1/{name}:cancel", f"/vertex/v1/{name}"]


async def test_vertex_job_in_a_project_the_key_cannot_reach_is_permission_denied(service, google_sim):
    err = await cancel_error(service, job_name(new_job_id(), "someone-else"), provider="vertex")
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    detail = error_detail(err)
    assert (detail.status_code, detail.error.code) == (403, "PERMISSION_DENIED")
    assert "aiplatform.batchPredictionJobs.cancel" in detail.error.message


async def test_vertex_token_is_minted_once_and_reused_under_concurrency(service, google_sim):
    jobs = [seed_running(google_sim) for _ in range(12)]
    responses = await asyncio.gather(*(cancel(service, job.id, provider="vertex") for job in jobs))
    assert {r.status for r in responses} == {"cancelling"}
    await cancel(service, seed_running(google_sim).id, provider="vertex")
    assert len(token_calls(google_sim)) == 1
    assert len({c["headers"]["Authorization"] for c in api_calls(google_sim, "vertex")}) == 1


async def test_vertex_unknown_job_is_not_found(service, google_sim):
    err = await cancel_error(service, new_job_id(), provider="vertex")
    assert err.code() == grpc.StatusCode.NOT_FOUND
    detail = error_detail(err)
    assert (detail.status_code, detail.error.code) == (404, "NOT_FOUND")
    assert "does not exist" in detail.error.message


async def test_vertex_finished_job_is_failed_precondition_409(service, google_sim):
    job = google_sim.seed("vertex", new_job_id(), status="cancelled")
    err = await cancel_error(service, job.id, provider="vertex")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    detail = error_detail(err)
    assert (detail.status_code, detail.error.code) == (409, "FAILED_PRECONDITION")
    assert "JOB_STATE_CANCELLED" in detail.error.message


async def test_vertex_finished_job_when_the_cancel_is_ignored_reports_its_state(service, google_sim):
    vertex_options(google_sim).finished_cancel = "ignore"
    job = google_sim.seed("vertex", new_job_id(), status="completed")
    response = await cancel(service, job.id, provider="vertex")
    assert response.status == "completed"


async def test_vertex_second_cancel_of_a_cancelling_job_answers_its_state(service, google_sim):
    started = int(time.time()) - 5
    job = google_sim.seed(
        "vertex", new_job_id(), status="cancelling", created_at=started - 60, cancelling_at=started, cancel_delay_s=3600
    )
    response = await cancel(service, job.id, provider="vertex")
    assert (response.status, response.cancelling_at) == ("cancelling", started)


async def test_vertex_unknown_service_account_is_401_before_any_api_call(sandbox, google_sim):
    config = google_config(sandbox)
    config["providers"]["vertex"]["keys"][0]["vertex_key_config"]["auth_credentials"]["client_email"] = (
        "intruder@elsewhere.iam.gserviceaccount.com"
    )
    async with running_service(config) as (_, stub):
        err = await cancel_error(stub, new_job_id(), provider="vertex")
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    detail = error_detail(err)
    assert (detail.status_code, detail.error.type, detail.error.code) == (401, "authentication_error", "invalid_grant")
    assert "account not found" in detail.error.message
    assert len(token_calls(google_sim)) == 1 and api_calls(google_sim, "vertex") == []


async def test_vertex_assertion_signed_with_another_key_is_refused(sandbox, google_sim):
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    config = google_config(sandbox)
    config["providers"]["vertex"]["keys"][0]["vertex_key_config"]["auth_credentials"]["private_key"] = pem.decode()
    async with running_service(config) as (_, stub):
        err = await cancel_error(stub, new_job_id(), provider="vertex")
    detail = error_detail(err)
    assert (detail.status_code, detail.error.code) == (401, "invalid_grant")
    assert "Invalid JWT Signature." in detail.error.message
    assert "PRIVATE KEY" not in str(detail) and pem.decode().splitlines()[1] not in str(detail)


async def test_vertex_unreachable_token_endpoint_is_502(sandbox, google_sim):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    config = google_config(sandbox)
    creds = config["providers"]["vertex"]["keys"][0]["vertex_key_config"]["auth_credentials"]
    creds["token_uri"] = f"http://127.0.0.1:{closed_port}/token"
    async with running_service(config) as (_, stub):
        err = await cancel_error(stub, new_job_id(), provider="vertex")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert error_detail(err).status_code == 502
    assert api_calls(google_sim, "vertex") == []


async def test_vertex_refused_token_is_401_and_the_next_call_mints_a_new_one(service, google_sim):
    job = seed_running(google_sim)
    google_sim.add_fault("vertex", {"status": 401})
    err = await cancel_error(service, job.id, provider="vertex")
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    detail = error_detail(err)
    assert (detail.status_code, detail.error.code) == (401, "UNAUTHENTICATED")
    assert detail.error.type == "authentication_error"
    response = await cancel(service, job.id, provider="vertex")
    assert response.status == "cancelling"
    assert len(token_calls(google_sim)) == 2


async def test_vertex_rate_limited(service, google_sim):
    google_sim.add_fault("vertex", {"status": 429})
    err = await cancel_error(service, new_job_id(), provider="vertex")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (error_detail(err).status_code, error_detail(err).error.code) == (429, "RESOURCE_EXHAUSTED")


async def test_vertex_failed_read_after_an_accepted_cancel_is_cancelling_with_a_warning(service, google_sim):
    job = seed_running(google_sim)
    google_sim.add_fault("vertex", [{"latency_ms": 1}, {"html": True}])
    response = await cancel(service, job.id, provider="vertex")
    assert response.status == "cancelling"
    assert "cancel accepted" in response.extra_fields.warning
    assert not response.HasField("request_counts")
    assert google_sim.batch("vertex", job.id).status == "cancelling"


async def test_vertex_unknown_incomplete_count_leaves_total_unknown(service, google_sim):
    vertex_options(google_sim).incomplete_unknown = True
    job = google_sim.seed("vertex", new_job_id(), request_counts={"total": 9, "completed": 4, "failed": 1})
    c = (await cancel(service, job.id, provider="vertex")).request_counts
    assert (c.completed, c.failed) == (4, 1)
    assert not c.HasField("pending") and not c.HasField("total")


@pytest.mark.parametrize(
    "batch_id",
    [
        "projects/p/locations/us-central1/models/1",
        "projects/p/locations/evil.example/batchPredictionJobs/1",
        "projects/../locations/us-central1/batchPredictionJobs/1",
        b64url("projects/p/locations/us-central1/batchPredictionJobs/1?x"),
        "1/../2",
    ],
)
async def test_vertex_unsafe_ids_never_reach_the_provider(service, google_sim, batch_id):
    err = await cancel_error(service, batch_id, provider="vertex")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_detail(err).error.param == "batch_id"
    assert google_sim.calls() == []


async def test_vertex_raw_response_never_holds_the_token(sandbox, google_sim):
    job = seed_running(google_sim)
    async with running_service(google_config(sandbox, raw=True)) as (_, stub):
        response = await cancel(stub, job.id, provider="vertex")
    raw = response.extra_fields.raw_response.struct_value
    assert raw["retrieve"]["name"] == job_name(job.id, SANDBOX_PROJECT_NUMBER)  # Vertex names the project number
    assert "ya29." not in str(response) and "PRIVATE KEY" not in str(response)


# --- the simulators against real clients -------------------------------------------------------------


async def test_google_genai_sdk_drives_both_simulators(sandbox, google_sim):
    from google import genai
    from google.oauth2 import service_account

    from sandbox.google import SANDBOX_SERVICE_ACCOUNT, service_account_info

    gem = google_sim.seed("gemini", new_id(), cancel_delay_s=0)
    job = google_sim.seed("vertex", new_job_id(), cancel_delay_s=3600)

    def use_sdks() -> tuple:
        client = genai.Client(api_key=GeminiSim.default_key, http_options={"base_url": f"{sandbox.url}/gemini"})
        client.batches.cancel(name=f"batches/{gem.id}")
        gemini_job = client.batches.get(name=f"batches/{gem.id}")
        info = service_account_info(SANDBOX_SERVICE_ACCOUNT, f"{sandbox.url}/vertex/token")
        creds = service_account.Credentials.from_service_account_info(
            info, scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
        client = genai.Client(
            vertexai=True, project=SANDBOX_PROJECT, location=REGION, credentials=creds,
            http_options={"base_url": f"{sandbox.url}/vertex"},
        )  # fmt: skip
        client.batches.cancel(name=job.id)
        return gemini_job, client.batches.get(name=job_name(job.id))

    gemini_job, vertex_job = await asyncio.to_thread(use_sdks)
    assert (gemini_job.name, gemini_job.state.value) == (f"batches/{gem.id}", "JOB_STATE_CANCELLED")
    assert vertex_job.state.value == "JOB_STATE_CANCELLING"
    assert vertex_job.completion_stats.successful_count == 10


async def http(sandbox, method: str, path: str, **kwargs) -> tuple[int, str, dict | str]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"{sandbox.url}{path}", **kwargs) as resp:
            ctype = resp.headers.get("Content-Type", "")
            body = await resp.json() if "json" in ctype else await resp.text()
            return resp.status, ctype, body


async def test_simulators_answer_auth_failures_and_unknown_paths_like_google(sandbox, google_sim):
    status, _, body = await http(sandbox, "GET", "/gemini/v1beta/batches/x")
    assert (status, body["error"]["status"]) == (403, "PERMISSION_DENIED")
    gem = google_sim.seed("gemini", new_id())
    status, _, body = await http(sandbox, "GET", f"/gemini/v1beta/batches/{gem.id}?key={GeminiSim.default_key}")
    assert (status, body["metadata"]["batchStats"]["requestCount"]) == (200, "100")
    status, _, body = await http(sandbox, "GET", "/vertex/v1/" + job_name("1"))
    assert (status, body["error"]["details"][0]["reason"]) == (401, "CREDENTIALS_MISSING")
    status, _, body = await http(sandbox, "POST", "/vertex/token", data={"grant_type": "client_credentials"})
    assert (status, body["error"]) == (400, "unsupported_grant_type")
    status, ctype, body = await http(sandbox, "GET", "/gemini/v1beta/models/nope", headers={"x-goog-api-key": "k"})
    assert (status, ctype.split(";")[0]) == (404, "text/html") and "Error 404 (Not Found)" in body
