"""Simulated Amazon Bedrock batch inference control plane: stop, get and list model invocation jobs.

    POST {prefix}/model-invocation-job/{jobIdentifier}/stop   -> 200, empty body
    GET  {prefix}/model-invocation-job/{jobIdentifier}        -> GetModelInvocationJob
    GET  {prefix}/model-invocation-jobs                       -> ListModelInvocationJobs

ListModelInvocationJobs takes (botocore's service model) `maxResults` 1-1000 (100 when absent:
the default is not documented), `nextToken`, `statusEquals` (one status), `submitTimeAfter` /
`submitTimeBefore` (ISO 8601, strictly after / before), `nameContains`, `sortBy=CreationTime` and
`sortOrder` (Descending by default) and answers `{invocationJobSummaries, nextToken}`, the last
page without `nextToken`. A value out of its constraint is a ValidationException (400). Job
summaries carry no tags (Bedrock keeps those apart, behind ListTagsForResource), so a seeded
batch's metadata never shows.

The identifier is a job id or the job's ARN (`arn:aws:bedrock:us-east-1:123456789012:
model-invocation-job/{id}`), percent-encoded as one path segment; both find the batch seeded
under the job id (a batch seeded under its full ARN is found by that ARN too).

Auth is SigV4 (service `bedrock`, region `us-east-1`), verified the way AWS does it, with botocore
recomputing the signature over the exact raw path received (non-S3 services encode the already
encoded path once more in the canonical request). A sandbox key is `ACCESS_KEY:SECRET_KEY` or
`ACCESS_KEY:SECRET_KEY:SESSION_TOKEN`; the access key must be known, a key with a session token
needs it in `X-Amz-Security-Token`. Refusals are 403 with `x-amzn-ErrorType` and `{"message"}`:
no Authorization header -> MissingAuthenticationTokenException; a malformed one ->
IncompleteSignatureException; unknown access key or wrong session token ->
UnrecognizedClientException; wrong secret, scope (date, region, service) or a signature older or
newer than 5 minutes -> InvalidSignatureException (the mismatch message echoes the canonical
request and string to sign, as AWS does).

Job states render as Bedrock's: validating -> Validating, in_progress and finalizing -> InProgress,
cancelling -> Stopping, cancelled -> Stopped, completed -> Completed, failed -> Failed, expired ->
Expired (`BedrockOptions.status_names` renames any of them, e.g. completed -> PartiallyCompleted or
validating -> Scheduled). A stop moves a running job to Stopping; after its `cancel_delay_s` it
reads Stopped. Stopping a job that already ended is a ConflictException, which Bedrock sends as
HTTP 400. Error headers carry the coral suffix (`ConflictException:http://internal.amazon.com/
coral/com.amazonaws.bedrock/`) unless `BedrockOptions.error_type_suffix` is off.

Not pinned down by a public source, so configurable (`bedrock_options(sim)`): whether record
counts are in the job (current API models have totalRecordCount, processedRecordCount,
successRecordCount, errorRecordCount; older answers lack them), whether a second stop of a
Stopping job is a conflict, the exact messages, and whether identifiers outside AWS's pattern are
refused with a ValidationException (off by default so any seeded id works).
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import time
from typing import Any
from uuid import uuid4
from weakref import WeakKeyDictionary

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

from sandbox.core import (
    BATCH_LIFETIME_S,
    Handler,
    NotCancellable,
    ProviderSim,
    SimBatch,
    Simulator,
    int_query,
    json_response,
    token_query,
)

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
SERVICE = "bedrock"
ARN_PREFIX = f"arn:aws:bedrock:{REGION}:{ACCOUNT_ID}:model-invocation-job/"
SIGNATURE_MAX_SKEW_S = 300
LIST_DEFAULT_RESULTS = 100
LIST_MAX_RESULTS = 1000
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"

# AWS's pattern for a job identifier (StopModelInvocationJob / GetModelInvocationJob).
IDENTIFIER_PATTERN = r"((arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:model-invocation-job/)?[a-z0-9]{12})"
_IDENTIFIER = re.compile(rf"^{IDENTIFIER_PATTERN}$")
_ARN = re.compile(r"^arn:(aws(?:-[^:]+)?):bedrock:([^:]*):([^:]*):model-invocation-job/(.+)$")

MISSING_TOKEN = "Missing Authentication Token"
UNRECOGNIZED_CLIENT = "The security token included in the request is invalid."
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)
THROTTLED = "Too many requests, please wait before trying again."
CORAL_SERVICE_NS = "http://internal.amazon.com/coral/com.amazon.coral.service/"
CORAL_BEDROCK_NS = "http://internal.amazon.com/coral/com.amazonaws.bedrock/"

# Injected status -> (exception, message), as Bedrock's service model names them.
STATUS_ERRORS: dict[int, tuple[str, str]] = {
    400: ("ValidationException", "Input validation failed. Check your request parameters and retry the request."),
    403: ("AccessDeniedException", "You don't have access to the model with the specified model ID."),
    404: ("ResourceNotFoundException", "The specified resource ARN was not found."),
    429: ("ThrottlingException", THROTTLED),
    500: ("InternalServerException", "An internal server error occurred. Retry your request."),
    503: ("ServiceUnavailableException", "Service is unavailable. Try again later."),
}
# Auth refusals come from the AWS front end, not from Bedrock itself.
_FRONT_END_ERRORS = frozenset(
    {
        "MissingAuthenticationTokenException",
        "IncompleteSignatureException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
    }
)

# SimBatch status -> Bedrock ModelInvocationJobStatus.
JOB_STATUS = {
    "validating": "Validating",
    "in_progress": "InProgress",
    "finalizing": "InProgress",
    "cancelling": "Stopping",
    "cancelled": "Stopped",
    "completed": "Completed",
    "failed": "Failed",
    "expired": "Expired",
}
BEDROCK_STATUSES = frozenset(
    {
        "Submitted", "Validating", "Scheduled", "InProgress", "Completed", "PartiallyCompleted",
        "Failed", "Stopping", "Stopped", "Expired",
    }
)  # fmt: skip


@dataclass(slots=True)
class BedrockOptions:
    """Behaviour no public source pins down, chosen per sandbox (`bedrock_options(sim)`)."""

    # Render totalRecordCount / processedRecordCount / successRecordCount / errorRecordCount.
    record_counts: bool = True
    # x-amzn-ErrorType as `Name:http://internal.amazon.com/coral/...` (True) or just `Name`.
    error_type_suffix: bool = True
    # Key of the message in error bodies: `message` (rest-json) or `Message`.
    message_key: str = "message"
    # A second stop of a Stopping job: ConflictException (True) or accepted again (False).
    conflict_when_stopping: bool = False
    # Refuse identifiers outside AWS's pattern (12 lowercase alphanumerics) with ValidationException.
    strict_identifiers: bool = False
    # SimBatch status -> Bedrock status to render instead of the default one.
    status_names: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.message_key not in ("message", "Message"):
            raise ValueError("message_key must be 'message' or 'Message'")
        for status, name in self.status_names.items():
            if status not in JOB_STATUS or name not in BEDROCK_STATUSES:
                raise ValueError(f"status_names maps SimBatch statuses to Bedrock statuses, not {status!r}: {name!r}")


_OPTIONS: WeakKeyDictionary[Simulator, BedrockOptions] = WeakKeyDictionary()


def bedrock_options(sim: Simulator) -> BedrockOptions:
    """The Bedrock options of one sandbox (they survive `sim.reset()`)."""
    options = _OPTIONS.get(sim)
    if options is None:
        options = _OPTIONS[sim] = BedrockOptions()
    return options


@dataclass(frozen=True, slots=True)
class SandboxCredentials:
    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, key: str) -> SandboxCredentials:
        """`ACCESS_KEY:SECRET_KEY[:SESSION_TOKEN]` (secret keys and tokens hold no `:`)."""
        parts = key.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError("a Bedrock sandbox key is ACCESS_KEY:SECRET_KEY[:SESSION_TOKEN]")
        return cls(*parts)


def iso8601(seconds: int | float | None) -> str | None:
    """Unix seconds as Bedrock writes timestamps: ISO 8601, UTC, milliseconds, `Z`."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_arn(batch_id: str) -> str:
    return batch_id if batch_id.startswith("arn:") else ARN_PREFIX + batch_id


def job_name(batch_id: str) -> str:
    job_id = batch_id.rsplit("/", 1)[-1]
    return f"sandbox-job-{re.sub(r'[^A-Za-z0-9]', '', job_id)[:40] or 'x'}"


def parse_iso8601(text: str) -> float | None:
    """Unix seconds of an ISO 8601 timestamp as botocore writes it (`2026-01-02T03:04:05Z`), or
    of unix seconds; None when it is neither. A timestamp without offset is UTC."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def render_job(batch: SimBatch, options: BedrockOptions) -> dict[str, Any]:
    """The batch as a GetModelInvocationJob answer."""
    data = batch.to_dict()
    status = options.status_names.get(batch.status) or JOB_STATUS[batch.status]
    job_id = batch.id.rsplit("/", 1)[-1]
    ended = data["cancelled_at"] or data["completed_at"] or data["failed_at"] or data["expired_at"]
    modified = batch.cancelled_at or batch.cancelling_at or ended or batch.in_progress_at or batch.created_at
    job: dict[str, Any] = {
        "jobArn": job_arn(batch.id),
        "jobName": job_name(batch.id),
        "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
        "roleArn": f"arn:aws:iam::{ACCOUNT_ID}:role/BedrockBatchInferenceRole",
        "status": status,
        "submitTime": iso8601(batch.created_at),
        "lastModifiedTime": iso8601(modified),
        "inputDataConfig": {"s3InputDataConfig": {"s3InputFormat": "JSONL", "s3Uri": "s3://sandbox-batch/input/"}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": f"s3://sandbox-batch/output/{job_id}/"}},
        "timeoutDurationInHours": BATCH_LIFETIME_S // 3600,
        "jobExpirationTime": iso8601(batch.created_at + BATCH_LIFETIME_S),
        "modelInvocationType": "InvokeModel",
    }
    if ended is not None:
        job["endTime"] = iso8601(ended)
    if batch.status == "failed":
        job["message"] = "The batch inference job failed: the input data could not be read."
    if options.record_counts:
        counts = batch.request_counts
        job["totalRecordCount"] = counts["total"]
        job["processedRecordCount"] = counts["completed"] + counts["failed"]
        job["successRecordCount"] = counts["completed"]
        job["errorRecordCount"] = counts["failed"]
    return job


class BedrockSim(ProviderSim):
    """Bedrock's control plane for batch inference jobs, SigV4-authenticated."""

    name = "bedrock"
    prefix = "/bedrock"
    default_key = "AKIASANDBOXBEDROCK01:sandbox/Bedrock+Secret0Key0000000000000000"
    unknown_key_status = 403  # AWS answers UnrecognizedClientException / InvalidSignatureException

    @classmethod
    def new_batch_id(cls) -> str:
        return uuid4().hex[:12]  # 12 lowercase alphanumerics, like Bedrock's job ids

    @classmethod
    def gateway_config(cls, base_url: str, key: str) -> dict[str, Any]:
        creds = SandboxCredentials.parse(key)
        bedrock = {"access_key": creds.access_key, "secret_key": creds.secret_key, "region": REGION}
        if creds.session_token:
            bedrock["session_token"] = creds.session_token
        return {
            "keys": [{"name": "sandbox", "use_for_batch_api": True, "bedrock_key_config": bedrock}],
            "network_config": {"base_url": base_url},
        }

    @property
    def options(self) -> BedrockOptions:
        return bedrock_options(self.sim)

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/model-invocation-job/{job}/stop", self.stop),
            ("GET", "/model-invocation-job/{job}", self.get_job),
            ("GET", "/model-invocation-jobs", self.list_jobs),
        ]

    async def list_jobs(self, request: web.Request) -> web.Response:
        """ListModelInvocationJobs: one page of the jobs the key's account sees."""
        denied = await self.authenticate(request)
        if denied is not None:
            return denied
        query, options = request.query, self.options
        try:
            limit = int_query(request, "maxResults")
        except ValueError:
            return self.constraint_error(query["maxResults"], "maxResults", "Member must be an integer")
        if limit is None:
            limit = LIST_DEFAULT_RESULTS
        if not 1 <= limit <= LIST_MAX_RESULTS:
            bound = "greater than or equal to 1" if limit < 1 else f"less than or equal to {LIST_MAX_RESULTS}"
            return self.constraint_error(limit, "maxResults", f"Member must have value {bound}")
        status = query.get("statusEquals")
        if status is not None and status not in BEDROCK_STATUSES:
            allowed = ", ".join(sorted(BEDROCK_STATUSES))
            return self.constraint_error(status, "statusEquals", f"Member must satisfy enum value set: [{allowed}]")
        bounds = {}
        for name in ("submitTimeAfter", "submitTimeBefore"):
            if name in query:
                when = parse_iso8601(query[name])
                if when is None:
                    return self.constraint_error(query[name], name, "Member must be an ISO 8601 timestamp")
                bounds[name] = when
        order = query.get("sortOrder", "Descending")
        if order not in ("Ascending", "Descending") or query.get("sortBy", "CreationTime") != "CreationTime":
            return self.validation_error("sortBy must be CreationTime and sortOrder Ascending or Descending")
        try:
            cursor = token_query(request, "nextToken")
        except ValueError:
            return self.validation_error("The nextToken is not valid.")
        after, before = bounds.get("submitTimeAfter"), bounds.get("submitTimeBefore")
        name_part = query.get("nameContains")

        def matches(batch: SimBatch) -> bool:
            if status is not None and (options.status_names.get(batch.status) or JOB_STATUS[batch.status]) != status:
                return False
            if (after is not None and batch.created_at <= after) or (before is not None and batch.created_at >= before):
                return False
            return name_part is None or name_part in job_name(batch.id)

        batches, more = self.store.page(
            self.account(request), limit=limit, after=cursor, newest_first=order == "Descending", where=matches
        )
        body: dict[str, Any] = {"invocationJobSummaries": [render_job(batch, options) for batch in batches]}
        token = self.store.next_token(batches, more)
        if token:
            body["nextToken"] = token
        return json_response(body, headers=self.response_headers())

    def validation_error(self, problem: str) -> web.Response:
        return self.error(400, "ValidationException", f"1 validation error detected: {problem}")

    def constraint_error(self, value: object, member: str, constraint: str) -> web.Response:
        return self.validation_error(f"Value '{value}' at '{member}' failed to satisfy constraint: {constraint}")

    async def stop(self, request: web.Request) -> web.Response:
        return await self.answer(request, stop=True)

    async def get_job(self, request: web.Request) -> web.Response:
        return await self.answer(request, stop=False)

    async def answer(self, request: web.Request, *, stop: bool) -> web.Response:
        denied = await self.authenticate(request)
        if denied is not None:
            return denied
        identifier = request.match_info["job"]
        options = self.options
        if options.strict_identifiers and not _IDENTIFIER.match(identifier):
            return self.error(
                400,
                "ValidationException",
                f"1 validation error detected: Value '{identifier}' at 'jobIdentifier' failed to satisfy "
                f"constraint: Member must satisfy regular expression pattern: {IDENTIFIER_PATTERN}",
            )
        batch = self.find(identifier, self.account(request))
        if batch is None:
            return self.error(404, "ResourceNotFoundException", f"Could not find model invocation job {identifier}.")
        if not stop:
            return json_response(render_job(batch, options), headers=self.response_headers())
        status = options.status_names.get(batch.status) or JOB_STATUS[batch.status]
        if batch.status == "cancelling" and options.conflict_when_stopping:
            return self.conflict(batch, status)
        try:
            batch.cancel(time())
        except NotCancellable:
            return self.conflict(batch, status)
        return web.Response(status=200, headers=self.response_headers())

    def find(self, identifier: str, key: str | None) -> SimBatch | None:
        """The batch an identifier names for the key `key`: a job id, or an ARN of this region
        and account."""
        match = _ARN.match(identifier)
        if match is None:
            return self.store.get(identifier, key)
        _, region, account, job_id = match.groups()
        if (region, account) != (REGION, ACCOUNT_ID) or "/" in job_id:
            return None
        if self.store.peek(identifier) is not None:
            return self.store.get(identifier, key)
        return self.store.get(job_id, key)

    def account(self, request: web.Request) -> str | None:
        """The sandbox key (ACCESS_KEY:SECRET_KEY[:TOKEN]) whose access key signed the request."""
        credential = parse_authorization(request.headers.get("Authorization", "").partition(" ")[2]).get("Credential")
        access_key = (credential or "").split("/")[0]
        for key in self.sim.keys.get(self.name, ()):
            if key.split(":")[0] == access_key:
                return key
        return None

    def conflict(self, batch: SimBatch, status: str) -> web.Response:
        # Bedrock's service model sends ConflictException as HTTP 400.
        return self.error(
            400, "ConflictException", f"Job {job_arn(batch.id)} cannot be stopped because it is in {status} status."
        )

    # --- SigV4 -----------------------------------------------------------------------------------

    async def authenticate(self, request: web.Request) -> web.Response | None:
        """None for a correctly signed request by a known key, else AWS's 403."""
        header = request.headers.get("Authorization")
        if not header:
            return self.error(403, "MissingAuthenticationTokenException", MISSING_TOKEN)
        algorithm, _, params = header.partition(" ")
        fields = parse_authorization(params)
        amz_date = request.headers.get("X-Amz-Date")
        problems = [
            f"Authorization header requires '{name}' parameter."
            for name in ("Credential", "Signature", "SignedHeaders")
            if not fields.get(name)
        ]
        if not amz_date:
            problems.append("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
        if algorithm != "AWS4-HMAC-SHA256" or problems:
            return self.error(403, "IncompleteSignatureException", " ".join(problems) + f" Authorization={header}")
        scope = fields["Credential"].split("/")
        if len(scope) != 5:
            return self.error(
                403,
                "IncompleteSignatureException",
                f"Credential should have five parts: '{fields['Credential']}'.",
            )
        access_key, date, region, service, terminator = scope
        creds = self.credentials(access_key)
        if creds is None or (creds.session_token or None) != request.headers.get("X-Amz-Security-Token"):
            return self.error(403, "UnrecognizedClientException", UNRECOGNIZED_CLIENT)
        signed = fields["SignedHeaders"].split(";")
        try:
            when = datetime.strptime(amz_date, AMZ_DATE_FORMAT).replace(tzinfo=UTC).timestamp()
        except ValueError:
            message = f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'."
            return self.error(403, "IncompleteSignatureException", message)
        mismatch = scope_problem(date, region, service, terminator, amz_date, signed, when, time())
        if mismatch:
            return self.error(403, "InvalidSignatureException", mismatch)
        expected, canonical, string_to_sign = await self.signature(request, creds, region, amz_date, signed)
        if not hmac.compare_digest(expected, fields["Signature"]):
            message = (
                f"{SIGNATURE_MISMATCH}\n\nThe Canonical String for this request should have been\n'{canonical}'\n\n"
                f"The String-to-Sign should have been\n'{string_to_sign}'\n"
            )
            return self.error(403, "InvalidSignatureException", message)
        return None

    def credentials(self, access_key: str) -> SandboxCredentials | None:
        for key in self.sim.keys.get(self.name, ()):
            try:
                creds = SandboxCredentials.parse(key)
            except ValueError:
                continue
            if creds.access_key == access_key:
                return creds
        return None

    async def signature(
        self, request: web.Request, creds: SandboxCredentials, region: str, amz_date: str, signed: list[str]
    ) -> tuple[str, str, str]:
        """(signature, canonical request, string to sign) as botocore computes them over the raw
        path and the signed headers exactly as received."""
        headers = HTTPHeaders()
        for name in signed:
            for value in request.headers.getall(name, ()):
                headers[name] = value
        url = f"{request.scheme}://{request.host}{request.raw_path}"
        aws_request = AWSRequest(method=request.method, url=url, headers=headers, data=await request.read())
        aws_request.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(creds.access_key, creds.secret_key, creds.session_token), SERVICE, region)
        canonical = signer.canonical_request(aws_request)
        string_to_sign = signer.string_to_sign(aws_request, canonical)
        return signer.signature(string_to_sign, aws_request), canonical, string_to_sign

    # --- answers ---------------------------------------------------------------------------------

    def error(self, status: int, exception: str, message: str) -> web.Response:
        options = self.options
        error_type = exception
        if options.error_type_suffix:
            namespace = CORAL_SERVICE_NS if exception in _FRONT_END_ERRORS else CORAL_BEDROCK_NS
            error_type = f"{exception}:{namespace}"
        headers = {**self.response_headers(), "x-amzn-ErrorType": error_type}
        return json_response({options.message_key: message}, status, headers)

    def status_error(self, status: int) -> web.Response:
        default = STATUS_ERRORS[500] if status >= 500 else STATUS_ERRORS[400]
        exception, message = STATUS_ERRORS.get(status, default)
        return self.error(status, exception, message)

    async def not_found_route(self, request: web.Request) -> web.Response:
        return self.error(404, "UnknownOperationException", "Unknown operation")

    def response_headers(self) -> dict[str, str]:
        return {"x-amzn-RequestId": str(uuid4())}


def parse_authorization(params: str) -> dict[str, str]:
    """`Credential=..., SignedHeaders=..., Signature=...` as a dict (missing parts left out)."""
    fields: dict[str, str] = {}
    for part in params.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields[name] = value.strip()
    return fields


def scope_problem(
    date: str, region: str, service: str, terminator: str, amz_date: str, signed: list[str], when: float, now: float
) -> str | None:
    """AWS's message for a credential scope or signing time it refuses, else None."""
    if date != amz_date[:8]:
        return (
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{date}' != '{amz_date[:8]}', from '{amz_date}'."
        )
    if region != REGION:
        return "Credential should be scoped to a valid region. "
    if service != SERVICE:
        return f"Credential should be scoped to correct service: '{SERVICE}'. "
    if terminator != "aws4_request":
        return f"Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'. "
    if "host" not in signed:
        return "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
    if when < now - SIGNATURE_MAX_SKEW_S:
        earliest = amz_time(now - SIGNATURE_MAX_SKEW_S)
        return f"Signature expired: {amz_date} is now earlier than {earliest} ({amz_time(now)} - 5 min.)"
    if when > now + SIGNATURE_MAX_SKEW_S:
        latest = amz_time(now + SIGNATURE_MAX_SKEW_S)
        return f"Signature not yet current: {amz_date} is still later than {latest} ({amz_time(now)} + 5 min.)"
    return None


def amz_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime(AMZ_DATE_FORMAT)
