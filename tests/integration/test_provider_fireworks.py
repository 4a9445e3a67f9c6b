"""Fireworks over real gRPC against the Fireworks simulator: Fireworks has no documented cancel for
LLM batch inference jobs (the `fireworks-ai` SDK's batch_inference_jobs resource has create, list,
get and delete only), and its batchJobs cancel is for compute jobs. batchgate refuses the cancel
with 400 unsupported_operation and never calls Fireworks, with any key, id or caller."""

from __future__ import annotations

import aiohttp
import grpc
import pytest

from sandbox.fireworks import FireworksSim
from tests.support import cancel_failure

SIM = FireworksSim  # the `service` fixture (tests/conftest.py) runs batchgate with this simulator

ACCOUNT = FireworksSim.account_id


@pytest.mark.parametrize("batch_id", ["my-batch-job", f"accounts/{ACCOUNT}/batchInferenceJobs/my-batch-job",
                                      f"accounts/{ACCOUNT}/batchJobs/compute-job"])  # fmt: skip
async def test_cancel_is_unsupported_and_reaches_no_upstream(service, sim, batch_id):
    sim.seed("fireworks", "my-batch-job")
    err, detail = await cancel_failure(service, batch_id, provider="fireworks")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (detail.status_code, detail.is_bifrost_error, detail.error.code) == (400, True, "unsupported_operation")
    assert detail.extra_fields.provider == "fireworks"
    assert "no cancel for LLM batch inference jobs" in detail.error.message
    assert "compute jobs" in detail.error.message
    assert sim.calls("fireworks") == []
    assert sim.batch("fireworks", "my-batch-job").status == "in_progress"


async def test_the_simulator_serves_batch_inference_jobs_and_no_cancel(sandbox, sim):
    sim.seed("fireworks", "job-1", request_counts={"total": 10, "completed": 4, "failed": 1})
    headers = {"Authorization": f"Bearer {FireworksSim.default_key}"}
    base = f"{sandbox.url}/fireworks/v1/accounts/{ACCOUNT}"
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{base}/batchInferenceJobs/job-1") as resp:
            job = await resp.json()
        assert (resp.status, job["state"], job["jobProgress"]["totalInputRequests"]) == (200, "JOB_STATE_RUNNING", 10)
        for path in ("batchInferenceJobs/job-1:cancel", "batchJobs/job-1:cancel"):
            async with http.post(f"{base}/{path}", json={}) as resp:
                assert (resp.status, (await resp.json())["code"]) == (404, 5)
    assert sim.batch("fireworks", "job-1").status == "in_progress"
