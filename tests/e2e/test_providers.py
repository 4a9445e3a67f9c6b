"""Every simulated provider, end to end: a seeded batch cancelled through Envoy (REST) and through
gRPC (directly and via Envoy), checked against the simulator's own state; then the error cases
every provider must get right (unknown id, finished batch, bad credentials, rate limited) and the
ids that hold `/` (Gemini, Vertex, Bedrock) in every encoding the REST edge accepts.

Expectations are written per provider from its simulator's wire shape (sandbox/<provider>.py) and
its adapter's documented mapping (service/infra/providers/<provider>.py, README "Providers").
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf import json_format
from grpc_status import rpc_status

from gateway.stack import Stack, free_port
from sandbox.bedrock import ARN_PREFIX, BedrockSim
from sandbox.google import SANDBOX_PROJECT, SANDBOX_PROJECT_NUMBER, SANDBOX_REGION
from sandbox.server import SIMULATORS, gateway_config
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.gen.batchgate.v1 import batchgate_pb2_grpc as pb_grpc
from service.infra.providers.catalog import NO_BATCH_CANCEL
from tests.e2e.conftest import INTERNAL_HEADERS, Gateway, SimAdmin

# Simulated providers that batchgate cancels on (Fireworks is simulated but has no batch cancel).
PROVIDERS = [sim.name for sim in SIMULATORS if sim.name not in NO_BATCH_CANCEL]
# Providers whose cancel answers without the batch: batchgate reads it back with a GET.
FOLLOW_UP = frozenset({"gemini", "vertex", "bedrock", "cohere"})
SEEDED_COUNTS = {"total": 9, "completed": 4, "failed": 2}
BEDROCK_ACCESS_KEY = BedrockSim.default_key.split(":")[0]
VERTEX_JOBS = f"projects/{SANDBOX_PROJECT}/locations/{SANDBOX_REGION}/batchPredictionJobs"


def test_every_simulated_provider_is_covered() -> None:
    assert sorted(PROVIDERS) == sorted(
        ["openai", "azure", "anthropic", "gemini", "vertex", "bedrock", "mistral", "groq", "together", "xai", "cohere"]
    )
    assert [sim.name for sim in SIMULATORS if sim.name not in PROVIDERS] == ["fireworks"]


@pytest.mark.parametrize(
    "path",
    ["/v1/batches/{id}/cancel?provider=fireworks", "/openai/v1/batches/{id}/cancel?provider=fireworks",
     "/anthropic/v1/messages/batches/{id}/cancel"],
)  # fmt: skip
def test_fireworks_cancel_is_unsupported_and_never_reaches_fireworks(
    gw: Gateway, sim: SimAdmin, t0: float, path: str
) -> None:
    """Fireworks documents no cancel for LLM batch inference jobs (its batchJobs cancel is for compute
    jobs): a clear 400 before any upstream call, on every route."""
    job = sim.seed("fireworks", batch_id("fireworks"))
    headers = {"x-model-provider": "fireworks"} if path.startswith("/anthropic") else {}

    resp = gw.post(path.format(id=job), headers=headers)

    assert resp.status_code == 400, resp.text
    body = resp.json()
    message = body["error"]["message"]
    assert "no cancel for LLM batch inference jobs" in message and "compute jobs" in message
    if path.startswith("/anthropic"):
        assert body["error"]["type"] == "invalid_request_error"
    else:
        assert (body["is_bifrost_error"], body["error"]["code"]) == (True, "unsupported_operation")
    assert sim.calls("fireworks", since=t0) == []
    assert sim.batch("fireworks", job)["status"] == "in_progress"


def batch_id(provider: str, prefix: str = "b") -> str:
    """An id every simulator takes: Mistral's are UUIDs (its API refuses anything else with a 422);
    the rest get 12 lowercase hex digits, the shape of a Bedrock job id, behind `prefix`."""
    if provider == "mistral":
        return str(uuid.uuid4())
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def missing_id() -> str:
    """An id the auto-creating sandbox never knows (it starts with `missing`)."""
    return f"missing{uuid.uuid4().hex[:8]}"


def rest_json(resp) -> dict:
    assert resp.headers.get("content-type") == "application/json"
    assert [h for h in INTERNAL_HEADERS if h in resp.headers] == []
    return json.loads(resp.content)


def calls_for(sim: SimAdmin, provider: str, since: float, job: str) -> list[tuple[str, str]]:
    return [(c["method"], c["path"]) for c in sim.calls(provider, since=since, batch_id=job)]


@pytest.fixture(scope="module")
def direct_stub(stack: Stack) -> Iterator[pb_grpc.BatchServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        yield pb_grpc.BatchServiceStub(channel)


@pytest.fixture(scope="module", params=["envoy", "direct"])
def grpc_stub(request: pytest.FixtureRequest, stack: Stack) -> Iterator[pb_grpc.BatchServiceStub]:
    port = stack.http_port if request.param == "envoy" else stack.grpc_port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.BatchServiceStub(channel)


# --- what each provider reports after a cancel, from the simulator's state ---------------------


# Providers whose cancel answer carries the time the cancel was accepted.
CANCEL_TIME_IN_ANSWER = frozenset({"openai", "azure", "groq", "anthropic", "xai"})
# Providers whose follow-up read gives that time only while the batch is still stopping
# (Vertex: updateTime of a JOB_STATE_CANCELLING job; Bedrock: lastModifiedTime of a Stopping job).
CANCEL_TIME_WHILE_CANCELLING = frozenset({"vertex", "bedrock"})
# Cohere's batch has no cancel timestamps at all.
NO_CANCELLED_TIME = frozenset({"cohere"})


def expected_counts(provider: str, state: dict) -> dict | None:
    counts = state["request_counts"]
    total, done, failed = counts["total"], counts["completed"], counts["failed"]
    rest = total - done - failed
    openai_counts = {"total": total, "completed": done, "failed": failed}
    if provider in ("openai", "azure", "groq"):
        return openai_counts
    if provider == "bedrock":  # pending = totalRecordCount - processedRecordCount
        return {**openai_counts, "pending": rest}
    if provider == "anthropic":  # every request stays `processing` until the batch ends
        return {
            "total": total,
            "completed": 0,
            "failed": 0,
            "succeeded": 0,
            "expired": 0,
            "canceled": 0,
            "pending": total,
        }
    if provider in ("gemini", "vertex"):  # batchStats / completionStats, pending included
        return {**openai_counts, "succeeded": done, "pending": rest}
    if provider == "mistral":  # completed = succeeded (Mistral's completed_requests includes failures)
        return {"total": total, "completed": done, "failed": failed, "succeeded": done}
    if provider == "xai":
        cancelled = state["status"] == "cancelled"
        return {
            **openai_counts,
            "succeeded": done,
            "canceled": rest if cancelled else 0,
            "pending": 0 if cancelled else rest,
        }
    if provider == "cohere":
        return {**openai_counts, "succeeded": done}
    assert provider == "together"  # no request counts on the wire: none invented
    return None


def expected_result(provider: str, job: str, state: dict) -> dict:
    """The unified answer (without extra_fields) for a batch seeded with SEEDED_COUNTS and
    cancelled, given the simulator's state after the call (`GET /_sim/{provider}/batches/{id}`,
    OpenAI vocabulary). Numbers a provider does not report are absent, never invented."""
    status = state["status"]
    result: dict[str, Any] = {"id": job, "object": "batch", "status": status}
    counts = expected_counts(provider, state)
    if counts is not None:
        result["request_counts"] = counts
    if provider in CANCEL_TIME_IN_ANSWER or (provider in CANCEL_TIME_WHILE_CANCELLING and status == "cancelling"):
        result["cancelling_at"] = state["cancelling_at"]
    if status == "cancelled" and provider not in NO_CANCELLED_TIME:
        result["cancelled_at"] = state["cancelled_at"]
    return result


def without_extra(body: dict, provider: str) -> dict:
    """The answer minus extra_fields, after checking those."""
    body = dict(body)
    extra = body.pop("extra_fields")
    assert extra["provider"] == provider
    assert extra["request_type"] == "batch_cancel"
    return body


def expected_calls(provider: str) -> list[str]:
    return ["POST", "GET"] if provider in FOLLOW_UP else ["POST"]


# --- success: REST through Envoy ----------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_rest_cancel_matches_the_simulators_state(gw: Gateway, sim: SimAdmin, t0: float, provider: str) -> None:
    job = sim.seed(provider, batch_id(provider), request_counts=SEEDED_COUNTS)

    resp = gw.post(f"/v1/batches/{job}/cancel?provider={provider}")

    assert resp.status_code == 200, resp.text
    body = rest_json(resp)
    state = sim.batch(provider, job)
    # The cancel reached the provider: Together cancels at once, everyone else goes through cancelling.
    assert state["status"] == ("cancelled" if provider == "together" else "cancelling")
    assert without_extra(body, provider) == expected_result(provider, job, state)
    assert [m for m, _ in calls_for(sim, provider, t0, job)] == expected_calls(provider)


# --- success: gRPC, directly and through Envoy ----------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_grpc_cancel_matches_the_simulators_state(
    grpc_stub: pb_grpc.BatchServiceStub, sim: SimAdmin, t0: float, provider: str
) -> None:
    job = sim.seed(provider, batch_id(provider), request_counts=SEEDED_COUNTS)

    resp = grpc_stub.Cancel(pb.CancelBatchRequest(batch_id=job, provider=provider), timeout=10)

    answer = json_format.MessageToDict(resp, preserving_proto_field_name=True)
    state = sim.batch(provider, job)
    assert without_extra(answer, provider) == expected_result(provider, job, state)
    assert [m for m, _ in calls_for(sim, provider, t0, job)] == expected_calls(provider)


@pytest.mark.parametrize("provider", sorted(FOLLOW_UP))
def test_follow_up_read_reports_a_batch_that_is_already_cancelled(gw: Gateway, sim: SimAdmin, provider: str) -> None:
    """With no cancel delay the follow-up GET already sees the batch cancelled: the answer says
    `cancelled`, with the provider's end time where it gives one."""
    job = sim.seed(provider, batch_id(provider), request_counts=SEEDED_COUNTS, cancel_delay_s=0)

    resp = gw.post(f"/v1/batches/{job}/cancel?provider={provider}")

    assert resp.status_code == 200, resp.text
    state = sim.batch(provider, job)
    assert state["status"] == "cancelled"
    body = without_extra(rest_json(resp), provider)
    assert body == expected_result(provider, job, state)
    assert body["status"] == "cancelled"


def test_mistral_completed_count_is_successes_only(gw: Gateway, sim: SimAdmin) -> None:
    job = sim.seed("mistral", batch_id("mistral"), request_counts=SEEDED_COUNTS)

    resp = gw.post(f"/v1/batches/{job}/cancel?provider=mistral")

    assert resp.status_code == 200
    assert resp.json()["request_counts"]["completed"] == sim.batch("mistral", job)["request_counts"]["completed"] == 4


# --- unknown id -----------------------------------------------------------------------------------

UNKNOWN_MESSAGES = {
    "openai": "No batch found with id '{id}'.",
    "azure": "No batch found with id '{id}'.",
    "groq": "No batch found with id '{id}'.",
    "anthropic": "message_batch_id '{id}' was not found.",
    "gemini": "Requested entity was not found.",
    "vertex": 'The BatchPredictionJob "' + VERTEX_JOBS + '/{id}" does not exist.',
    "bedrock": "Could not find model invocation job {id}.",
    "together": "batch job {id} not found",
    "xai": "Batch {id} not found",
    "cohere": "batch {id} not found",
}


def assert_grpc_error(
    stub: pb_grpc.BatchServiceStub, job: str, provider: str, code: grpc.StatusCode, status: int, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Cancel(pb.CancelBatchRequest(batch_id=job, provider=provider), timeout=10)
    assert info.value.code() == code
    detail = pb.ErrorDetail()
    assert rpc_status.from_call(info.value).details[0].Unpack(detail)
    assert (detail.status_code, detail.error.message, detail.extra_fields.provider) == (status, message, provider)
    assert detail.is_bifrost_error is False


@pytest.mark.parametrize("provider", [p for p in PROVIDERS if p != "mistral"])
def test_unknown_batch_keeps_the_providers_404(
    gw: Gateway, sim: SimAdmin, direct_stub: pb_grpc.BatchServiceStub, t0: float, provider: str
) -> None:
    job = missing_id()
    message = UNKNOWN_MESSAGES[provider].format(id=job)

    resp = gw.post(f"/v1/batches/{job}/cancel?provider={provider}")

    assert resp.status_code == 404
    body = rest_json(resp)
    assert body["status_code"] == 404 and body["is_bifrost_error"] is False
    assert body["error"]["message"] == message
    assert body["extra_fields"] == {"provider": provider, "request_type": "batch_cancel"}
    assert [m for m, _ in calls_for(sim, provider, t0, job)] == ["POST"]  # no retry, no follow-up read
    assert_grpc_error(direct_stub, job, provider, grpc.StatusCode.NOT_FOUND, 404, message)


def test_unknown_mistral_id_that_is_not_a_uuid_keeps_mistrals_422(gw: Gateway, sim: SimAdmin, t0: float) -> None:
    job = missing_id()

    resp = gw.post(f"/v1/batches/{job}/cancel?provider=mistral")

    assert resp.status_code == 422
    body = rest_json(resp)
    assert body["status_code"] == 422 and body["is_bifrost_error"] is False
    assert body["error"]["param"] == "job_id"
    assert body["error"]["message"].startswith("path.job_id: Input should be a valid UUID")
    assert len(calls_for(sim, "mistral", t0, job)) == 1


def test_unknown_mistral_job_keeps_mistrals_404(gw: Gateway, faults: SimAdmin, t0: float) -> None:
    """The auto-creating sandbox knows every UUID, so Mistral's 404 comes from a queued answer."""
    job = batch_id("mistral")
    faults.add_faults("mistral", {"status": 404, "body": '{"detail": "Batch job not found"}'})

    resp = gw.post(f"/v1/batches/{job}/cancel?provider=mistral")

    assert resp.status_code == 404
    body = rest_json(resp)
    assert (body["status_code"], body["is_bifrost_error"]) == (404, False)
    assert body["error"]["message"] == "Batch job not found"
    assert body["extra_fields"]["provider"] == "mistral"


# --- finished batch -------------------------------------------------------------------------------

# provider -> (HTTP status batchgate answers, the provider's message). README: 409 for the
# OpenAI family, Bedrock, Google and xAI; the provider's own status otherwise.
FINISHED = {
    "openai": (409, "Cannot cancel a batch with status 'completed'."),
    "azure": (409, "Cannot cancel a batch with status 'completed'."),
    "groq": (409, "Cannot cancel a batch with status 'completed'."),
    "anthropic": (400, "Message Batch {id} has already ended and can no longer be canceled."),
    "gemini": (409, "Batch batches/{id} is in state BATCH_STATE_SUCCEEDED and cannot be cancelled."),
    "vertex": (
        409,
        "BatchPredictionJob " + VERTEX_JOBS + "/{id} is in state JOB_STATE_SUCCEEDED and cannot be cancelled.",
    ),
    "bedrock": (409, "Job " + ARN_PREFIX + "{id} cannot be stopped because it is in Completed status."),
    "mistral": (400, "Batch job {id} is SUCCESS and cannot be cancelled"),
    "together": (400, "cannot cancel batch job {id} with status COMPLETED"),
    "xai": (409, "Batch {id} has already finished"),
    "cohere": (400, "batch {id} is BATCH_STATUS_COMPLETED and cannot be canceled"),
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_finished_batch_answers_the_documented_status(
    gw: Gateway, sim: SimAdmin, direct_stub: pb_grpc.BatchServiceStub, t0: float, provider: str
) -> None:
    job = sim.seed(provider, batch_id(provider), status="completed")
    status, template = FINISHED[provider]
    message = template.format(id=job)

    resp = gw.post(f"/v1/batches/{job}/cancel?provider={provider}")

    assert resp.status_code == status
    body = rest_json(resp)
    assert (body["status_code"], body["is_bifrost_error"]) == (status, False)
    assert body["error"]["message"] == message
    assert body["extra_fields"] == {"provider": provider, "request_type": "batch_cancel"}
    assert sim.batch(provider, job)["status"] == "completed"
    assert [m for m, _ in calls_for(sim, provider, t0, job)] == ["POST"]  # refused: no retry, no read
    code = grpc.StatusCode.FAILED_PRECONDITION if status == 409 else grpc.StatusCode.INVALID_ARGUMENT
    assert_grpc_error(direct_stub, job, provider, code, status, message)


# --- bad credentials: a second gateway with every secret wrong, on the same sandbox ----------------

WRONG_SECRET = "wrongsecret0bad0credentials0000"


def wrong_credentials_config(sandbox_url: str) -> tuple[dict, dict[str, str]]:
    """The sandbox-mode config with every key value / secret replaced, and the wrong secret per
    provider (to check it never shows in an answer)."""
    config = copy.deepcopy(gateway_config(sandbox_url))
    secrets: dict[str, str] = {}
    other_key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    for name, provider in config["providers"].items():
        for key in provider["keys"]:
            if "vertex_key_config" in key:  # a service account signed with a key Google does not know
                key["vertex_key_config"]["auth_credentials"]["private_key"] = other_key
                secrets[name] = other_key.splitlines()[1]
            elif "bedrock_key_config" in key:  # the sandbox's access key, a wrong secret
                key["bedrock_key_config"]["secret_key"] = f"{WRONG_SECRET}/bedrock"
                secrets[name] = key["bedrock_key_config"]["secret_key"]
            else:
                key["value"] = f"{WRONG_SECRET}-{name}"
                secrets[name] = key["value"]
    return config, secrets


@pytest.fixture(scope="module")
def bad_credentials(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict]]:
    tmp = Path(tmp_path_factory.mktemp("bad-credentials"))
    config, secrets = wrong_credentials_config(stack.sandbox_url)
    (tmp / "config.json").write_text(json.dumps(config))
    other = Stack(
        config=tmp / "config.json",
        http_port=free_port(),
        grpc_port=free_port(),
        admin_port=free_port(),
        log_dir=tmp / "logs",
    )
    other.start()
    try:
        yield Gateway(other), secrets
    finally:
        other.stop()


# provider -> (status, error type). Gemini says a bad key with 400 INVALID_ARGUMENT (kept, typed
# as an authentication error); AWS refuses a wrong secret with 403 InvalidSignatureException; xAI's
# 400 "Incorrect API key" is reported as the 401 it means.
BAD_CREDENTIALS = {
    "openai": (401, "invalid_request_error"),
    "azure": (401, "provider_error"),
    "groq": (401, "invalid_request_error"),
    "anthropic": (401, "authentication_error"),
    "gemini": (400, "authentication_error"),
    "vertex": (401, "authentication_error"),
    "bedrock": (403, "InvalidSignatureException"),
    "mistral": (401, "provider_error"),
    "together": (401, "invalid_request_error"),
    "xai": (401, "authentication_error"),
    "cohere": (401, "provider_error"),
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_bad_credentials_are_refused_by_the_provider(
    bad_credentials: tuple[Gateway, dict], sim: SimAdmin, t0: float, provider: str
) -> None:
    gw, secrets = bad_credentials
    job = sim.seed(provider, batch_id(provider))
    status, error_type = BAD_CREDENTIALS[provider]

    resp = gw.post(f"/v1/batches/{job}/cancel?provider={provider}")

    assert resp.status_code == status, resp.text
    body = rest_json(resp)
    assert (body["status_code"], body["is_bifrost_error"], body["error"]["type"]) == (status, False, error_type)
    assert body["extra_fields"]["provider"] == provider
    assert secrets[provider] not in resp.text
    assert WRONG_SECRET not in resp.text
    assert "Canonical String" not in body["error"]["message"]  # AWS echoes the canonical request
    assert sim.batch(provider, job)["status"] == "in_progress"
    calls = sim.calls(provider, since=t0, batch_id=job)
    if provider == "vertex":
        assert calls == []  # the token endpoint refused the service account: no API call at all
        assert [c["path"] for c in sim.calls("vertex", since=t0)] == ["/vertex/token"]
    else:
        assert len(calls) == 1  # refused, not retried (the only key)
        headers = calls[0]["headers"]
        if provider == "bedrock":
            assert headers["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={BEDROCK_ACCESS_KEY}/")
        else:
            assert any(secrets[provider] in value for value in headers.values()), "not the second gateway's key"


# --- rate limited ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_rate_limit_after_retries_is_a_429(gw: Gateway, faults: SimAdmin, t0: float, provider: str) -> None:
    job = faults.seed(provider, batch_id(provider))
    faults.add_faults(provider, {"status": 429, "retry_after": 0, "count": 3})  # 1 try + max_retries=2

    resp = gw.post(f"/v1/batches/{job}/cancel?provider={provider}")

    assert resp.status_code == 429, resp.text
    body = rest_json(resp)
    assert (body["status_code"], body["is_bifrost_error"]) == (429, False)
    assert body["extra_fields"]["provider"] == provider
    assert body["error"]["message"]
    calls = calls_for(faults, provider, t0, job)
    assert [method for method, _ in calls] == ["POST"] * 3  # 1 try + 2 retries, all refused
    assert faults.batch(provider, job)["status"] == "in_progress"


# --- ids that hold `/` ----------------------------------------------------------------------------


def _vertex_name(job: str, project: str = SANDBOX_PROJECT) -> str:
    return f"projects/{project}/locations/{SANDBOX_REGION}/batchPredictionJobs/{job}"


def _b64url(text: str, padded: bool) -> str:
    encoded = base64.urlsafe_b64encode(text.encode()).decode()
    return encoded if padded else encoded.rstrip("=")


# case -> (provider, the id the caller sends for a seeded job id)
SLASH_IDS = {
    "gemini batches/x": ("gemini", lambda j: f"batches/{j}"),
    "gemini batches-x": ("gemini", lambda j: f"batches-{j}"),
    "vertex resource name": ("vertex", lambda j: _vertex_name(j)),
    "vertex resource name with project number": ("vertex", lambda j: _vertex_name(j, SANDBOX_PROJECT_NUMBER)),
    "vertex base64url unpadded": ("vertex", lambda j: _b64url(_vertex_name(j), padded=False)),
    "vertex base64url padded": ("vertex", lambda j: _b64url(_vertex_name(j), padded=True)),
    "bedrock arn": ("bedrock", lambda j: ARN_PREFIX + j),
    "bedrock arn base64": ("bedrock", lambda j: base64.b64encode((ARN_PREFIX + j).encode()).decode()),
    "bedrock arn base64url unpadded": ("bedrock", lambda j: _b64url(ARN_PREFIX + j, padded=False)),
}
# provider -> the upstream cancel path for (seeded job id, id sent)
UPSTREAM_PATHS = {
    "gemini": lambda j, sent: f"/gemini/v1beta/batches/{j}:cancel",
    "vertex": lambda j, sent: (
        f"/vertex/v1/projects/{SANDBOX_PROJECT_NUMBER if SANDBOX_PROJECT_NUMBER in sent else SANDBOX_PROJECT}"
        f"/locations/{SANDBOX_REGION}/batchPredictionJobs/{j}:cancel"
    ),
    "bedrock": lambda j, sent: f"/bedrock/model-invocation-job/{quote(ARN_PREFIX + j, safe='')}/stop",
}


@pytest.mark.parametrize("case", list(SLASH_IDS))
def test_slash_ids_through_rest_answer_the_form_sent(gw: Gateway, sim: SimAdmin, t0: float, case: str) -> None:
    provider, form = SLASH_IDS[case]
    job = sim.seed(provider, batch_id(provider, "v"))  # 13 characters: the padded base64 has `==`
    sent = form(job)

    resp = gw.post(f"/v1/batches/{quote(sent, safe='')}/cancel?provider={provider}")

    assert resp.status_code == 200, resp.text
    body = rest_json(resp)
    assert body["id"] == sent
    assert body["status"] == "cancelling"
    assert sim.batch(provider, job)["status"] == "cancelling"
    calls = calls_for(sim, provider, t0, job)
    assert calls[0] == ("POST", UPSTREAM_PATHS[provider](job, sent))


@pytest.mark.parametrize("case", list(SLASH_IDS))
def test_slash_ids_through_grpc_answer_the_form_sent(
    direct_stub: pb_grpc.BatchServiceStub, sim: SimAdmin, case: str
) -> None:
    provider, form = SLASH_IDS[case]
    job = sim.seed(provider, batch_id(provider, "v"))
    sent = form(job)

    resp = direct_stub.Cancel(pb.CancelBatchRequest(batch_id=sent, provider=provider), timeout=10)

    assert (resp.id, resp.status) == (sent, "cancelling")
    assert sim.batch(provider, job)["status"] == "cancelling"


def test_percent_encoded_slash_in_a_plain_id_is_still_refused(gw: Gateway, sim: SimAdmin, t0: float) -> None:
    """Decoding `%2F` for the providers whose ids hold `/` must not open it for the others."""
    resp = gw.post(f"/v1/batches/{quote('a/b', safe='')}/cancel?provider=anthropic")

    assert resp.status_code == 400
    assert rest_json(resp)["error"]["param"] == "batch_id"
    assert sim.calls("anthropic", since=t0) == []
