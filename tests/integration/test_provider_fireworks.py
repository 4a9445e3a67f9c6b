"""Fireworks over real gRPC (grpc.aio on loopback) against the Fireworks simulator over real HTTP.
The cancel answers `{}`: the state comes from a follow-up GET within the same deadline."""

from __future__ import annotations

import uuid
from functools import partial

import aiohttp
import grpc
import pytest

from sandbox.fireworks import FireworksSim
from service.config import parse_config
from service.providers.fireworks import FireworksAdapter
from tests import support
from tests.support import running_service, sim_config

KEY = FireworksSim.default_key
ACCOUNT = FireworksSim.account_id


def new_id() -> str:
    return f"job-{uuid.uuid4().hex[:12]}"


def config(sandbox, key: str | None = None, account: str = ACCOUNT, **provider) -> dict:
    cfg = sim_config(FireworksSim, sandbox.url, key, **provider)
    cfg["providers"]["fireworks"]["keys"][0]["fireworks_key_config"]["account_id"] = account
    return cfg


cancel = partial(support.cancel, provider="fireworks")
cancel_failure = partial(support.cancel_failure, provider="fireworks")


@pytest.fixture
async def service(sandbox, sim):
    async with running_service(config(sandbox)) as (_, stub):
        yield stub


async def test_cancel_then_read_reports_cancelling(service, sim):
    batch = sim.seed("fireworks", new_id())
    response = await cancel(service, batch.id)
    assert (response.id, response.status) == (batch.id, "cancelling")
    assert sim.batch("fireworks", batch.id).status == "cancelling"
    assert not response.HasField("request_counts")  # a batch job has no request counts
    assert not response.HasField("cancelling_at") and not response.HasField("cancelled_at")
    assert not response.extra_fields.HasField("warning")


async def test_cancel_posts_an_empty_object_then_gets_the_job_with_the_keys_account(service, sim):
    batch = sim.seed("fireworks", new_id())
    await cancel(service, batch.id, metadata=(("authorization", "Bearer caller-secret"),))
    post, get = sim.calls("fireworks")
    job_path = f"/fireworks/v1/accounts/{ACCOUNT}/batchJobs/{batch.id}"
    assert (post["method"], post["path"], post["body"]) == ("POST", f"{job_path}:cancel", "{}")
    assert post["headers"]["Content-Type"] == "application/json"
    assert (get["method"], get["path"], get["body"]) == ("GET", job_path, "")
    for call in (post, get):
        assert call["headers"]["Authorization"] == f"Bearer {KEY}" and "caller-secret" not in str(call["headers"])


async def test_immediate_cancel_reports_cancelled_at_the_jobs_end_time(service, sim, monkeypatch):
    monkeypatch.setattr(FireworksSim, "cancel_immediately", True)
    batch = sim.seed("fireworks", new_id())
    response = await cancel(service, batch.id)
    state = sim.batch("fireworks", batch.id)
    assert (response.status, response.cancelled_at) == ("cancelled", state.cancelled_at)


async def test_full_resource_name_is_accepted_and_answered_as_sent(service, sim):
    batch = sim.seed("fireworks", new_id())
    name = f"accounts/{ACCOUNT}/batchJobs/{batch.id}"
    response = await cancel(service, name)
    assert (response.id, response.status) == (name, "cancelling")
    assert sim.calls("fireworks")[0]["path"] == f"/fireworks/v1/accounts/{ACCOUNT}/batchJobs/{batch.id}:cancel"


async def test_resource_name_of_another_account_is_refused_by_fireworks(service, sim):
    batch = sim.seed("fireworks", new_id())
    err, detail = await cancel_failure(service, f"accounts/someone-else/batchJobs/{batch.id}")
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (detail.status_code, detail.error.code) == (403, "PERMISSION_DENIED")
    assert sim.batch("fireworks", batch.id).status == "in_progress"


async def test_account_comes_from_the_key_config(sandbox, sim):
    batch = sim.seed("fireworks", new_id())
    async with running_service(config(sandbox, account="wrong-account")) as (_, stub):
        _, detail = await cancel_failure(stub, batch.id)
    assert detail.status_code == 403
    assert sim.calls("fireworks")[0]["path"].startswith("/fireworks/v1/accounts/wrong-account/batchJobs/")


@pytest.mark.parametrize(("status", "state"), [("completed", "COMPLETED"), ("cancelled", "CANCELLED")])
async def test_finished_job_is_a_conflict_with_fireworks_message(service, sim, status, state):
    batch = sim.seed("fireworks", new_id(), status=status)
    err, detail = await cancel_failure(service, batch.id)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (detail.status_code, detail.error.code, detail.is_bifrost_error) == (409, "FAILED_PRECONDITION", False)
    assert detail.error.message == f"batch job is in state {state} and cannot be cancelled"
    assert len(sim.calls("fireworks")) == 1  # no follow-up read after a refused cancel


async def test_unknown_job_is_not_found(service, sim):
    batch_id = new_id()
    err, detail = await cancel_failure(service, batch_id)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert (detail.status_code, detail.error.code) == (404, "NOT_FOUND")
    assert detail.error.message == f'batch job "accounts/{ACCOUNT}/batchJobs/{batch_id}" not found'


async def test_bad_credentials_are_unauthenticated(sandbox, sim):
    async with running_service(config(sandbox, key="fw_wrong_key_0000000")) as (_, stub):
        err, detail = await cancel_failure(stub, new_id())
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (detail.status_code, detail.error.code) == (401, "UNAUTHORIZED")
    assert "fw_wrong_key_0000000" not in str(detail)


async def test_rate_limited_cancel_keeps_429(service, sim):
    sim.add_fault("fireworks", {"status": 429})
    err, detail = await cancel_failure(service, new_id())
    assert (err.code(), detail.status_code, detail.error.code) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "RESOURCE_EXHAUSTED",
    )  # fmt: skip


@pytest.mark.parametrize("fault", [{"status": 503}, {"html": True}, {"malformed": True}, {"status": 404}])
async def test_failed_follow_up_read_still_reports_the_accepted_cancel(sandbox, sim, fault):
    batch = sim.seed("fireworks", new_id())
    sim.add_fault("fireworks", [{"latency_ms": 1}, fault])  # the cancel goes through, the read fails
    async with running_service(config(sandbox, send_back_raw_response=True)) as (_, stub):
        response = await cancel(stub, batch.id)
    assert (response.id, response.status) == (batch.id, "cancelling")
    assert response.extra_fields.warning.startswith("cancel accepted; reading the batch state afterwards failed")
    assert dict(response.extra_fields.raw_response.struct_value) == {"cancel": {}}
    assert sim.batch("fireworks", batch.id).status == "cancelling"


async def test_raw_response_holds_both_answers(sandbox, sim):
    batch = sim.seed("fireworks", new_id())
    async with running_service(config(sandbox, send_back_raw_response=True)) as (_, stub):
        response = await cancel(stub, batch.id)
    raw = response.extra_fields.raw_response.struct_value
    assert dict(raw["cancel"]) == {}
    assert (raw["retrieve"]["name"], raw["retrieve"]["state"]) == (
        f"accounts/{ACCOUNT}/batchJobs/{batch.id}", "CANCELLING",
    )  # fmt: skip
    assert KEY not in str(response)


@pytest.mark.parametrize(
    "batch_id",
    ["a/b", "accounts/x/batchInferenceJobs/j", "accounts/x/batchJobs/j/k", "accounts/../batchJobs/j", "a%2Fb", ".."],
)
async def test_other_slash_forms_never_reach_fireworks(service, sim, batch_id):
    err, detail = await cancel_failure(service, batch_id)
    assert (err.code(), detail.error.param) == (grpc.StatusCode.INVALID_ARGUMENT, "batch_id")
    assert sim.calls("fireworks") == []


async def test_the_same_job_read_as_a_batch_inference_job_parses_with_counts(sandbox, sim):
    """The simulator also serves the job under batchInferenceJobs (JOB_STATE_*, jobProgress); the
    adapter reads that shape too, should Fireworks answer it."""
    batch = sim.seed("fireworks", new_id(), request_counts={"total": 20, "completed": 7, "failed": 1})
    url = f"{sandbox.url}/fireworks/v1/accounts/{ACCOUNT}/batchInferenceJobs/{batch.id}"
    async with aiohttp.ClientSession() as http, http.get(url, headers={"Authorization": f"Bearer {KEY}"}) as resp:
        assert resp.status == 200
        data = await resp.json()
    assert (data["name"], data["state"]) == (f"accounts/{ACCOUNT}/batchInferenceJobs/{batch.id}", "JOB_STATE_RUNNING")
    adapter = FireworksAdapter(parse_config(config(sandbox), env={}).providers["fireworks"])
    state = adapter.parse_batch(batch.id, data)
    assert state.status == "in_progress"
    assert (state.counts.total, state.counts.completed, state.counts.failed) == (20, 7, 1)
