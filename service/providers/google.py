"""Google's batch APIs: the Gemini API (`gemini`) and Vertex AI batch prediction (`vertex`).

Both cancel calls answer `{}`, so the batch's state after the cancel comes from a follow-up GET.
Both speak Google's error envelope:

    {"error": {"code": 404, "message": "...", "status": "NOT_FOUND", "details": [...]}}

`parse_error` keeps the HTTP status and message, puts the canonical status string (`NOT_FOUND`,
`RESOURCE_EXHAUSTED`, ...) in `error.code` and derives `error.type` from it. One exception:
`FAILED_PRECONDITION` (what Google answers when a job can no longer be cancelled) is sent with
HTTP 400 but means "not in a state that allows the call", which is exactly what the unified API
reports as 409 / gRPC FAILED_PRECONDITION for every other provider (OpenAI 409, Bedrock
ConflictException); it is answered as 409 so a finished batch means the same everywhere.

Gemini (`POST {base}/v1beta/batches/{id}:cancel`, `GET {base}/v1beta/batches/{id}`,
`x-goog-api-key`): the GET answers a long-running Operation whose `metadata` is the
GenerateContentBatch (`state` BATCH_STATE_*, `batchStats` with int64-as-string counts,
`createTime`/`updateTime`/`endTime` RFC 3339 with 0/3/6/9 fraction digits). The batch is also
accepted at the top level or under `response`, and `state` as BATCH_STATE_* or JOB_STATE_* (what
the google-genai SDK converts it to). Gemini has no interim cancelling state: a batch still
PENDING/RUNNING right after an accepted cancel is reported as `cancelling` (the use case's rule for
every provider); `cancelled_at` is `endTime` (else `updateTime`) of a CANCELLED batch; there is no
cancel-request time to report.
A bad API key is HTTP 400 INVALID_ARGUMENT with ErrorInfo reason API_KEY_INVALID: the status is
kept, the error type says `authentication_error`.
IDs: `batches/x` (Envoy decodes `%2F`), `batches-x` (the seed gateway's encoding) and bare `x`
all address batch `x`.

Vertex (`POST {base}/v1/projects/{p}/locations/{l}/batchPredictionJobs/{id}:cancel`, GET of the
same name; base `https://{l}-aiplatform.googleapis.com`, `https://aiplatform.googleapis.com` for
`global`): OAuth2 bearer tokens minted with google-auth from the key's service-account JSON
(its `token_uri` is honoured), cached per service account until 5 minutes before expiry (half
the lifetime for short-lived tokens) and dropped when the API answers 401. One mint is in flight per
service account: concurrent callers await one shared, shielded future (a caller whose deadline
passes stops waiting without cancelling the others'); it runs in a worker thread so the event loop
never blocks, bounded by the provider timeout.
A mint failure is a 401 (the token endpoint refused the credentials) or a 502 (it could not be
reached); neither message carries key material. The BatchPredictionJob has `state` JOB_STATE_*
and `completionStats` {successfulCount, failedCount, incompleteCount} (int64 strings;
incompleteCount -1 = unknown). `cancelling_at` is `updateTime` while JOB_STATE_CANCELLING (the
cancel is the job's latest update); `cancelled_at` is `endTime` (else `updateTime`) once
CANCELLED. A job still queued/running right after an accepted cancel is reported `cancelling` (the
use case's rule).
IDs: bare job id (project and region from the key), the full resource name
`projects/p/locations/l/batchPredictionJobs/id`, or its URL-safe unpadded base64 (the seed
gateway's encoding). A full name is authoritative: its project and location are used even when
they differ from the key's (the key only supplies credentials; a job lives where its name says).

Request counts: proto3 JSON omits zero-valued fields, so inside a present `batchStats` /
`completionStats` a missing count is 0; when the stats object itself is missing every count is
unknown (None).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from dataclasses import dataclass
from datetime import timezone
from time import time
from typing import Any, Mapping

from service.config import Key, ProviderConfig
from service.errors import DeadlineExceeded, GatewayError, InvalidRequest, ProviderError, UpstreamUnavailable
from service.model import BatchState, RequestCounts
from service.providers.base import (
    Adapter,
    UpstreamRequest,
    UpstreamResponse,
    count,
    decode_json,
    path_segment,
    unix_seconds,
)


# --- Google's shared vocabulary ---------------------------------------------------------------------

# Vertex JobState (also what google-genai reports for Gemini batches).
JOB_STATES: Mapping[str, str] = {
    "job_state_queued": "validating",
    "job_state_pending": "validating",
    "job_state_running": "in_progress",
    "job_state_succeeded": "completed",
    "job_state_failed": "failed",
    "job_state_cancelling": "cancelling",
    "job_state_cancelled": "cancelled",
    # Stopped but resumable: not finished, so it counts as running (and `cancelling` after a cancel).
    "job_state_paused": "in_progress",
    "job_state_expired": "expired",
    # An update of a running job; it goes back to RUNNING afterwards.
    "job_state_updating": "in_progress",
    # Finished with some results missing; the counts carry the failures.
    "job_state_partially_succeeded": "completed",
}
# Gemini BatchState.
BATCH_STATES: Mapping[str, str] = {
    "batch_state_pending": "validating",
    "batch_state_running": "in_progress",
    "batch_state_succeeded": "completed",
    "batch_state_failed": "failed",
    "batch_state_cancelled": "cancelled",
    "batch_state_expired": "expired",
}
# Canonical status string -> our error type.
_ERROR_TYPES: Mapping[str, str] = {
    "INVALID_ARGUMENT": "invalid_request_error",
    "FAILED_PRECONDITION": "invalid_request_error",
    "OUT_OF_RANGE": "invalid_request_error",
    "UNAUTHENTICATED": "authentication_error",
    "PERMISSION_DENIED": "permission_error",
    "NOT_FOUND": "not_found_error",
    "ALREADY_EXISTS": "invalid_request_error",
    "ABORTED": "conflict_error",
    "RESOURCE_EXHAUSTED": "rate_limit_error",
    "CANCELLED": "api_error",
    "INTERNAL": "api_error",
    "UNKNOWN": "api_error",
    "DATA_LOSS": "api_error",
    "UNIMPLEMENTED": "api_error",
    "UNAVAILABLE": "api_error",
    "DEADLINE_EXCEEDED": "timeout_error",
}
# ErrorInfo reasons that mean "these credentials are not valid", whatever the HTTP status.
_AUTH_REASONS = frozenset(
    {"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED", "CREDENTIALS_MISSING", "ACCESS_TOKEN_EXPIRED",
     "ACCESS_TOKEN_TYPE_UNSUPPORTED", "SERVICE_DISABLED"}
)  # fmt: skip
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def google_error(provider: str, response: UpstreamResponse) -> ProviderError:
    """A ProviderError from Google's error envelope (also accepts it wrapped in a one-element list,
    as some Google front ends send it, and OAuth's `{"error": "...", "error_description"}`)."""
    data = decode_json(response, provider, allow_error=True)
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    status = message = reason = None
    if isinstance(err, dict):
        status = err.get("status")
        message = err.get("message")
        details = err.get("details")
        for detail in details if isinstance(details, list) else ():
            if isinstance(detail, dict) and detail.get("@type") == _ERROR_INFO:
                reason = detail.get("reason")
                break
    elif isinstance(err, str):  # OAuth token endpoint style
        status, message = err, data.get("error_description")
    status = status if isinstance(status, str) and status else None
    http_status = response.status
    if status == "FAILED_PRECONDITION" and http_status == 400:
        http_status = 409  # see the module docstring: "not in a state that allows the call"
    if reason in _AUTH_REASONS:
        error_type = "authentication_error"
    elif status in _ERROR_TYPES:
        error_type = _ERROR_TYPES[status]
    else:
        error_type = "api_error" if http_status >= 500 else "invalid_request_error"
    return ProviderError(
        str(message) if message else f"{provider} answered HTTP {response.status}",
        status_code=http_status,
        type=error_type,
        code=status,
        provider=provider,
    )


def _stats(data: Any, names: tuple[str, ...]) -> tuple[int | None, ...] | None:
    """Counts from a proto3-JSON stats object: None when the object is missing, 0 for an omitted
    field (proto3 leaves zeros out), None for a value that is not a count (e.g. -1 = unknown)."""
    if not isinstance(data, dict):
        return None
    return tuple(count(data[name]) if name in data else 0 for name in names)


class _GoogleAdapter(Adapter):
    """What Gemini and Vertex share: the error envelope."""

    def parse_error(self, response: UpstreamResponse) -> ProviderError:
        return google_error(self.name, response)


# --- Gemini -------------------------------------------------------------------------------------------


def _gemini_batch(data: Any) -> dict | None:
    """The GenerateContentBatch inside a batches.get answer: the Operation's `metadata` (documented),
    the answer itself, or the Operation's `response` (seen in the wild)."""
    if not isinstance(data, dict):
        return None
    for candidate in (data.get("metadata"), data, data.get("response")):
        if isinstance(candidate, dict) and isinstance(candidate.get("state"), str) and candidate["state"]:
            return candidate
    return None


class GeminiAdapter(_GoogleAdapter):
    name = "gemini"
    default_base_url = "https://generativelanguage.googleapis.com"
    api_version = "v1beta"
    statuses = {**BATCH_STATES, **JOB_STATES}
    accepts_direct_keys = True

    def parse_id(self, batch_id: str) -> str:
        """`batches/x`, `batches-x` or `x` -> `x` (a bare id that itself starts with `batches-` is
        read as the seed's encoding: Gemini batch ids are lowercase alphanumerics)."""
        bare = batch_id
        for prefix in ("batches/", "batches-"):
            if bare.startswith(prefix):
                bare = bare[len(prefix):]
                break
        path_segment(bare)
        return bare

    def _url(self, key: Key, ref: str, suffix: str = "") -> str:
        return f"{self.base_url(key)}/{self.api_version}/batches/{path_segment(ref)}{suffix}"

    def _headers(self, key: Key) -> dict[str, str]:
        return self.headers({"x-goog-api-key": key.value})

    def cancel_request(self, key: Key, ref: str) -> UpstreamRequest:
        # "The request body must be empty."
        return UpstreamRequest("POST", self._url(key, ref, ":cancel"), self._headers(key))

    def status_request(self, key: Key, ref: str) -> UpstreamRequest:
        return UpstreamRequest("GET", self._url(key, ref), self._headers(key))

    def parse_batch(self, batch_id: str, data: Any) -> BatchState:
        batch = _gemini_batch(data)
        if batch is None:
            # A finished Operation without metadata: error code 1 is google.rpc.Code.CANCELLED.
            error = data.get("error") if isinstance(data, dict) else None
            if isinstance(error, dict) and error.get("code") == 1 and data.get("done") is True:
                return BatchState(id=batch_id, status="cancelled")
            raise UpstreamUnavailable(f"{self.name} answered without a batch state", provider=self.name)
        status = self.status(batch["state"])
        stats = _stats(
            batch.get("batchStats"),
            ("requestCount", "successfulRequestCount", "failedRequestCount", "pendingRequestCount"),
        )
        counts = None
        if stats is not None:
            total, succeeded, failed, pending = stats
            counts = RequestCounts(
                total=total, completed=succeeded, failed=failed, succeeded=succeeded, pending=pending
            )
        cancelled_at = None
        if status == "cancelled":
            cancelled_at = unix_seconds(batch.get("endTime")) or unix_seconds(batch.get("updateTime"))
        return BatchState(id=batch_id, status=status, counts=counts, cancelled_at=cancelled_at)


# --- Vertex -------------------------------------------------------------------------------------------

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# A cached token is replaced this long before it expires (half its lifetime for short-lived ones).
TOKEN_REFRESH_MARGIN_S = 300.0
_RESOURCE_NAME = re.compile(r"^projects/([^/]+)/locations/([^/]+)/batchPredictionJobs/([^/]+)$")
# A location goes into the host name of the default base URL: strictly a region name.
_LOCATION = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_BASE64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


@dataclass(frozen=True, slots=True)
class VertexJobRef:
    """A batch prediction job: its id, and the project/location of its resource name when the caller
    gave one (else the key's are used)."""

    job_id: str
    project: str | None = None
    location: str | None = None


def _decode_resource_name(batch_id: str) -> str | None:
    """The resource name inside a URL-safe base64 id (padded or not), else None."""
    if not _BASE64URL.match(batch_id):
        return None
    text = batch_id.rstrip("=")
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return decoded if _RESOURCE_NAME.match(decoded) else None


class _TokenSource:
    """Access tokens for one service account: google-auth credentials (built once, so the signer is
    reused), the cached token and the one refresh in flight."""

    __slots__ = ("credentials", "token", "refresh_at", "refreshing")

    def __init__(self, credentials: Any) -> None:
        self.credentials = credentials
        self.token: str | None = None
        self.refresh_at = 0.0
        self.refreshing: asyncio.Future | None = None

    def fresh_token(self) -> str | None:
        return self.token if self.token is not None and time() < self.refresh_at else None

    def store(self, token: str, expires_at: float) -> None:
        now = time()
        self.token = token
        self.refresh_at = expires_at - min(TOKEN_REFRESH_MARGIN_S, max(0.0, expires_at - now) / 2)


class VertexAdapter(_GoogleAdapter):
    name = "vertex"
    api_version = "v1"
    statuses = JOB_STATES
    # Vertex authenticates with the key's service account; a caller's API key cannot stand in.
    accepts_direct_keys = False

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self._tokens: dict[tuple, _TokenSource] = {}
        self._http_request: Any = None  # google-auth transport, created on first mint

    # Ids and URLs

    def parse_id(self, batch_id: str) -> VertexJobRef:
        name = batch_id if "/" in batch_id else _decode_resource_name(batch_id)
        if name is None:
            path_segment(batch_id)
            return VertexJobRef(batch_id)
        match = _RESOURCE_NAME.match(name)
        if match is None:
            raise InvalidRequest(
                "batch_id must be a batch prediction job id or projects/P/locations/L/batchPredictionJobs/ID",
                param="batch_id",
            )
        project, location, job_id = match.groups()
        for part in (project, job_id):
            path_segment(part)
        if not _LOCATION.match(location):
            raise InvalidRequest("batch_id names a location that is not a valid region", param="batch_id")
        return VertexJobRef(job_id, project, location)

    def _where(self, key: Key, ref: VertexJobRef) -> tuple[str, str]:
        if ref.project is not None and ref.location is not None:
            return ref.project, ref.location
        if key.vertex is None:
            raise InvalidRequest("the vertex key has no vertex_key_config", code="invalid_key_config")
        return key.vertex.project_id, key.vertex.region

    def _base_for(self, location: str) -> str:
        if self.config.network.base_url:
            return self.config.network.base_url
        if not _LOCATION.match(location):
            raise InvalidRequest("the vertex key's region is not a valid location", code="invalid_key_config")
        if location == "global":
            return "https://aiplatform.googleapis.com"
        return f"https://{location}-aiplatform.googleapis.com"

    def base_url(self, key: Key) -> str:
        return self._base_for(key.vertex.region if key.vertex else "")

    def _url(self, key: Key, ref: VertexJobRef, suffix: str = "") -> str:
        project, location = self._where(key, ref)
        return (
            f"{self._base_for(location)}/{self.api_version}/projects/{path_segment(project)}"
            f"/locations/{path_segment(location)}/batchPredictionJobs/{path_segment(ref.job_id)}{suffix}"
        )

    def cancel_request(self, key: Key, ref: VertexJobRef) -> UpstreamRequest:
        headers = self.headers({}, fixed={"Content-Type": "application/json"})
        return UpstreamRequest("POST", self._url(key, ref, ":cancel"), headers, b"{}")

    def status_request(self, key: Key, ref: VertexJobRef) -> UpstreamRequest:
        return UpstreamRequest("GET", self._url(key, ref), self.headers({}))

    # OAuth2

    async def prepare(self, key: Key, request: UpstreamRequest) -> UpstreamRequest:
        request.headers["Authorization"] = f"Bearer {await self.access_token(key)}"
        return request

    async def access_token(self, key: Key) -> str:
        """A valid access token for the key's service account: the cached one, else one minted now
        (concurrent callers share the one mint in flight)."""
        source = self._token_source(key)
        token = source.fresh_token()
        if token is not None:
            return token
        if source.refreshing is None or source.refreshing.done():
            source.refreshing = asyncio.ensure_future(self._mint(source))
            source.refreshing.add_done_callback(_consume_exception)
        try:
            # Shielded: a caller giving up (deadline) does not cancel the others' mint.
            return await asyncio.wait_for(asyncio.shield(source.refreshing), self.config.network.timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(f"{self.name}: minting an access token took too long", provider=self.name) from None

    def _token_source(self, key: Key) -> _TokenSource:
        creds = key.vertex.auth_credentials if key.vertex else None
        if not isinstance(creds, dict):
            raise InvalidRequest("the vertex key has no service-account credentials", code="invalid_key_config")
        ident = tuple(creds.get(name) for name in ("client_email", "token_uri", "private_key_id", "private_key"))
        source = self._tokens.get(ident)
        if source is None:
            from google.oauth2 import service_account  # the import costs ~100 ms: only when Vertex is used

            try:
                credentials = service_account.Credentials.from_service_account_info(
                    creds, scopes=[CLOUD_PLATFORM_SCOPE]
                )
            except (ValueError, TypeError, KeyError) as exc:
                # Never the exception text: it may quote the key material.
                raise GatewayError(
                    f"{self.name}: the key's service-account credentials could not be loaded ({type(exc).__name__})",
                    status_code=401,
                    type="authentication_error",
                    code="invalid_credentials",
                    provider=self.name,
                ) from None
            source = self._tokens[ident] = _TokenSource(credentials)
        return source

    async def _mint(self, source: _TokenSource) -> str:
        from google.auth import exceptions

        if self._http_request is None:
            self._http_request = _timed_request(self.config.network.timeout_s)
        try:
            await asyncio.to_thread(source.credentials.refresh, self._http_request)
        except exceptions.RefreshError as exc:
            retryable = bool(getattr(exc, "retryable", False))
            detail = _refresh_error_detail(exc)
            raise ProviderError(
                f"{self.name}: the token endpoint refused the service-account credentials: {detail}",
                status_code=502 if retryable else 401,
                type="upstream_error" if retryable else "authentication_error",
                code=_refresh_error_code(exc) or ("upstream_unavailable" if retryable else "invalid_grant"),
                provider=self.name,
            ) from None
        except exceptions.GoogleAuthError as exc:  # TransportError and friends: no answer
            raise UpstreamUnavailable(
                f"{self.name}: could not reach the token endpoint ({type(exc).__name__})", provider=self.name
            ) from None
        credentials = source.credentials
        expiry = credentials.expiry
        expires_at = expiry.replace(tzinfo=timezone.utc).timestamp() if expiry is not None else time() + 3600
        source.store(credentials.token, expires_at)
        return credentials.token

    def parse_error(self, response: UpstreamResponse) -> ProviderError:
        error = google_error(self.name, response)
        if response.status == 401:
            # The token was refused (revoked, expired early): mint a new one next time.
            for source in self._tokens.values():
                source.token = None
        return error

    # The batch

    def parse_batch(self, batch_id: str, data: Any) -> BatchState:
        if not isinstance(data, dict) or not isinstance(data.get("state"), str) or not data["state"]:
            raise UpstreamUnavailable(f"{self.name} answered without a batch prediction job", provider=self.name)
        raw_state = data["state"]
        status = self.status(raw_state)
        stats = _stats(data.get("completionStats"), ("successfulCount", "failedCount", "incompleteCount"))
        counts = None
        if stats is not None:
            succeeded, failed, incomplete = stats
            known = incomplete is not None and succeeded is not None and failed is not None
            counts = RequestCounts(
                total=succeeded + failed + incomplete if known else None,
                completed=succeeded,
                failed=failed,
                succeeded=succeeded,
                pending=incomplete,
            )
        cancelling_at = cancelled_at = None
        if raw_state.upper() == "JOB_STATE_CANCELLING":
            cancelling_at = unix_seconds(data.get("updateTime"))
        elif status == "cancelled":
            cancelled_at = unix_seconds(data.get("endTime")) or unix_seconds(data.get("updateTime"))
        return BatchState(
            id=batch_id, status=status, counts=counts, cancelling_at=cancelling_at, cancelled_at=cancelled_at
        )


def _consume_exception(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a mint nobody waits for any more logs nothing


def _timed_request(timeout: float) -> Any:
    """google-auth's requests transport with a timeout on every call and no redirects followed
    (a redirect must not carry an assertion to another host)."""
    import requests
    from google.auth.transport.requests import Request

    session = requests.Session()
    session.max_redirects = 0
    transport = Request(session)

    def send(url: str, method: str = "GET", body: Any = None, headers: Any = None, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", timeout)
        return transport(url, method=method, body=body, headers=headers, **kwargs)

    return send


def _refresh_error_code(exc: Exception) -> str | None:
    data = exc.args[1] if len(exc.args) > 1 else None
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) and error else None


def _refresh_error_detail(exc: Exception) -> str:
    """The token endpoint's `error: error_description`, shortened; never a body we cannot read."""
    data = exc.args[1] if len(exc.args) > 1 else None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        description = data.get("error_description")
        text = f"{data['error']}: {description}" if isinstance(description, str) else data["error"]
    else:
        text = "the token endpoint answered with an unreadable error"
    return text[:300]
