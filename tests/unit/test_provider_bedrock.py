"""Bedrock adapter: job parsing, status table, identifiers, SigV4 request building, AWS errors."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import logging
from urllib.parse import quote

import boto3
import botocore.auth
import pytest
from botocore.config import Config as BotoConfig
from multidict import CIMultiDict

from service.domain.errors import GatewayError, InvalidRequest, UpstreamUnavailable
from service.infra.providers.base import UpstreamResponse
from service.infra.providers.bedrock import BedrockAdapter, job_identifier
from service.infra.providers.catalog import parse_config

ACCESS_KEY = "AKIAUNITTESTBEDROCK1"
SECRET_KEY = "unit/Test+Secret0Key000000000000000000000"
TOKEN = "FwoGZXIvYXdzEUnitTestSessionToken+/="
JOB_ID = "abc123def456"
ARN = f"arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/{JOB_ID}"
ENCODED_ARN = "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Amodel-invocation-job%2Fabc123def456"
FROZEN = datetime.datetime(2026, 3, 4, 5, 6, 7)

# A GetModelInvocationJob answer as Bedrock sends it, right after a stop.
STOPPING_JOB = {
    "jobArn": ARN,
    "jobName": "nightly-summaries-2026-03-04",
    "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
    "clientRequestToken": "5f8e1f0e-3b1c-4f8e-9d55-1c2e6d0b9a77",
    "roleArn": "arn:aws:iam::123456789012:role/BedrockBatchRole",
    "status": "Stopping",
    "submitTime": "2026-03-04T01:00:00.123Z",
    "lastModifiedTime": "2026-03-04T05:06:07.846Z",
    "inputDataConfig": {"s3InputDataConfig": {"s3InputFormat": "JSONL", "s3Uri": "s3://bucket/in/"}},
    "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://bucket/out/"}},
    "timeoutDurationInHours": 24,
    "jobExpirationTime": "2026-03-05T01:00:00.123Z",
}
STOPPED_JOB = {
    **STOPPING_JOB,
    "status": "Stopped",
    "lastModifiedTime": "2026-03-04T05:09:00Z",
    "endTime": "2026-03-04T05:08:59.5Z",
}


def unix(text: str) -> int:
    return int(datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def make_adapter(base_url: str | None = None, region: str = "us-east-1", token: str | None = TOKEN, **network):
    key = {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "region": region}
    if token:
        key["session_token"] = token
    block = {
        "keys": [{"name": "k", "use_for_batch_api": True, "bedrock_key_config": key}],
        "network_config": {**({"base_url": base_url} if base_url else {}), **network},
    }
    provider = parse_config({"providers": {"bedrock": block}}, env={}).providers["bedrock"]
    return BedrockAdapter(provider), provider.keys[0]


@pytest.fixture
def adapter():
    return make_adapter()


@pytest.fixture
def frozen_clock(monkeypatch):
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: FROZEN)
    return FROZEN


def prepared(adapter_and_key, ref, *, follow_up=False):
    adapter, key = adapter_and_key
    request = adapter.status_request(key, ref) if follow_up else adapter.cancel_request(key, ref)
    return asyncio.run(adapter.prepare(key, request))


def response(status: int, body: bytes, error_type: str | None = None, content_type="application/json"):
    headers = CIMultiDict({"Content-Type": content_type, "x-amzn-RequestId": "7b0c5a54-1a2b-4c3d-8e9f-0a1b2c3d4e5f"})
    if error_type:
        headers["x-amzn-ErrorType"] = error_type
    return UpstreamResponse(status, headers, body)


# --- parsing ----------------------------------------------------------------------------------------


def test_stopping_job_is_cancelling_since_its_last_modification(adapter):
    state = adapter[0].parse_batch(JOB_ID, STOPPING_JOB)
    assert state.status == "cancelling"
    assert state.cancelling_at == unix("2026-03-04T05:06:07Z")
    assert state.cancelled_at is None
    assert state.counts is None  # no record counts in this answer: unknown, not zeros
    assert state.id == ARN


def test_stopped_job_is_cancelled_at_its_end_time(adapter):
    state = adapter[0].parse_batch(JOB_ID, STOPPED_JOB)
    assert (state.status, state.cancelled_at) == ("cancelled", unix("2026-03-04T05:08:59Z"))
    assert state.cancelling_at is None  # a Stopped job's lastModifiedTime is not when the stop was asked


def test_record_counts_of_current_api_versions_are_read_including_strings(adapter):
    job = {**STOPPING_JOB, "totalRecordCount": 1000, "processedRecordCount": "250", "successRecordCount": "240",
           "errorRecordCount": 10}  # fmt: skip
    counts = adapter[0].parse_batch(JOB_ID, job).counts
    assert (counts.total, counts.completed, counts.failed) == (1000, 240, 10)
    assert counts.pending == 750  # total - processedRecordCount


@pytest.mark.parametrize(
    "fields",
    [
        {"totalRecordCount": 1000},  # processedRecordCount not sent
        {"processedRecordCount": 250},  # totalRecordCount not sent
        {"totalRecordCount": 10, "processedRecordCount": 11},  # inconsistent: unknown, never negative
        {"totalRecordCount": 10, "processedRecordCount": "x"},
    ],
)
def test_pending_is_only_derived_when_both_record_counts_are_sent(adapter, fields):
    counts = adapter[0].parse_batch(JOB_ID, {**STOPPING_JOB, **fields}).counts
    assert counts is not None and counts.pending is None


def test_processed_record_count_alone_still_reports_counts(adapter):
    counts = adapter[0].parse_batch(JOB_ID, {**STOPPING_JOB, "processedRecordCount": 5}).counts
    assert counts is not None and (counts.total, counts.pending) == (None, None)


def test_partial_record_counts_leave_the_rest_unknown(adapter):
    counts = adapter[0].parse_batch(JOB_ID, {**STOPPING_JOB, "totalRecordCount": 7, "errorRecordCount": None}).counts
    assert (counts.total, counts.completed, counts.failed) == (7, None, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-04T05:06:07Z", 1772600767),
        ("2026-03-04T05:06:07.8Z", 1772600767),
        ("2026-03-04T05:06:07.846Z", 1772600767),
        ("2026-03-04T05:06:07.846123Z", 1772600767),
        ("2026-03-04T05:06:07.846123789Z", 1772600767),
        ("2026-03-04T05:06:07.846000+00:00", 1772600767),
        ("2026-03-03T21:06:07.846-08:00", 1772600767),
    ],
)
def test_iso8601_times_with_any_fraction_and_offset(adapter, text, expected):
    state = adapter[0].parse_batch(JOB_ID, {**STOPPING_JOB, "lastModifiedTime": text})
    assert state.cancelling_at == expected


def test_minimal_job_without_times_or_arn(adapter):
    state = adapter[0].parse_batch(JOB_ID, {"status": "Stopped"})
    assert (state.id, state.status, state.cancelled_at, state.cancelling_at, state.counts) == (
        JOB_ID, "cancelled", None, None, None,
    )  # fmt: skip


@pytest.mark.parametrize("data", [{}, {"status": ""}, {"status": None}, [], "Stopped", {"jobArn": ARN}])
def test_answer_without_a_job_is_an_upstream_failure(adapter, data):
    with pytest.raises(UpstreamUnavailable):
        adapter[0].parse_batch(JOB_ID, data)


@pytest.mark.parametrize(
    ("status", "unified"),
    [
        ("Submitted", "validating"),
        ("Validating", "validating"),
        ("Scheduled", "validating"),
        ("InProgress", "in_progress"),
        ("Stopping", "cancelling"),
        ("Stopped", "cancelled"),
        ("Completed", "completed"),
        ("PartiallyCompleted", "completed"),
        ("Failed", "failed"),
        ("Expired", "expired"),
        ("INPROGRESS", "in_progress"),
        (" stopping ", "cancelling"),
    ],
)
def test_status_table(adapter, status, unified):
    assert adapter[0].parse_batch(JOB_ID, {"status": status}).status == unified


# --- identifiers ------------------------------------------------------------------------------------


def b64(text: str, *, urlsafe=False, pad=True) -> str:
    encoded = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(text.encode()).decode()
    return encoded if pad else encoded.rstrip("=")


@pytest.mark.parametrize(
    ("batch_id", "identifier"),
    [
        (JOB_ID, JOB_ID),
        ("abcdefgh1234", "abcdefgh1234"),  # valid base64 of binary junk: still a plain job id
        ("YXJuYWJjZGVm", "YXJuYWJjZGVm"),  # base64 of "arnabcdef": not "arn:", so a plain id
        (ARN, ARN),
        ("arn:aws-us-gov:bedrock:us-gov-west-1:123456789012:model-invocation-job/abc123def456",) * 2,
        (b64(ARN), ARN),
        (b64(ARN, urlsafe=True, pad=False), ARN),
        (ENCODED_ARN, ARN),  # still percent-encoded, as boto3 puts it in the path
        ("batch:with:colons", "batch:with:colons"),
    ],
)
def test_accepted_identifiers(batch_id, identifier):
    assert job_identifier(batch_id) == identifier


@pytest.mark.parametrize("job", ["a", "ab", "abc", "abc123def456"])
def test_base64_arns_with_any_padding(job):
    arn = f"arn:aws:bedrock:eu-west-1:123456789012:model-invocation-job/{job}"
    for encoded in (b64(arn), b64(arn, pad=False), b64(arn, urlsafe=True), b64(arn, urlsafe=True, pad=False)):
        assert job_identifier(encoded) == arn


@pytest.mark.parametrize(
    "batch_id",
    [
        "",
        "a/b",
        "../x",
        "..",
        "a?b",
        "a#b",
        "a%2Fb",
        "a\\b",
        "a b",
        "a\x00b",
        f"{ARN}/stop",
        "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/..",
        "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/a/../b",
        "arn:aws:bedrock:us-east-1:123456789012:custom-model/abc",
        "arn:aws:s3:::bucket/key",
        "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Amodel-invocation-job%2F..%2Fx",
        "arn%253Aaws%253Abedrock%253Aus-east-1%253A123456789012%253Amodel-invocation-job%252Fabc",
        b64("arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/../../x"),
        b64("arn:aws:s3:::bucket/x"),
        "x" * 3000,
    ],
)
def test_unsafe_or_foreign_identifiers_are_refused(batch_id):
    with pytest.raises(InvalidRequest) as info:
        job_identifier(batch_id)
    assert info.value.param == "batch_id"


# --- requests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "base"),
    [
        ("us-east-1", "https://bedrock.us-east-1.amazonaws.com"),
        ("eu-central-1", "https://bedrock.eu-central-1.amazonaws.com"),
        ("us-gov-west-1", "https://bedrock.us-gov-west-1.amazonaws.com"),
        ("cn-north-1", "https://bedrock.cn-north-1.amazonaws.com.cn"),
    ],
)
def test_default_base_is_the_regional_control_plane(region, base, frozen_clock):
    request = prepared(make_adapter(region=region), JOB_ID)
    assert request.url == f"{base}/model-invocation-job/{JOB_ID}/stop"
    assert f"/{region}/bedrock/aws4_request" in request.headers["Authorization"]


@pytest.mark.parametrize("region", ["us-east-1.evil.example", "us-east-1/..", "US-EAST-1", "us-east-1:443"])
def test_a_region_that_would_change_the_host_is_refused(region):
    adapter, key = make_adapter(region=region)
    with pytest.raises(GatewayError):
        adapter.cancel_request(key, JOB_ID)


def test_base_url_override_and_arn_as_one_segment(frozen_clock):
    adapter = make_adapter("http://127.0.0.1:8123/bedrock")
    stop = prepared(adapter, ARN)
    get = prepared(adapter, ARN, follow_up=True)
    assert (stop.method, stop.url) == ("POST", f"http://127.0.0.1:8123/bedrock/model-invocation-job/{ENCODED_ARN}/stop")
    assert (get.method, get.url) == ("GET", f"http://127.0.0.1:8123/bedrock/model-invocation-job/{ENCODED_ARN}")
    assert stop.body is None and get.body is None


def boto3_request(endpoint: str, identifier: str, token: str | None = TOKEN):
    client = boto3.client(
        "bedrock",
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        aws_session_token=token,
        endpoint_url=endpoint,
        config=BotoConfig(retries={"max_attempts": 1}),
    )
    captured = {}

    def capture(request, **_):
        captured.update(url=request.url, headers={k: v.decode() if isinstance(v, bytes) else v
                                                  for k, v in request.headers.items()})  # fmt: skip
        raise _Captured

    client.meta.events.register("before-send", capture)
    with pytest.raises(_Captured):
        client.stop_model_invocation_job(jobIdentifier=identifier)
    return captured


class _Captured(Exception):
    pass


@pytest.mark.parametrize("identifier", [JOB_ID, ARN])
@pytest.mark.parametrize("token", [TOKEN, None])
def test_request_is_signed_exactly_as_boto3_signs_it(frozen_clock, identifier, token):
    ours = prepared(make_adapter("http://127.0.0.1:8123/bedrock", token=token), identifier)
    theirs = boto3_request("http://127.0.0.1:8123/bedrock", identifier, token)
    assert ours.url == theirs["url"]
    for name in ("Authorization", "X-Amz-Date"):
        assert ours.headers[name] == theirs["headers"][name]
    assert ours.headers.get("X-Amz-Security-Token") == theirs["headers"].get("X-Amz-Security-Token") == token


def sigv4_by_hand(method: str, host: str, raw_path: str, amz_date: str, token: str | None) -> str:
    """SigV4 straight from AWS's spec: for non-S3 services each path segment is URI-encoded once
    more (so `%3A` becomes `%253A`); the body is empty."""
    canonical_uri = "/".join(quote(segment, safe="-_.~") for segment in raw_path.split("/"))
    headers = {"host": host, "x-amz-date": amz_date, **({"x-amz-security-token": token} if token else {})}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [method, canonical_uri, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed,
         hashlib.sha256(b"").hexdigest()]
    )  # fmt: skip
    scope = f"{amz_date[:8]}/us-east-1/bedrock/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{SECRET_KEY}".encode()
    for part in (amz_date[:8], "us-east-1", "bedrock", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


@pytest.mark.parametrize("follow_up", [False, True])
def test_signature_matches_an_independent_sigv4_over_the_double_encoded_path(frozen_clock, follow_up):
    request = prepared(make_adapter("https://bedrock.us-east-1.amazonaws.com"), ARN, follow_up=follow_up)
    raw_path = request.url.removeprefix("https://bedrock.us-east-1.amazonaws.com")
    expected = sigv4_by_hand(request.method, "bedrock.us-east-1.amazonaws.com", raw_path, "20260304T050607Z", TOKEN)
    assert request.headers["Authorization"] == (
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/20260304/us-east-1/bedrock/aws4_request, "
        f"SignedHeaders=host;x-amz-date;x-amz-security-token, Signature={expected}"
    )


def test_signer_and_credentials_are_built_once_per_key():
    adapter, key = make_adapter()
    other_adapter, other_key = make_adapter(region="eu-west-1")
    first = adapter.signer(key)
    assert adapter.signer(key) is first
    prepared((adapter, key), JOB_ID)
    prepared((adapter, key), ARN, follow_up=True)
    assert adapter.signer(key) is first  # signing both requests built no other
    assert adapter.signer(key).credentials is adapter.signer(key).credentials
    assert other_adapter.signer(other_key) is not adapter.signer(key)


def test_headers_are_fresh_per_request_and_extra_headers_cannot_shadow_auth(frozen_clock):
    adapter, key = make_adapter(
        "http://127.0.0.1:8123/bedrock",
        extra_headers={"X-Team": "ml", "authorization": "Bearer stolen", "X-Amz-Date": "19700101T000000Z"},
    )
    first = asyncio.run(adapter.prepare(key, adapter.cancel_request(key, JOB_ID)))
    second = adapter.cancel_request(key, JOB_ID)
    assert first.headers["X-Team"] == "ml" and first.headers["Accept"] == "application/json"
    assert [k for k in first.headers if k.lower() == "authorization"] == ["Authorization"]
    assert first.headers["X-Amz-Date"] == "20260304T050607Z"
    assert "Authorization" not in second.headers  # signing did not leak into the shared base headers


def test_secrets_are_neither_sent_nor_logged(frozen_clock, caplog):
    with caplog.at_level(logging.DEBUG, logger="botocore.auth"):
        request = prepared(make_adapter(), ARN)
    assert SECRET_KEY not in str(request)
    assert TOKEN not in caplog.text and "CanonicalRequest" not in caplog.text


# --- errors -----------------------------------------------------------------------------------------

CORAL = ":http://internal.amazon.com/coral/com.amazonaws.bedrock/"


@pytest.mark.parametrize(
    ("status", "error_type", "body", "expected_status", "name", "message"),
    [
        (400, "ConflictException" + CORAL, b'{"message":"Job cannot be stopped in Completed status."}', 409,
         "ConflictException", "Job cannot be stopped in Completed status."),
        (404, "ResourceNotFoundException", b'{"message":"Could not find job."}', 404,
         "ResourceNotFoundException", "Could not find job."),
        (429, "ThrottlingException" + CORAL, b'{"message":"Too many requests, please wait before trying again."}',
         429, "ThrottlingException", "Too many requests, please wait before trying again."),
        (400, "ValidationException", b'{"message":"1 validation error detected"}', 400, "ValidationException",
         "1 validation error detected"),
        (403, "AccessDeniedException", b'{"Message":"User: arn:aws:iam::1:user/x is not authorized"}', 403,
         "AccessDeniedException", "User: arn:aws:iam::1:user/x is not authorized"),
        (403, "UnrecognizedClientException:http://internal.amazon.com/coral/com.amazon.coral.service/",
         b'{"message":"The security token included in the request is invalid."}', 403,
         "UnrecognizedClientException", "The security token included in the request is invalid."),
        (403, "MissingAuthenticationTokenException", b'{"message":"Missing Authentication Token"}', 403,
         "MissingAuthenticationTokenException", "Missing Authentication Token"),
        (500, "InternalServerException", b"", 500, "InternalServerException",
         "bedrock answered HTTP 500 (InternalServerException)"),
        (503, "ServiceUnavailableException", b'{"message":"Service Unavailable"}', 503,
         "ServiceUnavailableException", "Service Unavailable"),
        (429, None, b'{"__type":"com.amazonaws.bedrock#ThrottlingException","message":"Rate exceeded"}', 429,
         "ThrottlingException", "Rate exceeded"),
        (400, None, b'{"code":"ConflictException","Message":"already stopped"}', 409, "ConflictException",
         "already stopped"),
    ],
)  # fmt: skip
def test_aws_error_envelopes(adapter, status, error_type, body, expected_status, name, message):
    error = adapter[0].parse_error(response(status, body, error_type))
    assert (error.status_code, error.type, error.code, error.message) == (expected_status, name, name, message)
    assert error.provider == "bedrock" and error.is_bifrost_error is False


def test_bad_signature_message_loses_the_echoed_canonical_request(adapter):
    message = (
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
        "Access Key and signing method. Consult the service documentation for details.\n\nThe Canonical String "
        f"for this request should have been\n'POST\n/model-invocation-job/abc/stop\n\nhost:bedrock\n"
        f"x-amz-date:20260304T050607Z\nx-amz-security-token:{TOKEN}\n\nhost;x-amz-date;x-amz-security-token\ne3b0'"
        "\n\nThe String-to-Sign should have been\n'AWS4-HMAC-SHA256\n20260304T050607Z\n...'\n"
    )
    body = json.dumps({"message": message}).encode()
    error = adapter[0].parse_error(response(403, body, "InvalidSignatureException"))
    assert error.status_code == 403 and error.type == "InvalidSignatureException"
    assert error.message.startswith("The request signature we calculated does not match")
    assert error.message.endswith("Consult the service documentation for details.")
    assert TOKEN not in error.message
