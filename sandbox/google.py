"""Simulated Google batch APIs: the Gemini API and Vertex AI batch prediction, plus the OAuth2 token
endpoint Vertex credentials are minted at.

Gemini, under `/gemini` (API versions `v1beta` and `v1`, which the google-genai SDK uses):

    POST /v1beta/batches/{id}:cancel   -> {}
    GET  /v1beta/batches/{id}          -> Operation {name, metadata: GenerateContentBatch, done, response|error}
    GET  /v1beta/batches?pageSize=&pageToken=   -> {operations: [Operation], nextPageToken}

Auth is `x-goog-api-key` (or `?key=`): missing -> 403 PERMISSION_DENIED, unknown -> 400
INVALID_ARGUMENT with ErrorInfo reason API_KEY_INVALID, as Gemini answers. There is no interim
cancelling state: after a cancel the batch reads BATCH_STATE_RUNNING until its cancel delay has
passed, then BATCH_STATE_CANCELLED.

Vertex, under `/vertex` (API versions `v1` and `v1beta1`):

    POST /v1/projects/{p}/locations/{l}/batchPredictionJobs/{id}:cancel  -> {}
    GET  /v1/projects/{p}/locations/{l}/batchPredictionJobs/{id}         -> BatchPredictionJob
    GET  /v1/projects/{p}/locations/{l}/batchPredictionJobs?filter=&pageSize=&pageToken=
                                       -> {batchPredictionJobs: [BatchPredictionJob], nextPageToken}
    POST /token   the OAuth2 token endpoint (JWT-bearer grant)

Both lists are newest first (neither API documents an order), `pageSize` defaults to 100 and is
coerced to 1000 above that (AIP-158; neither documents its bounds), a negative one or a page token
the simulator did not make is 400 INVALID_ARGUMENT, and an empty page is `{}` (proto3 JSON leaves
empty lists out). Vertex's `filter` is the documented subset of AIP-160 (sandbox/filters.py: state,
create_time, display_name, labels.k); a Vertex job carries the batch's metadata as `labels`. A
Gemini batch has no labels; the google-genai SDK refuses `filter` outside Vertex and the simulator
ignores one.

The token endpoint verifies the assertion's RS256 signature against the sandbox service account's
public key and that its issuer is an accepted service account (the simulator's `vertex` keys are
service-account emails); the API accepts only bearer tokens it minted and that have not expired
(401 UNAUTHENTICATED otherwise). Jobs go JOB_STATE_RUNNING -> cancel -> JOB_STATE_CANCELLING ->
after the cancel delay JOB_STATE_CANCELLED. Only the projects in `vertex_options(sim).projects`
are accessible (403 PERMISSION_DENIED elsewhere); names are rendered with the project number, as
Vertex does. Token calls are recorded under `vertex` but never consume the API's faults.

What no public source pins down is an option (`gemini_options(sim)`, `vertex_options(sim)`):
the answer to cancelling a finished batch (`finished_cancel`: "error" = 400 FAILED_PRECONDITION,
"ignore" = `{}`), Gemini's state names (`job_state_names`), Gemini's GET shape
(`batch_at_top_level`) and Vertex's unknown incomplete count (`incomplete_unknown`: -1).

Both render int64 counts as strings and leave zero-valued fields out (proto3 JSON), and RFC 3339
timestamps with 9, 3 and 0 fraction digits. An unknown path answers Google's HTML 404 page.

The sandbox service account's private key below is a throwaway test key that exists only so the
sandbox can verify what google-auth signs; it grants nothing anywhere.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from secrets import token_urlsafe
from time import time
from typing import Any
from urllib.parse import urlsplit
from weakref import WeakKeyDictionary

import orjson
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from sandbox.core import (
    Handler,
    NotCancellable,
    ProviderSim,
    SimBatch,
    Simulator,
    bearer_token,
    coerced_page_size,
    json_response,
    reason,
    token_query,
)
from sandbox.filters import FilterError, Job, parse_filter

SANDBOX_PROJECT = "batchgate-sandbox"
SANDBOX_PROJECT_NUMBER = "731902548316"
SANDBOX_REGION = "us-central1"
SANDBOX_SERVICE_ACCOUNT = "batchgate@batchgate-sandbox.iam.gserviceaccount.com"
SANDBOX_PRIVATE_KEY_ID = "5a1d0c3e9b7f4e21a8c6d2b0f9e8a7c6d5b4a3f2"
SANDBOX_PRIVATE_KEY = """-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCtirhDWIOEjDY1
qvTLQn/iVeyqjr+Ia9kJYfA/nKrzMwg6ulcxoHjsdD8NO/Q+JTpB3Fp0xveLqPSl
kdO3Gq4m54RigpTCyJriWRa7TK2sbgMAbpB98GcHmK2vs6iO4/BqkxW0nU5v6DZn
q7yBgcsyoxc0wSAxakiSretBhnhwW0k8mybheRvVI1bh9llZCZC98YtiwDf8z5tt
zuvppywxngWB+sq7eH+ykkbCrT1+InUSFEmfPI/nRP+437cJqPBSfLS+CFOC/BG+
t4RyxjWmcCydVeslY2L+Ze+ilQCr3lRwQVdB5tva/5IVxkiTzqyg3PLP+rRvVuaY
aSldfwn1AgMBAAECggEAN4j/a4nNWKL4DBefy9YFj7w4huI0l+cPZunBFNJBgJ9R
oF2WXqrAV8bhkI4hnKuUJ5RpHBq6CCby13NBwcRXe9q16kJocab5rbqdxCWHJHl2
G3LGaY7/oZYx6tq+868s9iYImaqHeddhZa63HeiXyqYXXIn7D+U3wTzH3sm2DBoa
4GtGXSNzltvZ9V0AonDx4kHIl0DpdXxktWac7olalbRZjxfPIcWjt1Wtj+gO6zAj
jH7FKjmfYyD+jQSr2xvYWemf/Dgym9bsh9Qb8fWvBclkkHR9BucjgxYyML/xvo3O
tcoh1bXZ4KwULqnXDK8Cs6srK2nrV9a4B9NebxMXFwKBgQDoCVH9Ma5Rha8LR8iI
I9EXjGKGethDWBZM+hOfHoHWhODox2AIQZCnsVk0QYJZLoHevJJDRa6ZYyIGVpfP
lYhvtlwPBipBu5uiYp2GX2U9yi/qgnLwz+G1Sx0V1QnReRPsDCk/8PhsnFfY+smk
16vgaavndK/Vm32ov6jM/OgT0wKBgQC/duVBb3djCKhT3QjDuG7X1wu0M9Fp78PO
x/bpin2nLTTXmSwyaJAj90UVru2X1zW5D0xuLZPHKHrQ1XoE71Ymd9aH7JW9/kM9
HWneQ8tMhMSxrIcCLZCjeYPUOzeTh4iLao8xsKulVM94FbHyFn/nZa50nKafjVyU
HxSFbzZ2FwKBgQDmCwd8LFsUe6MVXe+T+V59KDMt/HCYI6bIXk5BvO8gjNCmN7Qf
u1D80DkOM7xVSmR7PR0NEPKPI9dBzWvo4+lGR9dxFb2jOaqNDZP6+mzXG7Lxnq7x
zEeLg5KsaG+5e36i0VO8Dt1cYIw/lDOB+EhwzpMdf3QsJGIqgQmLYVl8/QKBgQCe
wXIkiM1gY3xXVU6AIvxdoeUFfXXltjYQzkOQsBGyPcyz/EDmZ0clW1GAQjSlk3/r
O6EvNkFzgMAdSvVLBDzV1sYenHApQpv0H+B5uJLolqoVfK3Rg4CL3CUQJC3X+Sii
GTA0jn40r5b7xllvF3Lkpq456O5MG8Wo2ACHB4kL7wKBgFZlds7G4v49pgsDwNNN
j7yiWmlkIecblsRAya/9sjKeIe+7UqnVsDV2xT8sI4ud0p9cXbwDP5CRc9k/gv05
YYRwc1AcrKZylKngE0FhHsiAtbvRK54LT/Msc3Q3ElwS6C6r98x8tv/Bl+wCEGZF
VVuF3UWV+ILzJfmfQ30tOmQx
-----END PRIVATE KEY-----
"""
_PUBLIC_KEY = serialization.load_pem_private_key(SANDBOX_PRIVATE_KEY.encode(), password=None).public_key()

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth always addresses its assertions to Google's token endpoint, whatever the token_uri;
# an assertion addressed to this endpoint itself is accepted too.
GOOGLE_TOKEN_AUDIENCES = frozenset(
    {"https://oauth2.googleapis.com/token", "https://www.googleapis.com/oauth2/v4/token",
     "https://accounts.google.com/o/oauth2/token"}
)  # fmt: skip
TOKEN_LIFETIME_S = 3599
MAX_ASSERTION_LIFETIME_S = 3600
CLOCK_SKEW_S = 300
MINTED_TOKENS_LIMIT = 10_000
LIST_DEFAULT_PAGE_SIZE = 100
LIST_MAX_PAGE_SIZE = 1000

GEMINI_MODEL = "models/gemini-2.5-flash"
GEMINI_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
GEMINI_OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
GEMINI_MISSING_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or "
    "other form of API consumer identity to call this API."
)
GEMINI_INVALID_KEY = "API key not valid. Please pass a valid API key."
VERTEX_MISSING_TOKEN = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other "
    "valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
VERTEX_INVALID_TOKEN = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid "
    "authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
NOT_FOUND_PAGE = (
    "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>Error 404 (Not Found)!!1</title>\n"
    "  <p><b>404.</b> <ins>That\u2019s an error.</ins>\n  <p>The requested URL <code>{path}</code> was not found on "
    "this server.  <ins>That\u2019s all we know.</ins>\n"
)

# HTTP status -> canonical status and the message Google's front end sends with it.
STATUS_ERRORS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", VERTEX_INVALID_TOKEN),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    409: ("ABORTED", "The operation was aborted."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    499: ("CANCELLED", "The operation was cancelled."),
    500: ("INTERNAL", "Internal error encountered."),
    501: ("UNIMPLEMENTED", "Operation is not implemented, or supported, or enabled."),
    503: ("UNAVAILABLE", "The service is currently unavailable."),
    504: ("DEADLINE_EXCEEDED", "The request timed out. Please try again."),
}
# SimBatch status -> (Gemini BatchState suffix, Vertex JobState suffix). Gemini has no cancelling.
STATES: dict[str, tuple[str, str]] = {
    "validating": ("PENDING", "PENDING"),
    "in_progress": ("RUNNING", "RUNNING"),
    "finalizing": ("RUNNING", "RUNNING"),
    "cancelling": ("RUNNING", "CANCELLING"),
    "cancelled": ("CANCELLED", "CANCELLED"),
    "completed": ("SUCCEEDED", "SUCCEEDED"),
    "failed": ("FAILED", "FAILED"),
    "expired": ("EXPIRED", "EXPIRED"),
}
FINISHED = frozenset({"cancelled", "completed", "failed", "expired"})


@dataclass
class GeminiOptions:
    finished_cancel: str = "error"  # "error": 400 FAILED_PRECONDITION; "ignore": 200 {}
    job_state_names: bool = False  # JOB_STATE_* instead of BATCH_STATE_*
    batch_at_top_level: bool = False  # the GET answers the batch itself, not an Operation


@dataclass
class VertexOptions:
    finished_cancel: str = "error"
    incomplete_unknown: bool = False  # completionStats.incompleteCount = -1
    projects: set[str] = field(default_factory=lambda: {SANDBOX_PROJECT})
    token_lifetime_s: int = TOKEN_LIFETIME_S


@dataclass
class _GoogleState:
    gemini: GeminiOptions = field(default_factory=GeminiOptions)
    vertex: VertexOptions = field(default_factory=VertexOptions)
    # minted access token -> (expiry (unix), the service account it was minted for)
    tokens: dict[str, tuple[float, str]] = field(default_factory=dict)


_STATE: WeakKeyDictionary[Simulator, _GoogleState] = WeakKeyDictionary()


def _state(sim: Simulator) -> _GoogleState:
    state = _STATE.get(sim)
    if state is None:
        state = _STATE[sim] = _GoogleState()
    return state


def gemini_options(sim: Simulator) -> GeminiOptions:
    """The Gemini simulator's options for this sandbox (mutable)."""
    return _state(sim).gemini


def vertex_options(sim: Simulator) -> VertexOptions:
    """The Vertex simulator's options for this sandbox (mutable)."""
    return _state(sim).vertex


def reset_options(sim: Simulator) -> None:
    """Back to the default options (minted tokens stay valid)."""
    state = _state(sim)
    state.gemini, state.vertex = GeminiOptions(), VertexOptions()


def rfc3339(seconds: int | None, digits: int) -> str | None:
    """Google's Timestamp JSON: Z-normalised, 0/3/6/9 fraction digits (a fixed fraction, so the
    whole seconds are exactly the simulator's)."""
    if seconds is None:
        return None
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{'123456789'[:digits]}Z" if digits else f"{text}Z"


def int64_fields(values: dict[str, int]) -> dict[str, str]:
    """proto3 JSON: int64 as strings, zero values left out."""
    return {name: str(value) for name, value in values.items() if value}


def service_account_info(client_email: str, token_uri: str) -> dict[str, str]:
    """The sandbox service account's JSON key file, minting at `token_uri`."""
    return {
        "type": "service_account",
        "project_id": SANDBOX_PROJECT,
        "private_key_id": SANDBOX_PRIVATE_KEY_ID,
        "private_key": SANDBOX_PRIVATE_KEY,
        "client_email": client_email,
        "client_id": "104285093846209357123",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{client_email.replace('@', '%40')}",
        "universe_domain": "googleapis.com",
    }


class _GoogleSim(ProviderSim):
    """Google's error envelope and front-end behaviour, shared by Gemini and Vertex."""

    @property
    def google(self) -> _GoogleState:
        return _state(self.sim)

    def error(
        self, http_status: int, status: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> web.Response:
        body: dict[str, Any] = {"code": http_status, "message": message, "status": status}
        if details:
            body["details"] = details
        return json_response({"error": body}, http_status, self.response_headers())

    def status_error(self, status: int) -> web.Response:
        name, message = STATUS_ERRORS.get(status, ("UNKNOWN", reason(status)))
        return self.error(status, name, message)

    async def not_found_route(self, request: web.Request) -> web.Response:
        return web.Response(status=404, text=NOT_FOUND_PAGE.format(path=request.path), content_type="text/html")

    def response_headers(self) -> dict[str, str]:
        return {"Vary": "Origin, X-Origin, Referer", "Server": "ESF"}

    def error_info(self, reason_: str, service: str, **metadata: str) -> dict[str, Any]:
        return {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason_,
            "domain": "googleapis.com",
            "metadata": {"service": service, **metadata},
        }

    def list_page(
        self, request: web.Request, field: str, render: Callable[[SimBatch], dict[str, Any]], where: Any = None
    ) -> web.Response:
        """One page of the batches the caller sees, as `{field: [...], nextPageToken}`."""
        try:
            size = coerced_page_size(request, "pageSize", LIST_DEFAULT_PAGE_SIZE, LIST_MAX_PAGE_SIZE)
        except ValueError:
            return self.error(400, "INVALID_ARGUMENT", f"Invalid page_size {request.query['pageSize']!r}.")
        try:
            cursor = token_query(request, "pageToken")
        except ValueError:
            return self.error(400, "INVALID_ARGUMENT", "Invalid page token.")
        batches, more = self.store.page(self.account(request), limit=size, after=cursor, where=where)
        body: dict[str, Any] = {}
        if batches:
            body[field] = [render(batch) for batch in batches]
        token = self.store.next_token(batches, more)
        if token:
            body["nextPageToken"] = token
        return json_response(body, headers=self.response_headers())

    def cancel_batch(self, batch: SimBatch, finished_cancel: str, name: str, state: str) -> web.Response | None:
        """Applies a cancel; for a finished batch the error answer (unless the option ignores it).
        `state` renders the batch's state name for the message."""
        try:
            batch.cancel(time())
        except NotCancellable:
            if finished_cancel == "ignore":
                return None
            return self.error(400, "FAILED_PRECONDITION", f"{name} is in state {state} and cannot be cancelled.")
        return None


# --- Gemini ----------------------------------------------------------------------------------------


class GeminiSim(_GoogleSim):
    name = "gemini"
    prefix = "/gemini"
    default_key = "AIzaSyBatchgateSandboxGeminiKey00000000"
    service = "generativelanguage.googleapis.com"
    unknown_key_status = 400  # Google answers INVALID_ARGUMENT (API_KEY_INVALID); the type says authentication

    @classmethod
    def new_batch_id(cls) -> str:
        return f"g{uuid.uuid4().hex[:12]}"

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            route
            for version in ("v1beta", "v1")
            for route in (
                ("POST", f"/{version}/batches/{{batch_id:[^/]+}}:cancel", self.cancel),
                ("GET", f"/{version}/batches/{{batch_id}}", self.retrieve),
                ("GET", f"/{version}/batches", self.list_batches),
            )
        ]

    async def list_batches(self, request: web.Request) -> web.Response:
        denied = self.authenticate(request)
        if denied is not None:
            return denied
        return self.list_page(request, "operations", self.operation)

    def account(self, request: web.Request) -> str | None:
        return request.headers.get("x-goog-api-key") or request.query.get("key")

    def answer(self, request: web.Request, *, cancel: bool) -> web.Response:
        denied = self.authenticate(request)
        if denied is not None:
            return denied
        batch_id = request.match_info["batch_id"]
        batch = self.store.get(batch_id, self.account(request))
        if batch is None:
            return self.error(404, "NOT_FOUND", "Requested entity was not found.")
        if cancel:
            options = self.google.gemini
            refused = self.cancel_batch(batch, options.finished_cancel, f"Batch batches/{batch_id}", self.state(batch))
            return refused or json_response({}, headers=self.response_headers())
        return json_response(self.render(batch), headers=self.response_headers())

    def authenticate(self, request: web.Request) -> web.Response | None:
        key = self.account(request)
        if self.sim.key_ok(self.name, key):
            return None
        if not key:
            return self.error(403, "PERMISSION_DENIED", GEMINI_MISSING_KEY)
        details = [
            self.error_info("API_KEY_INVALID", self.service),
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": GEMINI_INVALID_KEY,
            },
        ]
        return self.error(400, "INVALID_ARGUMENT", GEMINI_INVALID_KEY, details)

    def state(self, batch: SimBatch) -> str:
        prefix = "JOB_STATE_" if self.google.gemini.job_state_names else "BATCH_STATE_"
        return prefix + STATES[batch.status][0]

    def render(self, batch: SimBatch) -> dict[str, Any]:
        """The GET answer: the Operation, or with `batch_at_top_level` the batch itself."""
        operation = self.operation(batch)
        if self.google.gemini.batch_at_top_level:
            return {key: value for key, value in operation["metadata"].items() if key != "@type"}
        return operation

    def operation(self, batch: SimBatch) -> dict[str, Any]:
        """The batch as the Operation whose metadata is the GenerateContentBatch."""
        data = batch.to_dict()
        counts = batch.request_counts
        total, succeeded, failed = counts["total"], counts["completed"], counts["failed"]
        name = f"batches/{batch.id}"
        state = self.state(batch)
        end = data["cancelled_at"] or data["completed_at"] or data["failed_at"] or data["expired_at"]
        update = max(t for t in (batch.created_at, batch.in_progress_at, batch.cancelling_at, end) if t is not None)
        metadata: dict[str, Any] = {
            "@type": GEMINI_BATCH_TYPE,
            "model": GEMINI_MODEL,
            "displayName": f"sandbox-{batch.id}",
            "createTime": rfc3339(batch.created_at, 9),
            "updateTime": rfc3339(update, 3),
            "batchStats": int64_fields(
                {
                    "requestCount": total,
                    "successfulRequestCount": succeeded,
                    "failedRequestCount": failed,
                    "pendingRequestCount": max(0, total - succeeded - failed),
                }
            ),
            "state": state,
            "name": name,
        }
        if end is not None:
            metadata["endTime"] = rfc3339(end, 0)
        operation: dict[str, Any] = {"name": name, "metadata": metadata, "done": batch.status in FINISHED}
        if batch.status == "completed":
            operation["response"] = {"@type": GEMINI_OUTPUT_TYPE, "responsesFile": f"files/batch-{batch.id}"}
        elif batch.status == "cancelled":
            operation["error"] = {"code": 1, "message": "Batch was cancelled."}
        elif batch.status in ("failed", "expired"):
            operation["error"] = {"code": 13 if batch.status == "failed" else 4, "message": f"Batch {batch.status}."}
        return operation


# --- Vertex ----------------------------------------------------------------------------------------


class VertexSim(_GoogleSim):
    name = "vertex"
    prefix = "/vertex"

    @classmethod
    def new_batch_id(cls) -> str:
        return str(uuid.uuid4().int % 10**18)  # numeric, like Vertex job ids

    # The accepted "key" is a service account: its email.
    default_key = SANDBOX_SERVICE_ACCOUNT
    service = "aiplatform.googleapis.com"

    @classmethod
    def gateway_config(cls, base_url: str, key: str) -> dict[str, Any]:
        vertex = {
            "project_id": SANDBOX_PROJECT,
            "region": SANDBOX_REGION,
            "auth_credentials": service_account_info(key, f"{base_url}/token"),
        }
        return {
            "keys": [{"name": "sandbox", "use_for_batch_api": True, "vertex_key_config": vertex}],
            "network_config": {"base_url": base_url},
        }

    def routes(self) -> list[tuple[str, str, Handler]]:
        job = "/projects/{project}/locations/{location}/batchPredictionJobs"
        return [
            route
            for version in ("v1", "v1beta1")
            for route in (
                ("POST", f"/{version}{job}/{{job_id:[^/]+}}:cancel", self.cancel),
                ("GET", f"/{version}{job}/{{job_id}}", self.retrieve),
                ("GET", f"/{version}{job}", self.list_jobs),
            )
        ]

    async def list_jobs(self, request: web.Request) -> web.Response:
        denied = self.authenticate(request)
        if denied is not None:
            return denied
        project, location = request.match_info["project"], request.match_info["location"]
        refused = self.check_project(project, f"projects/{project}/locations/{location}", "list")
        if refused is not None:
            return refused
        try:
            predicate = parse_filter(request.query.get("filter", ""))
        except FilterError as exc:
            return self.error(400, "INVALID_ARGUMENT", f"Invalid filter: {exc}.")

        def where(batch: SimBatch) -> bool:
            state = "JOB_STATE_" + STATES[batch.status][1]
            job = Job(state, batch.created_at, display_name(batch), batch.metadata or {})
            return predicate(job)

        number = SANDBOX_PROJECT_NUMBER if project == SANDBOX_PROJECT else project
        parent = f"projects/{number}/locations/{location}/batchPredictionJobs"
        return self.list_page(
            request, "batchPredictionJobs", lambda batch: self.render(batch, f"{parent}/{batch.id}"), where
        )

    def account(self, request: web.Request) -> str | None:
        """The service account the bearer token was minted for."""
        minted = self.google.tokens.get(bearer_token(request) or "")
        return None if minted is None else minted[1]

    def check_project(self, project: str, resource: str, verb: str) -> web.Response | None:
        """None when the sandbox's service accounts may use `project`, else Vertex's 403."""
        by_number = project == SANDBOX_PROJECT_NUMBER and SANDBOX_PROJECT in self.google.vertex.projects
        if project in self.google.vertex.projects or by_number:
            return None
        permission = "aiplatform.batchPredictionJobs." + verb
        return self.error(
            403,
            "PERMISSION_DENIED",
            f"Permission '{permission}' denied on resource '//aiplatform.googleapis.com/{resource}' "
            "(or it may not exist).",
            [self.error_info("IAM_PERMISSION_DENIED", self.service, permission=permission, resource=resource)],
        )

    def route_table(self) -> list[web.RouteDef]:
        # The token endpoint is Google's OAuth service, not the Vertex API: recorded, but the
        # API's queued faults are left for the API.
        async def token(request: web.Request) -> web.StreamResponse:
            self.sim.record(self.name, request, await request.text())
            return await self.token(request)

        return [web.post(self.prefix + "/token", token), *super().route_table()]

    # OAuth2 token endpoint

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER_GRANT:
            return self.oauth_error("unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type', '')}")
        claims = self.verify_assertion(str(form.get("assertion", "")), request)
        if isinstance(claims, web.Response):
            return claims
        lifetime = self.google.vertex.token_lifetime_s
        access_token = f"ya29.sandbox-{token_urlsafe(24)}"
        tokens = self.google.tokens
        if len(tokens) >= MINTED_TOKENS_LIMIT:
            now = time()
            for old in [t for t, (expiry, _) in tokens.items() if expiry <= now] or [next(iter(tokens))]:
                del tokens[old]
        tokens[access_token] = (time() + lifetime, str(claims["iss"]))
        return json_response({"access_token": access_token, "expires_in": lifetime, "token_type": "Bearer"})

    def verify_assertion(self, assertion: str, request: web.Request) -> dict[str, Any] | web.Response:
        """The JWT's claims when it is a valid grant for an accepted service account."""
        try:
            header_b64, payload_b64, signature_b64 = assertion.split(".")
            header, claims = orjson.loads(_b64url(header_b64)), orjson.loads(_b64url(payload_b64))
            signature = _b64url(signature_b64)
        except (ValueError, binascii.Error, orjson.JSONDecodeError):
            return self.oauth_error("invalid_grant", "Invalid JWT: the assertion is not a signed JWT")
        if not isinstance(header, dict) or not isinstance(claims, dict) or header.get("alg") != "RS256":
            return self.oauth_error("invalid_grant", "Invalid JWT Signature.")
        try:
            _PUBLIC_KEY.verify(signature, f"{header_b64}.{payload_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return self.oauth_error("invalid_grant", "Invalid JWT Signature.")
        now = time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if (
            not isinstance(iat, (int, float))
            or not isinstance(exp, (int, float))
            or iat > now + CLOCK_SKEW_S
            or exp < now - CLOCK_SKEW_S
            or exp - iat > MAX_ASSERTION_LIFETIME_S
        ):
            return self.oauth_error(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
                "Check your iat and exp values in the JWT claim.",
            )
        audience = str(claims.get("aud", ""))
        if audience not in GOOGLE_TOKEN_AUDIENCES and urlsplit(audience).path != request.path:
            return self.oauth_error("invalid_grant", "Invalid JWT: Failed audience check.")
        if not self.sim.key_ok(self.name, claims.get("iss")):
            return self.oauth_error("invalid_grant", "Invalid grant: account not found")
        if not claims.get("scope"):
            return self.oauth_error("invalid_scope", "Empty or missing scope not allowed.")
        return claims

    def oauth_error(self, error: str, description: str) -> web.Response:
        return json_response({"error": error, "error_description": description}, 400)

    # The API

    def answer(self, request: web.Request, *, cancel: bool) -> web.Response:
        denied = self.authenticate(request)
        if denied is not None:
            return denied
        project, location, job_id = (request.match_info[n] for n in ("project", "location", "job_id"))
        resource = f"projects/{project}/locations/{location}/batchPredictionJobs/{job_id}"
        options = self.google.vertex
        refused = self.check_project(project, resource, "cancel" if cancel else "get")
        if refused is not None:
            return refused
        batch = self.store.get(job_id, self.account(request))
        if batch is None:
            return self.error(404, "NOT_FOUND", f'The BatchPredictionJob "{resource}" does not exist.')
        if cancel:
            state = "JOB_STATE_" + STATES[batch.status][1]
            refused = self.cancel_batch(batch, options.finished_cancel, f"BatchPredictionJob {resource}", state)
            return refused or json_response({}, headers=self.response_headers())
        number = SANDBOX_PROJECT_NUMBER if project == SANDBOX_PROJECT else project
        return json_response(self.render(batch, f"projects/{number}/locations/{location}/batchPredictionJobs/{job_id}"))

    def authenticate(self, request: web.Request) -> web.Response | None:
        token = bearer_token(request)
        minted = self.google.tokens.get(token) if token else None
        if minted is not None and minted[0] > time():
            return None
        if token is None:
            details = [self.error_info("CREDENTIALS_MISSING", self.service)]
            return self.error(401, "UNAUTHENTICATED", VERTEX_MISSING_TOKEN, details)
        details = [self.error_info("ACCESS_TOKEN_TYPE_UNSUPPORTED", self.service)]
        return self.error(401, "UNAUTHENTICATED", VERTEX_INVALID_TOKEN, details)

    def render(self, batch: SimBatch, name: str) -> dict[str, Any]:
        options = self.google.vertex
        data = batch.to_dict()
        counts = batch.request_counts
        succeeded, failed = counts["completed"], counts["failed"]
        incomplete = -1 if options.incomplete_unknown else max(0, counts["total"] - succeeded - failed)
        end = data["cancelled_at"] or data["completed_at"] or data["failed_at"] or data["expired_at"]
        update = max(t for t in (batch.created_at, batch.in_progress_at, batch.cancelling_at, end) if t is not None)
        job: dict[str, Any] = {
            "name": name,
            "displayName": display_name(batch),
            "model": "publishers/google/models/gemini-2.5-flash",
            "inputConfig": {
                "instancesFormat": "jsonl",
                "gcsSource": {"uris": [f"gs://sandbox/{batch.id}/input.jsonl"]},
            },
            "outputConfig": {
                "predictionsFormat": "jsonl",
                "gcsDestination": {"outputUriPrefix": f"gs://sandbox/{batch.id}/output"},
            },
            "state": "JOB_STATE_" + STATES[batch.status][1],
            "completionStats": {
                **int64_fields({"successfulCount": succeeded, "failedCount": failed}),
                **({"incompleteCount": str(incomplete)} if incomplete else {}),
            },
            "createTime": rfc3339(batch.created_at, 6),
            "updateTime": rfc3339(update, 6),
            "labels": dict(batch.metadata or {}),
        }
        if batch.in_progress_at is not None:
            job["startTime"] = rfc3339(batch.in_progress_at, 3)
        if end is not None:
            job["endTime"] = rfc3339(end, 9)
        if batch.status == "cancelled":
            job["error"] = {"code": 1, "message": "CANCELED"}
        elif batch.status == "failed":
            job["error"] = {"code": 13, "message": "Internal error occurred."}
        return job


def display_name(batch: SimBatch) -> str:
    return f"sandbox-{batch.id}"


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
