"""The provider sandbox: OpenAI and Azure batch-cancel simulation, faults, recording, admin API."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from sandbox import SIMULATOR_KEY, Fault, NotCancellable, SimBatch, Simulator, build_app, start

OPENAI_KEY = "sk-proj-sandboxSECRETvalue1234"
AZURE_KEY = "azure-SECRET-subscription-key-abcd"
KEYS = {"openai": [OPENAI_KEY], "azure": [AZURE_KEY]}
OPENAI_AUTH = {"Authorization": f"Bearer {OPENAI_KEY}"}
AZURE_AUTH = {"api-key": AZURE_KEY}
VERSION = {"api-version": "2024-10-21"}

BATCH_FIELDS = {
    "id", "object", "endpoint", "errors", "input_file_id", "completion_window", "status", "output_file_id",
    "error_file_id", "created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
    "expired_at", "cancelling_at", "cancelled_at", "request_counts", "metadata",
}  # fmt: skip


@asynccontextmanager
async def sandbox(**options):
    """A served sandbox app and its Simulator."""
    async with TestClient(TestServer(build_app(keys=KEYS, **options))) as client:
        yield client, client.app[SIMULATOR_KEY]


async def openai_cancel(client, batch_id, headers=OPENAI_AUTH):
    async with client.post(f"/openai/v1/batches/{batch_id}/cancel", headers=headers) as response:
        return response.status, await response.json(), response.headers


async def azure_cancel(client, batch_id, headers=AZURE_AUTH, params=VERSION):
    async with client.post(f"/azure/openai/batches/{batch_id}/cancel", headers=headers, params=params) as response:
        return response.status, await response.json(), response.headers


# --- OpenAI ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_openai_cancel_goes_cancelling_then_cancelled():
    async with sandbox() as (client, sim):
        sim.seed("openai", "batch_1", cancel_delay_s=0.05, request_counts={"total": 7, "completed": 3})
        before = int(time.time())
        status, body, headers = await openai_cancel(client, "batch_1")
        assert status == 200
        assert set(body) == BATCH_FIELDS
        assert headers["x-request-id"].startswith("req_")
        assert body["id"] == "batch_1" and body["object"] == "batch" and body["status"] == "cancelling"
        assert body["request_counts"] == {"total": 7, "completed": 3, "failed": 0}
        assert before <= body["cancelling_at"] <= time.time() and body["cancelled_at"] is None

        # A second cancel while cancelling answers the batch again.
        status, again, _ = await openai_cancel(client, "batch_1")
        assert (status, again["status"], again["cancelling_at"]) == (200, "cancelling", body["cancelling_at"])

        await asyncio.sleep(0.06)
        async with client.get("/openai/v1/batches/batch_1", headers=OPENAI_AUTH) as response:
            done = await response.json()
        assert done["status"] == "cancelled" and done["cancelled_at"] >= done["cancelling_at"]
        status, body, _ = await openai_cancel(client, "batch_1")
        assert status == 409 and body["error"]["message"] == "Cannot cancel a batch with status 'cancelled'."


@pytest.mark.asyncio
async def test_zero_delay_is_cancelled_on_the_next_read():
    async with sandbox() as (client, sim):
        sim.seed("openai", "b", cancel_delay_s=0)
        assert (await openai_cancel(client, "b"))[1]["status"] == "cancelling"
        assert sim.batch("openai", "b").status == "cancelled"


@pytest.mark.asyncio
async def test_openai_unknown_batch_is_404():
    async with sandbox() as (client, _):
        status, body, headers = await openai_cancel(client, "batch_nope")
        assert status == 404 and "x-request-id" in headers
        assert body == {
            "error": {
                "message": "No batch found with id 'batch_nope'.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }


@pytest.mark.asyncio
@pytest.mark.parametrize("finished", ["completed", "failed", "expired", "cancelled"])
async def test_openai_finished_batch_is_409(finished):
    async with sandbox() as (client, sim):
        sim.seed("openai", "done", status=finished)
        status, body, _ = await openai_cancel(client, "done")
        assert status == 409
        assert body == {
            "error": {
                "message": f"Cannot cancel a batch with status '{finished}'.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
        assert sim.batch("openai", "done").status == finished


@pytest.mark.asyncio
async def test_openai_bad_key_is_401_and_masked():
    async with sandbox() as (client, sim):
        sim.seed("openai", "b")
        wrong = "sk-proj-WRONGwrongWRONG9876"
        async with client.post("/openai/v1/batches/b/cancel", headers={"Authorization": f"Bearer {wrong}"}) as r:
            text = await r.text()
            assert r.status == 401
        assert wrong not in text and OPENAI_KEY not in text
        error = orjson.loads(text)["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        assert error["message"].startswith("Incorrect API key provided: sk-...9876.")

        status, body, _ = await openai_cancel(client, "b", headers={})
        assert status == 401 and body["error"]["message"].startswith("You didn't provide an API key.")
        # The Azure key is not an OpenAI key, and a refused call changes nothing.
        assert (await openai_cancel(client, "b", headers={"Authorization": f"Bearer {AZURE_KEY}"}))[0] == 401
        assert sim.batch("openai", "b").status == "in_progress"


@pytest.mark.asyncio
async def test_percent_encoded_ids_match_the_decoded_segment():
    async with sandbox() as (client, sim):
        sim.seed("openai", "a/b c")
        status, body, _ = await openai_cancel(client, "a%2Fb%20c")
        assert (status, body["id"]) == (200, "a/b c")
        assert (await openai_cancel(client, "a%2Fb"))[0] == 404
        assert sim.calls()[0]["path"] == "/openai/v1/batches/a%2Fb%20c/cancel"


@pytest.mark.asyncio
async def test_unknown_route_answers_like_the_provider_and_is_recorded():
    async with sandbox() as (client, sim):
        async with client.post("/openai/v1/batches/b/cancl", headers=OPENAI_AUTH) as r:
            assert r.status == 404
            assert (await r.json())["error"]["message"] == "Invalid URL (POST /v1/batches/b/cancl)"
        async with client.post("/azure/openai/batch/b/cancel", headers=AZURE_AUTH, params=VERSION) as r:
            assert (r.status, await r.json()) == (404, {"error": {"code": "404", "message": "Resource not found"}})
        assert [call["provider"] for call in sim.calls()] == ["openai", "azure"]


# --- Azure ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_azure_cancel_with_api_version_and_v1_route():
    async with sandbox() as (client, sim):
        sim.seed("azure", "batch_az")
        status, body, headers = await azure_cancel(client, "batch_az")
        assert (status, body["status"]) == (200, "cancelling") and set(body) == BATCH_FIELDS
        assert "apim-request-id" in headers and "x-request-id" in headers

        sim.seed("azure", "batch_v1")
        bearer = {"Authorization": f"Bearer {AZURE_KEY}"}
        async with client.post("/azure/openai/v1/batches/batch_v1/cancel", headers=bearer) as r:
            assert (r.status, (await r.json())["status"]) == (200, "cancelling")
        async with client.get("/azure/openai/batches/batch_v1", headers=AZURE_AUTH, params=VERSION) as r:
            assert (r.status, (await r.json())["id"]) == (200, "batch_v1")


@pytest.mark.asyncio
async def test_azure_requires_api_version():
    async with sandbox() as (client, sim):
        sim.seed("azure", "b")
        status, body, _ = await azure_cancel(client, "b", params={})
        assert (status, body) == (404, {"error": {"code": "404", "message": "Resource not found"}})
        assert sim.batch("azure", "b").status == "in_progress"


@pytest.mark.asyncio
async def test_azure_errors():
    async with sandbox() as (client, sim):
        sim.seed("azure", "done", status="completed")
        status, body, _ = await azure_cancel(client, "done", headers={"api-key": "wrong-key-123456789"})
        assert status == 401 and "wrong-key" not in orjson.dumps(body).decode()
        assert body == {
            "error": {
                "code": "401",
                "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
                "provide a valid key for an active subscription and use a correct regional API endpoint for "
                "your resource.",
            }
        }
        status, body, _ = await azure_cancel(client, "done")
        assert status == 409
        assert body["error"] == {
            "code": "409",
            "message": "Cannot cancel a batch with status 'completed'.",
            "param": None,
            "type": "invalid_request_error",
            "inner_error": None,
        }
        status, body, _ = await azure_cancel(client, "unknown")
        assert status == 404 and body["error"]["message"] == "No batch found with id 'unknown'."
        assert set(body["error"]) == {"code", "message", "param", "type", "inner_error"}


@pytest.mark.asyncio
async def test_azure_quirks_shape():
    async with sandbox(azure_quirks=True) as (client, sim):
        sim.seed("azure", "b", created_at=1_700_000_000)
        status, body, _ = await azure_cancel(client, "b")
        assert status == 200 and body["status"] == "Cancelling" and body["request_counts"] is None
        assert datetime.fromisoformat(body["created_at"]).timestamp() == 1_700_000_000
        assert isinstance(body["cancelling_at"], str) and body["cancelled_at"] is None
        sim.azure_quirks = False
        async with client.get("/azure/openai/v1/batches/b", headers=AZURE_AUTH) as r:
            plain = await r.json()
        assert plain["status"] == "cancelling" and plain["created_at"] == 1_700_000_000


# --- Faults ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_status_fault_with_retry_after_is_consumed_in_order():
    async with sandbox() as (client, sim):
        sim.seed("openai", "b")
        sim.add_fault("openai", [{"status": 429, "retry_after": 2, "count": 2}, {"status": 500}])
        for _ in range(2):
            status, body, headers = await openai_cancel(client, "b")
            assert (status, headers["Retry-After"]) == (429, "2")
            assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["type"] == "requests"
        status, body, headers = await openai_cancel(client, "b")
        assert status == 500 and "Retry-After" not in headers and body["error"]["type"] == "server_error"
        assert sim.batch("openai", "b").status == "in_progress"  # faulted calls change nothing
        assert (await openai_cancel(client, "b"))[1]["status"] == "cancelling"


@pytest.mark.asyncio
async def test_status_fault_with_raw_body_and_azure_envelope():
    async with sandbox() as (client, sim):
        sim.add_fault("azure", {"status": 503, "body": "upstream gone", "content_type": "text/plain; charset=utf-8"})
        sim.add_fault("azure", {"status": 429, "retry_after": 0.5})
        async with client.post("/azure/openai/batches/b/cancel", headers=AZURE_AUTH, params=VERSION) as r:
            assert (r.status, r.headers["Content-Type"], await r.text()) == (
                503,
                "text/plain; charset=utf-8",
                "upstream gone",
            )
        status, body, headers = await azure_cancel(client, "b")
        assert (status, headers["Retry-After"], body["error"]["code"]) == (429, "0.5", "429")


@pytest.mark.asyncio
async def test_latency_fault_delays_a_normal_answer():
    async with sandbox() as (client, sim):
        sim.seed("openai", "b")
        sim.add_fault("openai", {"latency_ms": 60})
        started = time.perf_counter()
        status, body, _ = await openai_cancel(client, "b")
        assert time.perf_counter() - started >= 0.06
        assert (status, body["status"]) == (200, "cancelling")


@pytest.mark.asyncio
async def test_reset_fault_drops_the_connection():
    async with sandbox() as (client, sim):
        sim.seed("openai", "b")
        sim.add_fault("openai", {"reset": True})
        with pytest.raises(aiohttp.ClientConnectionError):
            await openai_cancel(client, "b")
        assert (await openai_cancel(client, "b"))[0] == 200


@pytest.mark.asyncio
async def test_malformed_and_html_faults():
    async with sandbox() as (client, sim):
        sim.add_fault("openai", [{"malformed": True}, {"html": True}])
        async with client.post("/openai/v1/batches/b/cancel", headers=OPENAI_AUTH) as r:
            assert r.status == 200 and r.content_type == "application/json"
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(await r.read())
        async with client.post("/openai/v1/batches/b/cancel", headers=OPENAI_AUTH) as r:
            assert r.status == 502 and r.content_type == "text/html" and "<html>" in await r.text()


@pytest.mark.parametrize(
    "fault",
    [{}, {"status": 200}, {"status": "429"}, {"retry_after": 1}, {"latency_ms": -1}, {"count": 0, "reset": True},
     {"reset": 1}, {"explode": True}],
)  # fmt: skip
def test_invalid_faults_are_refused(fault):
    with pytest.raises(ValueError):
        Fault.parse(fault)


# --- Recording, auto-create, admin ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_calls_are_recorded():
    async with sandbox() as (client, sim):
        sim.seed("azure", "b")
        await openai_cancel(client, "x%2Fy")
        async with client.post(
            "/azure/openai/batches/b/cancel", headers={**AZURE_AUTH, "X-Trace": "t1"}, params=VERSION, data=b"{}"
        ):
            pass
        openai_call, azure_call = sim.calls()
        assert openai_call["provider"] == "openai" and openai_call["method"] == "POST"
        assert openai_call["path"] == "/openai/v1/batches/x%2Fy/cancel"
        assert openai_call["headers"]["Authorization"] == f"Bearer {OPENAI_KEY}" and openai_call["body"] == ""
        assert azure_call["query"] == VERSION and azure_call["headers"]["X-Trace"] == "t1"
        assert azure_call["body"] == "{}"
        assert sim.calls("azure") == [azure_call]

        async with client.get("/_sim/calls", params={"provider": "openai"}) as r:
            assert [call["path"] for call in await r.json()] == [openai_call["path"]]
        async with client.delete("/_sim/calls") as r:
            assert r.status == 204
        assert sim.calls() == []


@pytest.mark.asyncio
async def test_auto_create_and_missing_prefix():
    async with sandbox(auto_create=True) as (client, sim):
        status, body, _ = await openai_cancel(client, "batch_anything_123")
        assert (status, body["status"]) == (200, "cancelling")
        assert body["request_counts"] == {"total": 100, "completed": 10, "failed": 0}
        assert (await openai_cancel(client, "missing-batch"))[0] == 404
        status, body, _ = await azure_cancel(client, "missing_1")
        assert status == 404 and body["error"]["message"] == "No batch found with id 'missing_1'."
        sim.seed("openai", "missing-but-seeded")
        assert (await openai_cancel(client, "missing-but-seeded"))[0] == 200


@pytest.mark.asyncio
async def test_admin_api_seed_faults_and_reset():
    async with sandbox() as (client, sim):
        seed = {"id": "b9", "status": "finalizing", "request_counts": {"total": 5}, "cancel_delay_s": 0.05}
        async with client.post("/_sim/openai/batches", json=seed) as r:
            assert r.status == 201
            body = await r.json()
        assert (body["id"], body["status"], body["request_counts"]["total"]) == ("b9", "finalizing", 5)
        assert sim.batch("openai", "b9").cancel_delay_s == 0.05

        async with client.post("/_sim/openai/batches", json={"id": "x", "status": "bogus"}) as r:
            assert r.status == 400 and "status" in (await r.json())["error"]
        async with client.post("/_sim/nowhere/batches", json={"id": "x"}) as r:
            assert r.status == 404
        async with client.post("/_sim/openai/faults", json=[{"status": 503}, {"status": 429, "count": 2}]) as r:
            assert (r.status, await r.json()) == (200, {"pending": 3})
        async with client.post("/_sim/openai/faults", json={"status": "oops"}) as r:
            assert r.status == 400

        assert (await openai_cancel(client, "b9"))[0] == 503
        async with client.get("/_sim/openai/batches/b9") as r:
            assert (await r.json())["status"] == "finalizing"
        async with client.post("/_sim/reset") as r:
            assert r.status == 204
        assert sim.calls() == [] and sim.batch("openai", "b9") is None
        assert (await openai_cancel(client, "b9"))[0] == 404  # the queued 429s are gone too
        async with client.get("/_sim/openai/batches/b9") as r:
            assert r.status == 404


def test_batch_state_machine_in_process():
    batch = SimBatch("openai", "b", cancel_delay_s=1)
    batch.cancel(now=100.0)
    assert (batch.status, batch.cancelling_at) == ("cancelling", 100)
    assert batch.refresh(100.5).status == "cancelling"
    assert (batch.refresh(101.0).status, batch.cancelled_at) == ("cancelled", 101)
    with pytest.raises(NotCancellable):
        batch.cancel(now=102.0)
    with pytest.raises(ValueError):
        SimBatch("openai", "b", request_counts={"pending": 1})
    with pytest.raises(KeyError):
        Simulator(keys={}).seed("openai", "b")


@pytest.mark.asyncio
async def test_start_serves_on_a_free_port():
    app = build_app(keys=KEYS)
    app[SIMULATOR_KEY].seed("openai", "b")
    runner, port = await start(app)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/openai/v1/batches/b/cancel"
            async with session.post(url, headers=OPENAI_AUTH) as r:
                assert (r.status, (await r.json())["status"]) == (200, "cancelling")
    finally:
        await runner.cleanup()


def test_module_entry_point_prints_port_and_stops_on_sigterm():
    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "sandbox", "--port", "0", "--auto-create"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    with subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, text=True) as process:
        try:
            line = process.stdout.readline().strip()
            assert line.startswith("SANDBOX_PORT=") and int(line.split("=")[1]) > 0
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
