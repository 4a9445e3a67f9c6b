"""Bedrock over real gRPC (batchgate) and real HTTP to the Bedrock simulator, whose SigV4 checks and
wire format are also held against the real boto3 client."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import json
import logging
import secrets
import time
from functools import partial
from urllib.parse import quote

import aiohttp
import boto3
import botocore.auth
import grpc
import pytest
import yarl
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from sandbox.bedrock import (
    ACCOUNT_ID,
    REGION,
    BedrockOptions,
    BedrockSim,
    SandboxCredentials,
    bedrock_options,
    render_job,
)
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.infra.observability import JsonFormatter
from tests import support
from tests.support import running_service, sim_config

CREDS = SandboxCredentials.parse(BedrockSim.default_key)
ARN_PREFIX = f"arn:aws:bedrock:{REGION}:{ACCOUNT_ID}:model-invocation-job/"


def new_job_id() -> str:
    return secrets.token_hex(6)  # 12 lowercase alphanumerics, like Bedrock's


def encoded_arn(job_id: str) -> str:
    return quote(ARN_PREFIX + job_id, safe="")


def config(sandbox, **key_overrides) -> dict:
    cfg = sim_config(BedrockSim, sandbox.url)
    cfg["providers"]["bedrock"]["keys"][0]["bedrock_key_config"].update(key_overrides)
    return cfg


cancel = partial(support.cancel, provider="bedrock")
cancel_failure = partial(support.cancel_failure, provider="bedrock")


@pytest.fixture
def options(sim) -> BedrockOptions:
    """The sandbox's Bedrock options, back to their defaults after the test."""
    opts = bedrock_options(sim)
    yield opts
    for f in dataclasses.fields(BedrockOptions):
        setattr(opts, f.name, getattr(BedrockOptions(), f.name))


@pytest.fixture
async def service(sandbox, sim, options):
    async with running_service(config(sandbox)) as (_, stub):
        yield stub


# --- cancel through batchgate ------------------------------------------------------------------------


async def test_stop_then_read_reports_stopping_with_counts_and_time(service, sim):
    batch = sim.seed("bedrock", new_job_id(), request_counts={"total": 50, "completed": 20, "failed": 3},
                     cancel_delay_s=3600)  # fmt: skip
    response = await cancel(service, batch.id)
    state = sim.batch("bedrock", batch.id)
    assert (response.id, response.status) == (batch.id, "cancelling")
    assert response.cancelling_at == state.cancelling_at
    assert not response.HasField("cancelled_at")
    counts = response.request_counts
    assert (counts.total, counts.completed, counts.failed, counts.pending) == (50, 20, 3, 27)  # total - processed
    assert response.extra_fields.provider == "bedrock" and not response.extra_fields.HasField("warning")
    stop, get = sim.calls("bedrock")
    assert (stop["method"], stop["path"]) == ("POST", f"/bedrock/model-invocation-job/{batch.id}/stop")
    assert (get["method"], get["path"]) == ("GET", f"/bedrock/model-invocation-job/{batch.id}")
    assert stop["body"] == ""
    for call in (stop, get):
        assert (
            call["headers"]["Authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={CREDS.access_key}/")
            and f"/{REGION}/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature="
            in call["headers"]["Authorization"]
        )
        assert CREDS.secret_key not in str(call["headers"])


async def test_job_already_stopped_on_the_read_reports_cancelled_at_its_end(service, sim):
    batch = sim.seed("bedrock", new_job_id(), cancel_delay_s=0)
    response = await cancel(service, batch.id)
    state = sim.batch("bedrock", batch.id)
    assert state.status == "cancelled"
    assert (response.status, response.cancelled_at) == ("cancelled", state.cancelled_at)
    assert not response.HasField("cancelling_at")


async def test_job_without_record_counts_has_no_counts(service, sim, options):
    options.record_counts = False
    batch = sim.seed("bedrock", new_job_id(), cancel_delay_s=3600)
    response = await cancel(service, batch.id)
    assert response.status == "cancelling"
    assert not response.HasField("request_counts")


async def test_validating_job_can_be_stopped(service, sim):
    batch = sim.seed("bedrock", new_job_id(), status="validating", cancel_delay_s=3600)
    assert (await cancel(service, batch.id)).status == "cancelling"


async def test_second_stop_of_a_stopping_job_answers_its_state(service, sim):
    started = int(time.time()) - 30
    batch = sim.seed("bedrock", new_job_id(), status="cancelling", cancelling_at=started, cancel_delay_s=3600)
    response = await cancel(service, batch.id)
    assert (response.status, response.cancelling_at) == ("cancelling", started)


async def test_raw_response_holds_both_answers_and_no_secret(sandbox, sim, options):
    cfg = config(sandbox)
    cfg["providers"]["bedrock"]["send_back_raw_response"] = True
    batch = sim.seed("bedrock", new_job_id(), cancel_delay_s=3600)
    async with running_service(cfg) as (_, stub):
        response = await cancel(stub, batch.id)
    raw = response.extra_fields.raw_response.struct_value
    assert dict(raw["cancel"]) == {}
    assert raw["retrieve"]["status"] == "Stopping" and raw["retrieve"]["jobArn"] == ARN_PREFIX + batch.id
    assert CREDS.secret_key not in str(response) and CREDS.access_key not in str(response)


@pytest.mark.parametrize(
    "form",
    [
        lambda arn: arn,  # as REST callers' %2F arrives after the edge decoded it
        lambda arn: base64.b64encode(arn.encode()).decode(),  # the seed gateway's encoding
        lambda arn: base64.urlsafe_b64encode(arn.encode()).decode().rstrip("="),
        lambda arn: quote(arn, safe=""),  # still percent-encoded
    ],
    ids=["arn", "base64", "base64url", "percent-encoded"],
)
async def test_arn_ids_in_every_accepted_form_go_upstream_as_one_segment(service, sim, form):
    batch = sim.seed("bedrock", new_job_id(), cancel_delay_s=3600)
    batch_id = form(ARN_PREFIX + batch.id)
    response = await cancel(service, batch_id)
    assert (response.id, response.status) == (batch_id, "cancelling")
    assert response.cancelling_at == sim.batch("bedrock", batch.id).cancelling_at
    stop, get = sim.calls("bedrock")
    assert stop["path"] == f"/bedrock/model-invocation-job/{encoded_arn(batch.id)}/stop"
    assert get["path"] == f"/bedrock/model-invocation-job/{encoded_arn(batch.id)}"


@pytest.mark.parametrize(
    "batch_id",
    [
        "a/b",
        "../x",
        f"{ARN_PREFIX}../x",
        f"{ARN_PREFIX}abc/def",
        "arn:aws:bedrock:us-east-1:123456789012:custom-model/abc",
        "a%2Fb",
        "a?b",
        "",
    ],
)
async def test_unsafe_ids_never_reach_bedrock(service, sim, batch_id):
    err, detail = await cancel_failure(service, batch_id)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (detail.status_code, detail.error.param) == (400, "batch_id")
    assert sim.calls("bedrock") == []


# --- provider errors ---------------------------------------------------------------------------------


async def test_unknown_job_is_not_found(service, sim):
    err, detail = await cancel_failure(service, new_job_id())
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert (detail.status_code, detail.error.type) == (404, "ResourceNotFoundException")
    assert detail.is_bifrost_error is False and detail.extra_fields.provider == "bedrock"


@pytest.mark.parametrize(("status", "shown"), [("completed", "Completed"), ("failed", "Failed"),
                                               ("expired", "Expired"), ("cancelled", "Stopped")])  # fmt: skip
async def test_finished_job_is_a_409_conflict_with_bedrocks_message(service, sim, status, shown):
    batch = sim.seed("bedrock", new_job_id(), status=status)
    err, detail = await cancel_failure(service, batch.id)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (detail.status_code, detail.error.type, detail.error.code) == (409, "ConflictException", "ConflictException")
    assert detail.error.message == f"Job {ARN_PREFIX}{batch.id} cannot be stopped because it is in {shown} status."
    assert len(sim.calls("bedrock")) == 1  # no follow-up read after a refused stop


async def test_partially_completed_job_is_a_conflict(service, sim, options):
    options.status_names = {"completed": "PartiallyCompleted"}
    batch = sim.seed("bedrock", new_job_id(), status="completed")
    _, detail = await cancel_failure(service, batch.id)
    assert detail.status_code == 409 and "PartiallyCompleted" in detail.error.message


async def test_stop_of_a_stopping_job_can_be_refused_too(service, sim, options):
    options.conflict_when_stopping = True
    batch = sim.seed("bedrock", new_job_id(), status="cancelling", cancel_delay_s=3600)
    _, detail = await cancel_failure(service, batch.id)
    assert (detail.status_code, detail.error.type) == (409, "ConflictException")


async def test_identifier_outside_awss_pattern_is_a_validation_error(service, sim, options):
    options.strict_identifiers = True
    err, detail = await cancel_failure(service, "not_a_bedrock_id")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (detail.status_code, detail.error.type) == (400, "ValidationException")
    assert "failed to satisfy constraint" in detail.error.message


@pytest.mark.parametrize(
    ("overrides", "error_type", "message"),
    [
        ({"secret_key": "wrong/Secret+Key0000000000000000000000000"}, "InvalidSignatureException",
         "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
         "Access Key and signing method. Consult the service documentation for details."),
        ({"access_key": "AKIAUNKNOWNKEY000001"}, "UnrecognizedClientException",
         "The security token included in the request is invalid."),
        ({"session_token": "not-a-token-for-this-key"}, "UnrecognizedClientException",
         "The security token included in the request is invalid."),
        ({"region": "eu-west-1"}, "InvalidSignatureException", "Credential should be scoped to a valid region."),
    ],
)  # fmt: skip
async def test_bad_credentials_are_403_with_awss_exception(sandbox, sim, options, overrides, error_type, message):
    batch = sim.seed("bedrock", new_job_id())
    async with running_service(config(sandbox, **overrides)) as (_, stub):
        err, detail = await cancel_failure(stub, batch.id)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (detail.status_code, detail.error.type, detail.error.message) == (403, error_type, message)
    assert "Canonical String" not in detail.error.message
    assert len(sim.calls("bedrock")) == 1
    assert sim.batch("bedrock", batch.id).status == "in_progress"


async def test_session_credentials_sign_the_token(sandbox, sim, options):
    temporary = SandboxCredentials(
        "ASIASANDBOXTEMPKEY01", "temp/Secret+Key00000000000000000000000000", "IQoJb3JpZ2luX2VjEXAMPLE+/="
    )
    saved = sim.keys["bedrock"]
    sim.keys["bedrock"] = saved | {":".join(dataclasses.astuple(temporary))}
    try:
        cfg = config(sandbox, access_key=temporary.access_key, secret_key=temporary.secret_key,
                     session_token=temporary.session_token)  # fmt: skip
        batch = sim.seed("bedrock", new_job_id(), cancel_delay_s=3600)
        async with running_service(cfg) as (_, stub):
            assert (await cancel(stub, batch.id)).status == "cancelling"
            cfg["providers"]["bedrock"]["keys"][0]["bedrock_key_config"].pop("session_token")
        async with running_service(cfg) as (_, stub):
            _, detail = await cancel_failure(stub, batch.id)
    finally:
        sim.keys["bedrock"] = saved
    stop = sim.calls("bedrock")[0]
    assert stop["headers"]["X-Amz-Security-Token"] == temporary.session_token
    assert "SignedHeaders=host;x-amz-date;x-amz-security-token," in stop["headers"]["Authorization"]
    assert detail.error.type == "UnrecognizedClientException"


SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE-redaction-token-0123456789abcdef"
# AWS messages that echo the session token, each with the token somewhere the rule that drops an
# echoed canonical request ("The Canonical String for this request should have been ...") does not
# reach: at the start, on a line of its own, in capitals, quoted, escaped, after a space, in a URL.
TOKEN_MESSAGES = {
    "first": f"x-amz-security-token:{SESSION_TOKEN} is not valid for this request.",
    "own line": f"Signed headers do not match.\nhost:bedrock\nx-amz-security-token:{SESSION_TOKEN}\n",
    "capitals": f"The header X-Amz-Security-Token:{SESSION_TOKEN} is not valid.",
    "quoted": f"Unexpected value 'x-amz-security-token:{SESSION_TOKEN}' in the request.",
    "escaped": f"Headers were host:bedrock\\nx-amz-security-token:{SESSION_TOKEN}\\nx-amz-date:20260304T050607Z",
    "after a space": f"Request header x-amz-security-token: {SESSION_TOKEN} was rejected.",
    "as a query parameter": f"Presigned URL https://b/?X-Amz-Security-Token={SESSION_TOKEN}&X-Amz-Date=1 expired.",
    "before the canonical request": f"x-amz-security-token:{SESSION_TOKEN}. The Canonical String for this "
    f"request should have been\n'POST\n/model-invocation-job/x/stop\nx-amz-security-token:{SESSION_TOKEN}'",
}  # fmt: skip


REST_PATHS = {
    "Cancel": "/v1/batches/{id}/cancel?provider=bedrock",
    "StopModelInvocationJob": "/bedrock/model-invocation-job/{id}/stop",
}


@pytest.mark.parametrize("route", ["Cancel", "StopModelInvocationJob"])
@pytest.mark.parametrize("message", list(TOKEN_MESSAGES.values()), ids=list(TOKEN_MESSAGES))
async def test_the_session_token_is_redacted_wherever_an_aws_message_echoes_it(sandbox, sim, caplog, message, route):
    """The token never reaches the caller (gRPC status, ErrorDetail, the REST body the edge gets)
    nor a log line, wherever in AWS's message it appears; the rest of the message is kept."""
    caplog.set_level(logging.DEBUG)
    job = sim.seed("bedrock", new_job_id())
    body = json.dumps({"message": message})
    sim.add_fault("bedrock", {"status": 403, "body": body, "content_type": "application/json"})
    async with running_service(config(sandbox, session_token=SESSION_TOKEN)) as (_, stub):
        request = pb.CancelBatchRequest(batch_id=job.id, provider="bedrock")
        # As Envoy passes a REST call on: the answer then carries the REST body for the edge.
        path = REST_PATHS[route].format(id=job.id)
        invocation = getattr(stub, route)(request, metadata=(("x-envoy-original-path", path),))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await invocation
        metadata = dict(await invocation.initial_metadata())
    (stop,) = sim.calls("bedrock")
    assert stop["headers"]["X-Amz-Security-Token"] == SESSION_TOKEN  # the token was in play
    err = info.value
    detail = support.error_detail(err)
    assert (err.code(), detail.status_code) == (grpc.StatusCode.PERMISSION_DENIED, 403)
    assert "<redacted>" in detail.error.message
    shown = [err.details(), str(detail), metadata["x-bf-error-body"], json.dumps(metadata)]
    shown += [JsonFormatter().format(record) for record in caplog.records]
    assert [text for text in shown if SESSION_TOKEN in text] == []
    assert any("<redacted>" in text for text in shown[4:]), "the error reached no log line"


async def test_rate_limited_stop_keeps_429(service, sim):
    sim.add_fault("bedrock", {"status": 429})
    err, detail = await cancel_failure(service, sim.seed("bedrock", new_job_id()).id)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (detail.status_code, detail.error.type) == (429, "ThrottlingException")
    assert detail.error.message == "Too many requests, please wait before trying again."
    assert len(sim.calls("bedrock")) == 1


async def test_throttling_is_retried_with_a_fresh_answer(sandbox, sim, options):
    cfg = config(sandbox)
    cfg["providers"]["bedrock"]["network_config"].update(max_retries=2, retry_backoff_initial_ms=1,
                                                         retry_backoff_max_ms=5)  # fmt: skip
    sim.add_fault("bedrock", [{"status": 429}, {"status": 503}])
    batch = sim.seed("bedrock", new_job_id(), cancel_delay_s=3600)
    async with running_service(cfg) as (_, stub):
        assert (await cancel(stub, batch.id)).status == "cancelling"
    assert [c["method"] for c in sim.calls("bedrock")] == ["POST", "POST", "POST", "GET"]


@pytest.mark.parametrize("fault", [{"status": 500}, {"status": 429}, {"malformed": True}, {"html": True}])
async def test_failed_read_after_an_accepted_stop_still_reports_the_cancel(service, sim, fault):
    batch = sim.seed("bedrock", new_job_id(), cancel_delay_s=3600)
    sim.add_fault("bedrock", [{"latency_ms": 1}, fault])  # the stop goes through, the read fails
    response = await cancel(service, batch.id)
    assert (response.id, response.status) == (batch.id, "cancelling")
    assert response.extra_fields.warning.startswith("cancel accepted; reading the batch state afterwards failed")
    assert not response.HasField("request_counts") and not response.HasField("cancelling_at")
    assert sim.batch("bedrock", batch.id).status == "cancelling"  # the stop did happen


# --- the simulator against boto3 and raw SigV4 -------------------------------------------------------


@pytest.fixture
def boto(sandbox):
    def make(access_key=CREDS.access_key, secret_key=CREDS.secret_key):
        return boto3.client(
            "bedrock",
            region_name=REGION,
            endpoint_url=f"{sandbox.url}{BedrockSim.prefix}",
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=BotoConfig(retries={"max_attempts": 1}),
        )

    return make


async def test_boto3_stops_and_reads_a_job_by_arn(service, sim, boto):
    client = boto()
    batch = sim.seed("bedrock", new_job_id(), request_counts={"total": 9, "completed": 4, "failed": 1},
                     cancel_delay_s=3600)  # fmt: skip
    arn = ARN_PREFIX + batch.id
    stopped = await asyncio.to_thread(client.stop_model_invocation_job, jobIdentifier=arn)
    assert stopped["ResponseMetadata"]["HTTPStatusCode"] == 200
    job = await asyncio.to_thread(client.get_model_invocation_job, jobIdentifier=arn)
    state = sim.batch("bedrock", batch.id)
    assert (job["jobArn"], job["status"]) == (arn, "Stopping")
    assert job["lastModifiedTime"] == datetime.datetime.fromtimestamp(state.cancelling_at, datetime.UTC)
    assert (job["totalRecordCount"], job["successRecordCount"], job["errorRecordCount"]) == (9, 4, 1)
    boto_stop = sim.calls("bedrock")[0]
    sim.clear_calls()
    await cancel(service, arn)  # batchgate sends the very same path for the same ARN
    assert sim.calls("bedrock")[0]["path"] == boto_stop["path"]


async def test_boto3_reads_the_conflict_and_auth_errors(sim, boto, options):
    batch = sim.seed("bedrock", new_job_id(), status="completed")
    with pytest.raises(ClientError) as info:
        await asyncio.to_thread(boto().stop_model_invocation_job, jobIdentifier=batch.id)
    assert info.value.response["Error"]["Code"] == "ConflictException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(ClientError) as info:
        await asyncio.to_thread(boto(secret_key="x" * 40).get_model_invocation_job, jobIdentifier=batch.id)
    assert info.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as info:
        await asyncio.to_thread(boto().get_model_invocation_job, jobIdentifier=new_job_id())
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"


def signed_headers(url: str, method: str = "GET", when: datetime.datetime | None = None) -> dict[str, str]:
    request = AWSRequest(method=method, url=url)
    signer = SigV4Auth(Credentials(CREDS.access_key, CREDS.secret_key), "bedrock", REGION)
    if when is None:
        signer.add_auth(request)
    else:
        original = botocore.auth.get_current_datetime
        botocore.auth.get_current_datetime = lambda: when
        try:
            signer.add_auth(request)
        finally:
            botocore.auth.get_current_datetime = original
    return dict(request.headers.items())


async def raw_get(url: str, headers: dict[str, str]) -> tuple[int, str, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(yarl.URL(url, encoded=True), headers=headers) as resp:
            return resp.status, resp.headers.get("x-amzn-ErrorType", ""), await resp.json(content_type=None)


async def test_simulator_refuses_unsigned_stale_and_tampered_requests(sandbox, sim, options):
    batch = sim.seed("bedrock", new_job_id())
    url = f"{sandbox.url}/bedrock/model-invocation-job/{batch.id}"
    assert await raw_get(url, {}) == (
        403, "MissingAuthenticationTokenException:http://internal.amazon.com/coral/com.amazon.coral.service/",
        {"message": "Missing Authentication Token"},
    )  # fmt: skip
    status, error_type, body = await raw_get(url, {"Authorization": "Bearer abc"})
    assert (status, error_type.split(":")[0]) == (403, "IncompleteSignatureException")
    stale = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(minutes=6)
    status, error_type, body = await raw_get(url, signed_headers(url, when=stale))
    assert (status, error_type.split(":")[0]) == (403, "InvalidSignatureException")
    assert body["message"].startswith("Signature expired: ")
    other = sim.seed("bedrock", new_job_id())
    status, error_type, body = await raw_get(url.replace(batch.id, other.id), signed_headers(url))
    assert (status, error_type.split(":")[0]) == (403, "InvalidSignatureException")
    assert f"'GET\n/bedrock/model-invocation-job/{other.id}\n" in body["message"]  # what AWS echoes
    status, _, job = await raw_get(url, signed_headers(url))
    assert (status, job["status"]) == (200, "InProgress")


async def test_simulator_error_headers_without_the_coral_suffix(sandbox, sim, options):
    options.error_type_suffix = False
    options.message_key = "Message"
    url = f"{sandbox.url}/bedrock/model-invocation-job/{new_job_id()}"
    status, error_type, body = await raw_get(url, signed_headers(url))
    assert (status, error_type, list(body)) == (404, "ResourceNotFoundException", ["Message"])


async def test_simulator_finds_a_job_seeded_under_its_arn(sandbox, sim, options):
    arn = ARN_PREFIX + new_job_id()
    sim.seed("bedrock", arn)
    url = f"{sandbox.url}/bedrock/model-invocation-job/{quote(arn, safe='')}"
    status, _, job = await raw_get(url, signed_headers(url))
    assert (status, job["jobArn"]) == (200, arn)


async def test_read_still_in_progress_after_the_stop_is_reported_as_cancelling(service, sim, options):
    """Bedrock accepted the stop but the read still says InProgress: the answer is cancelling."""
    batch = sim.seed("bedrock", new_job_id(), request_counts={"total": 50, "completed": 20, "failed": 3})
    running = {**render_job(batch, options), "status": "InProgress"}
    # The stop goes through; the read after it still says InProgress.
    sim.add_fault("bedrock", [{"latency_ms": 1}, {"status": 200, "body": json.dumps(running)}])
    response = await cancel(service, batch.id)
    assert (response.status, response.request_counts.pending) == ("cancelling", 27)
    assert sim.batch("bedrock", batch.id).status == "cancelling"


@pytest.mark.parametrize("header", [("authorization", "Bearer caller-aws-key"), ("x-api-key", "caller-aws-key")])
async def test_a_direct_key_is_refused_never_replaced_by_the_gateways_keys(sandbox, sim, header):
    """Bedrock signs with the key config's AWS credentials; a caller's own key cannot be used, and the
    gateway must not sign the call with its own keys instead."""
    cfg = config(sandbox)
    cfg["client"] = {"allow_direct_keys": True}
    batch = sim.seed("bedrock", new_job_id())
    async with running_service(cfg) as (_, stub):
        err, detail = await cancel_failure(stub, batch.id, metadata=(header,))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (detail.status_code, detail.error.code, detail.extra_fields.provider) == (
            400, "direct_key_unsupported", "bedrock",
        )  # fmt: skip
        assert "caller-aws-key" not in detail.error.message
        assert sim.calls("bedrock") == []
        assert sim.batch("bedrock", batch.id).status == "in_progress"
        await cancel(stub, batch.id)  # without a direct key the configured keys are used
    assert sim.batch("bedrock", batch.id).status == "cancelling"
