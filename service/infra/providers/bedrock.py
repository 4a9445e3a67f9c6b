"""Amazon Bedrock batch inference (model invocation jobs) on the control plane.

    POST {base}/model-invocation-job/{jobIdentifier}/stop   -> empty 200 (StopModelInvocationJob)
    GET  {base}/model-invocation-job/{jobIdentifier}        -> the job (GetModelInvocationJob)

`base` is `https://bedrock.{region}.amazonaws.com` (`.amazonaws.com.cn` in China regions), the
region coming from the key's `bedrock_key_config`; `network_config.base_url` overrides it. Requests
are signed with SigV4 (service `bedrock`) by botocore's own signer, with the key's access key,
secret key and optional session token. The signer and its credentials are built once per key.

The job identifier is a job id or the job's full ARN
(`arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abc123def456`); the ARN travels as
ONE percent-encoded path segment (`%3A`, `%2F`), as boto3 sends it, and that exact path is signed
(SigV4 for non-S3 services encodes the already encoded path once more in the canonical request).
Callers may send the ARN as is (REST callers URL-encode it and the edge decodes it) or as standard
base64 (the seed gateway's encoding; URL-safe and unpadded base64 are accepted too): an id is only
read as base64 when it decodes to an ARN, so a plain job id is never misread.

Status mapping: Submitted, Validating, Scheduled -> validating; InProgress -> in_progress;
Stopping -> cancelling; Stopped -> cancelled; Completed -> completed; PartiallyCompleted ->
completed (the job ended and its output is in S3; the records it did not get to show in the
counts; Bifrost reports `failed`, which would tell callers there is no output); Failed -> failed;
Expired -> expired.

Times: `cancelled_at` is `endTime` of a Stopped job; `cancelling_at` is `lastModifiedTime` of a
Stopping job (nothing else modifies a job while it stops, so that is when the stop was accepted; a
Stopped job's lastModifiedTime is when it stopped, so it is not reported as the cancel time).
Counts: GetModelInvocationJob carries `totalRecordCount`, `processedRecordCount`,
`successRecordCount` and `errorRecordCount` (botocore's bedrock 2023-04-20 service model, all
optional NonNegativeLong): total, completed (= successRecordCount), failed, and pending =
total - processed when both are sent; when all are absent, no counts (never invented).

A caller's direct key (client.allow_direct_keys) cannot stand in: requests are SigV4-signed with the
key config's AWS credentials, so such a call is refused (400 `direct_key_unsupported`) rather than
signed with the gateway's own keys.

Errors: the exception name comes in the `x-amzn-ErrorType` header (possibly with a
`:http://internal.amazon.com/...` suffix), else in the body's `code`/`__type`; the message in
`message` or `Message`. `ConflictException` (stopping a job that already ended) is sent as 400 by
Bedrock and answered as 409. A bad-signature answer echoes the canonical request, which holds the
session token: that part is cut from the message.

Listing: `GET {base}/model-invocation-jobs` (ListModelInvocationJobs, botocore's model:
`maxResults` 1-1000, `nextToken`, answer `{invocationJobSummaries, nextToken}`), newest first
(`sortBy=CreationTime&sortOrder=Descending`). `statusEquals` takes ONE status, so a query for
several unified statuses lists once per Bedrock status that maps to one of them (validating =
Submitted, Validating, Scheduled; in_progress = InProgress; ...), one after the other; the page
token carries which. `submitTimeAfter` (strictly after, so one second before the query's inclusive
bound) and `submitTimeBefore` (strictly before, as the query's) filter on the server; the
gateway's own filter applies the exact bounds. Job summaries carry no tags (those sit behind
ListTagsForResource), so a Bedrock batch never matches a metadata selector. A listed job's id is
its ARN.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from service.config.file import Key, ProviderConfig
from service.config.reader import ConfigReader
from service.domain.errors import GatewayError, InvalidRequest, ProviderError, UpstreamUnavailable
from service.domain.model import BatchState, ListedBatch, ListQuery, RequestCounts
from service.infra.providers.base import (
    Adapter,
    UpstreamRequest,
    UpstreamResponse,
    count,
    decode_json,
    next_token,
    path_segment,
    rfc3339,
    unix_seconds,
    with_query,
)

SERVICE = "bedrock"
# A job ARN. AWS's own pattern is
# `arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:model-invocation-job/[a-z0-9]{12}`; the job id
# part is accepted a little wider (ids seeded elsewhere) but stays one plain segment.
JOB_ARN = re.compile(
    r"^arn:aws(?:-[a-z0-9-]{1,20})?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:model-invocation-job/"
    r"([A-Za-z0-9][A-Za-z0-9._-]{0,127})$"
)
# base64 of anything starting with "arn:" starts with this.
_BASE64_ARN_PREFIX = "YXJuO"
_BASE64 = re.compile(r"^[A-Za-z0-9+/_-]+={0,2}$")
_MAX_ENCODED_ID = 2048
_REGION = re.compile(r"^[a-z]{2}(?:-[a-z0-9]+){2,3}$")
# The part of an InvalidSignatureException message that echoes the canonical request (signed
# headers, including X-Amz-Security-Token).
_SIGNATURE_DETAILS = re.compile(r"\s*The Canonical String for this request should have been.*", re.S)
# The session token as a header (`name:value`, maybe spaced) or a query parameter (`name=value`).
_SECURITY_TOKEN_LINE = re.compile(r"(x-amz-security-token[:=][ \t]*)[^\s'\"\\&]*", re.I)
CONFLICT = "ConflictException"
# ModelInvocationJobStatus as Bedrock spells it, by its lowercased form (the adapter's table keys).
BEDROCK_STATUS_NAMES = {
    name.lower(): name
    for name in ("Submitted", "Validating", "Scheduled", "InProgress", "Stopping", "Stopped", "Completed",
                 "PartiallyCompleted", "Failed", "Expired")
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class BedrockKeySettings:
    """A Bedrock key's `bedrock_key_config`: the AWS credentials requests are signed with."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    region: str
    session_token: str | None = field(default=None, repr=False)


class _NoSigningDetails(logging.Filter):
    """botocore logs the canonical request at DEBUG, and it holds the session token: drop those."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno <= logging.DEBUG
            and isinstance(record.msg, str)
            and record.msg.startswith(("CanonicalRequest", "StringToSign", "Signature"))
        )


_botocore_auth_log = logging.getLogger("botocore.auth")
if not any(isinstance(f, _NoSigningDetails) for f in _botocore_auth_log.filters):
    _botocore_auth_log.addFilter(_NoSigningDetails())


def job_identifier(batch_id: str) -> str:
    """The Bedrock job identifier (a job id or an ARN) from a caller's batch id, in any accepted
    form; raises InvalidRequest for anything that is not one. Whatever is returned is sent as ONE
    escaped path segment, so an ARN's `/` cannot change the upstream path."""
    if len(batch_id) > _MAX_ENCODED_ID:
        raise InvalidRequest("batch_id is too long", param="batch_id")
    arn = _base64_arn(batch_id)
    if arn is None and batch_id.startswith("arn") and "%" in batch_id:
        arn = _percent_encoded_arn(batch_id)
    if arn is not None:
        return arn
    if "/" in batch_id:
        return _checked_arn(batch_id, "batch_id must be a Bedrock job id or a model-invocation-job ARN")
    path_segment(batch_id)  # a job id: the usual single-segment rules
    return batch_id


def _checked_arn(arn: str, refusal: str) -> str:
    match = JOB_ARN.match(arn)
    if match is None:
        raise InvalidRequest(refusal, param="batch_id")
    path_segment(match.group(1))  # no dot segments in the job id part
    return arn


def _percent_encoded_arn(value: str) -> str:
    """An ARN that arrived still percent-encoded (`arn%3Aaws%3A...%2F...`, as boto3 puts it in a
    path): accepted only when it decodes, once, to a job ARN."""
    return _checked_arn(unquote(value), "batch_id must be a Bedrock job id or a model-invocation-job ARN")


def _base64_arn(value: str) -> str | None:
    """The ARN a base64 id stands for, or None when the id is not base64 of an ARN."""
    if not value.startswith(_BASE64_ARN_PREFIX) or not _BASE64.match(value):
        return None
    text = value.replace("-", "+").replace("_", "/").rstrip("=")
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4), validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        return None
    if not decoded.startswith("arn:"):
        return None
    return _checked_arn(decoded, "batch_id decodes to an ARN that is not a Bedrock model-invocation-job ARN")


def encode_identifier(identifier: str) -> str:
    """A job id or ARN as one URL path segment, escaped as boto3 does (`:` -> %3A, `/` -> %2F)."""
    return quote(identifier, safe="")


def error_name(response: UpstreamResponse, body: Any) -> str | None:
    """The AWS exception name, as botocore reads it for rest-json: header first, then body."""
    raw = response.headers.get("x-amzn-ErrorType")
    if not raw and isinstance(body, dict):
        raw = body.get("code") or body.get("Code") or body.get("__type")
    if not isinstance(raw, str) or not raw.strip():
        return None
    return raw.split(":", 1)[0].rsplit("#", 1)[-1].strip() or None


def scrub_message(message: str) -> str:
    """Drops the echoed canonical request (it may hold the session token) from an AWS message."""
    message = _SIGNATURE_DETAILS.sub("", message)
    return _SECURITY_TOKEN_LINE.sub(r"\1<redacted>", message).strip()


def _list_position(page_token: str | None) -> tuple[int, str]:
    """(which status of the listing, Bedrock's nextToken) from a listing page token."""
    if not page_token:
        return 0, ""
    index, _, next_token = page_token.partition("|")
    return int(index), next_token


class BedrockAdapter(Adapter):
    name = "bedrock"
    statuses = {
        "submitted": "validating",
        "validating": "validating",
        "scheduled": "validating",
        "inprogress": "in_progress",
        "stopping": "cancelling",
        "stopped": "cancelled",
        "completed": "completed",
        "partiallycompleted": "completed",
        "failed": "failed",
        "expired": "expired",
    }
    # Requests are signed with the key's AWS credentials; `value` is not used.
    key_settings_block = "bedrock_key_config"
    key_value_required = False
    # Newest first, but listed once per status: a listing cannot stop at the first old job (the
    # server filters on submit time instead).
    list_page_size = 1000

    @classmethod
    def key_settings(cls, reader: ConfigReader) -> BedrockKeySettings:
        reader.known("arn")  # Bifrost's inference-profile ARN; a job's own ARN names it for a cancel
        return BedrockKeySettings(
            access_key=reader.env_string("access_key", required=True),
            secret_key=reader.env_string("secret_key", required=True),
            session_token=reader.env_string("session_token", required=False) or None,
            region=reader.env_string("region", required=True),
        )

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self._signers: dict[BedrockKeySettings, SigV4Auth] = {}
        # Unsigned headers, built once; the signer adds Authorization, X-Amz-Date (and the token),
        # which configured extra headers can never carry (base.RESERVED_HEADERS).
        self._base_headers = self.headers({})

    # --- requests ------------------------------------------------------------------------------

    def _key_config(self, key: Key) -> BedrockKeySettings:
        if not isinstance(key.settings, BedrockKeySettings):
            raise GatewayError(f"bedrock key {key.name!r} has no bedrock_key_config", provider=self.name)
        return key.settings

    def base_url(self, key: Key) -> str:
        if self.config.network.base_url:
            return self.config.network.base_url
        region = self._key_config(key).region
        if not _REGION.match(region):
            raise GatewayError(f"bedrock key {key.name!r} has an invalid region", provider=self.name)
        suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
        return f"https://bedrock.{region}.{suffix}"

    def parse_id(self, batch_id: str) -> str:
        return job_identifier(batch_id)

    def job_url(self, key: Key, identifier: str) -> str:
        return f"{self.base_url(key)}/model-invocation-job/{encode_identifier(identifier)}"

    def cancel_request(self, key: Key, ref: str) -> UpstreamRequest:
        return UpstreamRequest("POST", f"{self.job_url(key, ref)}/stop", dict(self._base_headers))

    def status_request(self, key: Key, ref: str) -> UpstreamRequest:
        return UpstreamRequest("GET", self.job_url(key, ref), dict(self._base_headers))

    def list_statuses(self, query: ListQuery) -> list[str]:
        """The Bedrock statuses to list one by one for the query (their names as Bedrock spells
        them); [] when every status is wanted or none maps (then one listing without the filter)."""
        mapped = self.statuses.items()
        wanted = sorted(BEDROCK_STATUS_NAMES[raw] for raw, unified in mapped if unified in query.statuses)
        return [] if len(wanted) == len(BEDROCK_STATUS_NAMES) else wanted

    def list_request(self, key: Key, query: ListQuery, page_token: str | None) -> UpstreamRequest:
        index, next_token = _list_position(page_token)
        statuses = self.list_statuses(query)
        params = {
            "maxResults": self.list_page_size,
            "sortBy": "CreationTime",
            "sortOrder": "Descending",
            "statusEquals": statuses[index] if index < len(statuses) else None,
            "submitTimeAfter": rfc3339(query.created_after - 1) if query.created_after > 1 else None,
            "submitTimeBefore": rfc3339(query.created_before) if query.created_before else None,
            "nextToken": next_token or None,
        }
        # SigV4 signs the query as sent: RFC 3986 encoding, nothing but unreserved characters bare.
        url = with_query(f"{self.base_url(key)}/model-invocation-jobs", params, safe="-_.~")
        return UpstreamRequest("GET", url, dict(self._base_headers), operation="list")

    def parse_list(
        self, data: Any, *, page_token: str | None = None, query: ListQuery | None = None
    ) -> tuple[list[ListedBatch], str | None]:
        batches = self.listed(data, "invocationJobSummaries", id_field="jobArn", created_field="submitTime")
        index, _ = _list_position(page_token)
        token = next_token(data, "nextToken")
        if token:
            return batches, f"{index}|{token}"
        statuses = self.list_statuses(query) if query is not None else []
        return batches, f"{index + 1}|" if index + 1 < len(statuses) else None

    def signer(self, key: Key) -> SigV4Auth:
        """The key's SigV4 signer (and credentials), created on first use."""
        config = self._key_config(key)
        signer = self._signers.get(config)
        if signer is None:
            credentials = Credentials(config.access_key, config.secret_key, config.session_token)
            signer = self._signers[config] = SigV4Auth(credentials, SERVICE, config.region)
        return signer

    async def prepare(self, key: Key, request: UpstreamRequest) -> UpstreamRequest:
        """Signs exactly the URL that is sent (host, X-Amz-Date and the session token are signed,
        as boto3 does; other headers stay unsigned so a proxy touching them cannot break it)."""
        aws_request = AWSRequest(method=request.method, url=request.url, data=request.body)
        self.signer(key).add_auth(aws_request)
        request.headers.update(aws_request.headers.items())
        return request

    # --- answers -------------------------------------------------------------------------------

    def parse_batch(self, batch_id: str, data: Any) -> BatchState:
        if not isinstance(data, dict) or not isinstance(data.get("status"), str) or not data["status"]:
            raise UpstreamUnavailable(f"{self.name} answered without a model invocation job", provider=self.name)
        status = self.status(data["status"])
        return BatchState(
            id=str(data.get("jobArn") or batch_id),
            status=status,
            counts=self._counts(data),
            cancelling_at=unix_seconds(data.get("lastModifiedTime")) if status == "cancelling" else None,
            cancelled_at=unix_seconds(data.get("endTime")) if status == "cancelled" else None,
        )

    @staticmethod
    def _counts(data: dict[str, Any]) -> RequestCounts | None:
        total = count(data.get("totalRecordCount"))
        processed = count(data.get("processedRecordCount"))
        succeeded = count(data.get("successRecordCount"))
        failed = count(data.get("errorRecordCount"))
        if total is None and processed is None and succeeded is None and failed is None:
            return None
        pending = total - processed if total is not None and processed is not None and processed <= total else None
        return RequestCounts(total=total, completed=succeeded, failed=failed, pending=pending)

    def parse_error(self, response: UpstreamResponse) -> ProviderError:
        body = decode_json(response, self.name, allow_error=True)
        name = error_name(response, body)
        message = None
        if isinstance(body, dict):
            message = body.get("message") or body.get("Message")
        if not isinstance(message, str) or not message.strip():
            message = f"{self.name} answered HTTP {response.status}" + (f" ({name})" if name else "")
        return self.error(response, scrub_message(message), type=name, code=name, precondition=name == CONFLICT)
