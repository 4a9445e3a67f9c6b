"""The drop-in routes, driven by the official SDKs (unchanged but for their base URL) through the
Envoy edge: Anthropic (`/anthropic`), Google GenAI (`/genai`) and boto3 Bedrock (`/bedrock`).

Each SDK must get its provider's typed result and typed exceptions; errors (the provider's and the
gateway's own) come in the provider's envelope; the caller's SDK credentials never reach the
provider (the gateway sends its configured ones).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import anthropic
import boto3
import botocore.exceptions
import grpc
import pytest
import requests
from anthropic._constants import ANTHROPIC_API_VERSION
from anthropic.types.messages import MessageBatch
from google import genai
from google.genai import errors as genai_errors

from gateway.stack import Stack
from sandbox.anthropic import AnthropicSim
from sandbox.bedrock import ARN_PREFIX, BedrockSim
from sandbox.google import GeminiSim
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.gen.batchgate.v1 import batchgate_pb2_grpc as pb_grpc
from tests.e2e.conftest import OPENAI_KEY, Gateway, SimAdmin

COUNTS = {"total": 9, "completed": 4, "failed": 2}
BEDROCK_ACCESS_KEY = BedrockSim.default_key.split(":")[0]


def hex_id(prefix: str = "") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def only_calls(sim: SimAdmin, since: float, job: str) -> list[tuple[str, str, str]]:
    return [(c["provider"], c["method"], c["path"]) for c in sim.calls(since=since, batch_id=job)]


# === Anthropic ====================================================================================


@pytest.fixture(scope="module")
def claude(stack: Stack) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=f"{stack.http_url}/anthropic", api_key="anything", max_retries=0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def claude_upstream(stack: Stack) -> Iterator[anthropic.Anthropic]:
    """The Anthropic SDK pointed straight at the simulator with the sandbox key: the provider's own view."""
    client = anthropic.Anthropic(
        base_url=f"{stack.sandbox_url}/anthropic", api_key=AnthropicSim.default_key, max_retries=0
    )
    yield client
    client.close()


def test_anthropic_cancel_returns_a_message_batch(
    claude: anthropic.Anthropic, claude_upstream: anthropic.Anthropic, sim: SimAdmin, t0: float
) -> None:
    job = sim.seed("anthropic", hex_id("msgbatch_"), request_counts=COUNTS)

    batch = claude.messages.batches.cancel(job)

    assert isinstance(batch, MessageBatch)
    assert (batch.id, batch.type, batch.processing_status) == (job, "message_batch", "canceling")
    state = sim.batch("anthropic", job)
    assert state["status"] == "cancelling"
    assert batch.cancel_initiated_at == utc(state["cancelling_at"])
    assert batch.ended_at is None
    # The same tallies Anthropic itself reports for the batch.
    own = claude_upstream.messages.batches.retrieve(job)
    assert batch.request_counts == own.request_counts
    assert batch.request_counts.model_dump() == {
        "processing": 9,
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert batch.cancel_initiated_at == own.cancel_initiated_at
    calls = [c for c in sim.calls("anthropic", since=t0, batch_id=job) if c["method"] == "POST"]
    assert [c["path"] for c in calls] == [f"/anthropic/v1/messages/batches/{job}/cancel"]
    assert calls[0]["headers"]["x-api-key"] == AnthropicSim.default_key  # not the SDK's "anything"
    assert "Authorization" not in calls[0]["headers"]


def test_anthropic_sdks_version_reaches_anthropic(claude: anthropic.Anthropic, sim: SimAdmin, t0: float) -> None:
    """The caller's SDK chose the anthropic-version whose shape it reads: the /anthropic route sends
    that one upstream (the SDK's default, or one it sets), not the gateway's configured version."""
    default, chosen = sim.seed("anthropic", hex_id("msgbatch_")), sim.seed("anthropic", hex_id("msgbatch_"))

    claude.messages.batches.cancel(default)
    claude.messages.batches.cancel(chosen, extra_headers={"anthropic-version": "2024-01-01"})

    sent = {c["path"].split("/")[-2]: c["headers"]["anthropic-version"] for c in sim.calls("anthropic", since=t0)}
    assert sent == {default: ANTHROPIC_API_VERSION, chosen: "2024-01-01"}


def test_anthropic_sdks_malformed_version_is_a_400_in_anthropics_shape(
    claude: anthropic.Anthropic, sim: SimAdmin, t0: float
) -> None:
    job = sim.seed("anthropic", hex_id("msgbatch_"))

    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.batches.cancel(job, extra_headers={"anthropic-version": "latest"})

    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in err.value.body["error"]["message"]
    assert sim.calls("anthropic", since=t0) == []


def test_anthropic_message_batch_keeps_the_required_times(
    claude: anthropic.Anthropic, claude_upstream: anthropic.Anthropic, sim: SimAdmin
) -> None:
    job = sim.seed("anthropic", hex_id("msgbatch_"))

    raw = claude.messages.batches.with_raw_response.cancel(job)

    body = raw.http_response.json()
    MessageBatch.model_validate(body, strict=False)  # pydantic: created_at/expires_at are required
    own = claude_upstream.messages.batches.retrieve(job)
    assert raw.parse().created_at == own.created_at
    assert raw.parse().expires_at == own.expires_at


def test_anthropic_unknown_batch_raises_not_found(claude: anthropic.Anthropic) -> None:
    job = hex_id("missing_")

    with pytest.raises(anthropic.NotFoundError) as err:
        claude.messages.batches.cancel(job)

    assert err.value.status_code == 404
    assert err.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": f"message_batch_id '{job}' was not found."},
    }


def test_anthropic_ended_batch_raises_the_providers_bad_request(claude: anthropic.Anthropic, sim: SimAdmin) -> None:
    job = sim.seed("anthropic", hex_id("msgbatch_"), status="completed")

    with pytest.raises(anthropic.BadRequestError) as err:  # the simulator's default answer: 400
        claude.messages.batches.cancel(job)

    assert err.value.status_code == 400
    assert err.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": f"Message Batch {job} has already ended and can no longer be canceled.",
        },
    }
    assert sim.batch("anthropic", job)["status"] == "completed"


def test_anthropic_route_cancels_an_openai_batch_in_anthropic_shape(
    claude: anthropic.Anthropic, sim: SimAdmin, t0: float
) -> None:
    job = sim.seed("openai", hex_id("batch_"), request_counts=COUNTS)

    batch = claude.messages.batches.cancel(job, extra_headers={"x-model-provider": "openai"})

    assert isinstance(batch, MessageBatch)
    assert (batch.id, batch.type, batch.processing_status) == (job, "message_batch", "canceling")
    # OpenAI's total 9 = 4 completed + 2 failed + 3 still running.
    assert batch.request_counts.model_dump() == {
        "processing": 3,
        "succeeded": 4,
        "errored": 2,
        "canceled": 0,
        "expired": 0,
    }
    state = sim.batch("openai", job)
    assert state["status"] == "cancelling"
    assert batch.cancel_initiated_at == utc(state["cancelling_at"])
    calls = sim.calls(since=t0, batch_id=job)
    assert [(c["provider"], c["path"]) for c in calls] == [("openai", f"/openai/v1/batches/{job}/cancel")]
    assert calls[0]["headers"]["Authorization"] == f"Bearer {OPENAI_KEY}"


def test_anthropic_route_reports_a_batch_cancelled_at_once_as_ended(claude: anthropic.Anthropic, sim: SimAdmin) -> None:
    job = sim.seed("together", hex_id())  # Together cancels straight to CANCELLED

    batch = claude.messages.batches.cancel(job, extra_headers={"x-model-provider": "together"})

    state = sim.batch("together", job)
    assert state["status"] == "cancelled"
    assert (batch.id, batch.processing_status) == (job, "ended")
    assert batch.ended_at == utc(state["cancelled_at"])


def test_anthropic_route_marks_a_cancelled_batch_as_cancel_initiated(
    claude: anthropic.Anthropic, sim: SimAdmin
) -> None:
    job = sim.seed("together", hex_id())

    batch = claude.messages.batches.cancel(job, extra_headers={"x-model-provider": "together"})

    assert batch.processing_status == "ended"
    assert batch.cancel_initiated_at is not None


def test_anthropic_route_gateway_error_is_in_anthropics_envelope(
    claude: anthropic.Anthropic, sim: SimAdmin, t0: float
) -> None:
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.batches.cancel(hex_id("msgbatch_"), extra_headers={"x-model-provider": "nope"})

    assert err.value.status_code == 400
    assert err.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "unknown provider: nope"},
    }
    assert sim.calls(since=t0) == []


def test_anthropic_route_keeps_a_conflict_from_another_provider(claude: anthropic.Anthropic, sim: SimAdmin) -> None:
    job = sim.seed("openai", hex_id("batch_"), status="completed")

    with pytest.raises(anthropic.ConflictError) as err:
        claude.messages.batches.cancel(job, extra_headers={"x-model-provider": "openai"})

    assert err.value.status_code == 409
    assert err.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "Cannot cancel a batch with status 'completed'."},
    }


# === Google GenAI =================================================================================


class RecordingGenAI:
    """A google-genai client on the edge that remembers the requests it sent."""

    def __init__(self, base_url: str, api_version: str | None) -> None:
        self.api_version = api_version
        self.sent: list[tuple[str, str, dict]] = []
        options: dict[str, Any] = {
            "base_url": base_url,
            "client_args": {
                "event_hooks": {"request": [lambda r: self.sent.append((r.method, str(r.url), dict(r.headers)))]}
            },
        }
        if api_version is not None:
            options["api_version"] = api_version
        self.client = genai.Client(api_key="anything", http_options=options)


@pytest.fixture(scope="module", params=["sdk-default", "v1", "v1beta"])
def gemini(request: pytest.FixtureRequest, stack: Stack) -> RecordingGenAI:
    version = None if request.param == "sdk-default" else request.param
    return RecordingGenAI(f"{stack.http_url}/genai", version)


def test_genai_cancel_succeeds_and_the_batch_is_cancelled(gemini: RecordingGenAI, sim: SimAdmin, t0: float) -> None:
    job = sim.seed("gemini", hex_id(), request_counts=COUNTS)

    assert gemini.client.batches.cancel(name=f"batches/{job}") is None

    assert sim.batch("gemini", job)["status"] == "cancelling"
    # The SDK's route: whichever version it picked is served (this SDK's default is one of them).
    (method, url, headers) = gemini.sent[-1]
    assert method == "POST"
    version = url.split("/genai/", 1)[1].split("/", 1)[0]
    assert version == (gemini.api_version or version) and version in ("v1", "v1beta")
    assert url.endswith(f"/genai/{version}/batches/{job}:cancel")
    calls = sim.calls("gemini", since=t0, batch_id=job)
    assert [(c["method"], c["path"]) for c in calls] == [
        ("POST", f"/gemini/v1beta/batches/{job}:cancel"),
        ("GET", f"/gemini/v1beta/batches/{job}"),
    ]
    assert {c["headers"]["x-goog-api-key"] for c in calls} == {GeminiSim.default_key}  # not "anything"


def test_genai_unknown_batch_raises_client_error_404(gemini: RecordingGenAI) -> None:
    with pytest.raises(genai_errors.ClientError) as err:
        gemini.client.batches.cancel(name=f"batches/{hex_id('missing')}")

    assert (err.value.code, err.value.status) == (404, "NOT_FOUND")
    assert err.value.details == {
        "error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}
    }


def test_genai_finished_batch_raises_failed_precondition(gemini: RecordingGenAI, sim: SimAdmin) -> None:
    job = sim.seed("gemini", hex_id(), status="completed")

    with pytest.raises(genai_errors.ClientError) as err:
        gemini.client.batches.cancel(name=f"batches/{job}")

    assert (err.value.code, err.value.status) == (400, "FAILED_PRECONDITION")
    assert err.value.message == f"Batch batches/{job} is in state BATCH_STATE_SUCCEEDED and cannot be cancelled."
    assert err.value.details == {"error": {"code": 400, "message": err.value.message, "status": "FAILED_PRECONDITION"}}
    assert sim.batch("gemini", job)["status"] == "completed"


def test_genai_route_can_cancel_an_openai_batch(gemini: RecordingGenAI, sim: SimAdmin) -> None:
    job = sim.seed("openai", hex_id("batch_"))

    result = gemini.client.batches.cancel(
        name=f"batches/{job}", config={"http_options": {"headers": {"x-model-provider": "openai"}}}
    )

    assert result is None
    assert sim.batch("openai", job)["status"] == "cancelling"


def test_genai_route_gateway_error_is_in_googles_envelope(gemini: RecordingGenAI, sim: SimAdmin, t0: float) -> None:
    with pytest.raises(genai_errors.ClientError) as err:
        gemini.client.batches.cancel(
            name=f"batches/{hex_id()}", config={"http_options": {"headers": {"x-model-provider": "nope"}}}
        )

    assert (err.value.code, err.value.status) == (400, "INVALID_ARGUMENT")
    assert err.value.details == {
        "error": {"code": 400, "message": "unknown provider: nope", "status": "INVALID_ARGUMENT"}
    }
    assert sim.calls(since=t0) == []


# === boto3 Bedrock ================================================================================


@pytest.fixture(scope="module")
def bedrock(stack: Stack) -> Any:
    return boto3.client(
        "bedrock",
        endpoint_url=f"{stack.http_url}/bedrock",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
    )


@pytest.mark.parametrize("form", ["arn", "job id"])
def test_boto3_stop_model_invocation_job(bedrock: Any, sim: SimAdmin, t0: float, form: str) -> None:
    job = sim.seed("bedrock", hex_id(), request_counts=COUNTS)
    identifier = ARN_PREFIX + job if form == "arn" else job

    answer = bedrock.stop_model_invocation_job(jobIdentifier=identifier)

    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert set(answer) == {"ResponseMetadata"}  # StopModelInvocationJob has no output members
    assert sim.batch("bedrock", job)["status"] == "cancelling"
    calls = sim.calls("bedrock", since=t0, batch_id=job)
    segment = identifier.replace(":", "%3A").replace("/", "%2F")
    assert [(c["method"], c["path"]) for c in calls] == [
        ("POST", f"/bedrock/model-invocation-job/{segment}/stop"),
        ("GET", f"/bedrock/model-invocation-job/{segment}"),
    ]
    # The caller's SigV4 (access key "x") stays at the gateway; the provider sees the gateway's own.
    for call in calls:
        authorization = call["headers"]["Authorization"]
        assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential={BEDROCK_ACCESS_KEY}/")
        assert "Credential=x/" not in json.dumps(call["headers"])


def test_boto3_unknown_job_raises_resource_not_found(bedrock: Any) -> None:
    job = hex_id("missing")

    with pytest.raises(bedrock.exceptions.ResourceNotFoundException) as err:
        bedrock.stop_model_invocation_job(jobIdentifier=job)

    response = err.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert response["Error"] == {
        "Code": "ResourceNotFoundException",
        "Message": f"Could not find model invocation job {job}.",
    }


def test_boto3_finished_job_raises_conflict(bedrock: Any, sim: SimAdmin) -> None:
    job = sim.seed("bedrock", hex_id(), status="completed")

    with pytest.raises(bedrock.exceptions.ConflictException) as err:
        bedrock.stop_model_invocation_job(jobIdentifier=ARN_PREFIX + job)

    response = err.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400  # as Bedrock sends ConflictException
    assert response["Error"]["Message"] == (
        f"Job {ARN_PREFIX}{job} cannot be stopped because it is in Completed status."
    )
    assert sim.batch("bedrock", job)["status"] == "completed"


def _with_header(client: Any, name: str, value: str) -> Any:
    def add(request: Any, **_: Any) -> None:
        request.headers[name] = value

    client.meta.events.register_first("before-sign.bedrock.StopModelInvocationJob", add)
    return add


def test_boto3_route_can_stop_an_openai_batch(stack: Stack, sim: SimAdmin) -> None:
    client = boto3.client(
        "bedrock",
        endpoint_url=f"{stack.http_url}/bedrock",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
    )
    _with_header(client, "x-model-provider", "openai")
    job = sim.seed("openai", hex_id("batch_"))

    answer = client.stop_model_invocation_job(jobIdentifier=job)

    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert sim.batch("openai", job)["status"] == "cancelling"


def test_boto3_route_gateway_error_is_in_bedrocks_shape(stack: Stack, sim: SimAdmin, t0: float) -> None:
    client = boto3.client(
        "bedrock",
        endpoint_url=f"{stack.http_url}/bedrock",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
    )
    _with_header(client, "x-model-provider", "nope")

    with pytest.raises(botocore.exceptions.ClientError) as err:
        client.stop_model_invocation_job(jobIdentifier=hex_id())

    assert type(err.value).__name__ == "ValidationException"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert err.value.response["Error"] == {"Code": "ValidationException", "Message": "unknown provider: nope"}
    assert sim.calls(since=t0) == []


# === error envelopes on the wire ==================================================================

# route -> its path, for plain HTTP calls.
ROUTES = {
    "anthropic": "/anthropic/v1/messages/batches/{id}/cancel",
    "genai-v1beta": "/genai/v1beta/batches/{id}:cancel",
    "genai-v1": "/genai/v1/batches/{id}:cancel",
    "bedrock": "/bedrock/model-invocation-job/{id}/stop",
}


def assert_envelope(route: str, resp: requests.Response, status: int, message: str | None = None) -> None:
    """The route's own error envelope: Anthropic's, Google's or AWS's."""
    assert resp.status_code == status
    assert resp.headers.get("content-type") == "application/json"
    body = json.loads(resp.content)
    if route == "anthropic":
        assert body["type"] == "error" and set(body) == {"type", "error"}
        assert set(body["error"]) == {"type", "message"}
        assert isinstance(body["error"]["type"], str) and body["error"]["type"]
    elif route.startswith("genai"):
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "status"}
        assert body["error"]["code"] == status
        assert isinstance(body["error"]["status"], str) and body["error"]["status"].isupper()
    else:
        assert set(body) == {"message"}
        assert resp.headers.get("x-amzn-errortype")
    if message is not None:
        text = body["message"] if route == "bedrock" else body["error"]["message"]
        assert text == message


@pytest.mark.parametrize("route", list(ROUTES))
def test_provider_errors_are_in_the_routes_envelope(gw: Gateway, route: str) -> None:
    job = hex_id("missing")

    resp = gw.post(ROUTES[route].format(id=job))

    assert_envelope(route, resp, 404)


@pytest.mark.parametrize("route", list(ROUTES))
def test_unknown_provider_header_is_a_400_in_the_routes_envelope(
    gw: Gateway, sim: SimAdmin, t0: float, route: str
) -> None:
    resp = gw.post(ROUTES[route].format(id=hex_id()), headers={"x-model-provider": "nope"})

    assert_envelope(route, resp, 400, "unknown provider: nope")
    if route == "bedrock":
        assert resp.headers["x-amzn-errortype"] == "ValidationException"
    assert sim.calls(since=t0) == []


@pytest.mark.parametrize("route", list(ROUTES))
def test_unsupported_provider_header_is_a_400_in_the_routes_envelope(gw: Gateway, route: str) -> None:
    resp = gw.post(ROUTES[route].format(id=hex_id()), headers={"x-model-provider": "ollama"})

    assert_envelope(route, resp, 400, "batch cancel is not supported by provider: ollama")


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("mistake", ["malformed json body", "unknown query parameter"])
def test_edge_refusals_are_in_the_routes_envelope(gw: Gateway, route: str, mistake: str) -> None:
    path = ROUTES[route].format(id=hex_id())
    if mistake == "malformed json body":
        resp = gw.post(path, data=b'{"provider": ', headers={"Content-Type": "application/json"})
    else:
        resp = gw.post(path + "?key=anything")

    assert_envelope(route, resp, 400)


# === the same RPCs over native gRPC ===============================================================


@pytest.fixture(scope="module")
def stub(stack: Stack) -> Iterator[pb_grpc.BatchServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
        yield pb_grpc.BatchServiceStub(channel)


def test_cancel_anthropic_rpc_answers_a_message_batch(stub: pb_grpc.BatchServiceStub, sim: SimAdmin) -> None:
    job = sim.seed("anthropic", hex_id("msgbatch_"), request_counts=COUNTS)

    batch = stub.CancelAnthropic(pb.CancelBatchRequest(batch_id=job), timeout=10)

    assert (batch.id, batch.type, batch.processing_status) == (job, "message_batch", "canceling")
    assert batch.request_counts.processing == 9


@pytest.mark.parametrize(("rpc", "provider"), [("CancelGenAI", "gemini"), ("StopModelInvocationJob", "bedrock")])
def test_empty_answer_rpcs_default_to_their_provider(
    stub: pb_grpc.BatchServiceStub, sim: SimAdmin, rpc: str, provider: str
) -> None:
    job = sim.seed(provider, hex_id())

    getattr(stub, rpc)(pb.CancelBatchRequest(batch_id=job), timeout=10)

    assert sim.batch(provider, job)["status"] == "cancelling"
    with pytest.raises(grpc.RpcError) as err:
        getattr(stub, rpc)(pb.CancelBatchRequest(batch_id=hex_id("missing")), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
