"""The drop-in SDK routes' shapes (service/edge/surfaces.py) against tables written out from each
provider's documentation, never computed by the code under test: Anthropic's message_batch and
error types, Google's error body and canonical status names, AWS's rest-json errors."""

from __future__ import annotations

import json

import pytest

from service.domain.errors import GatewayError
from service.domain.model import BatchState, CancelResult, RequestCounts
from service.edge.surfaces import SURFACES, to_anthropic

anthropic_error = SURFACES["anthropic"].render
google_error = SURFACES["genai"].render
bedrock_error = SURFACES["bedrock"].render

CREATED, EXPIRES, CANCELLING, CANCELLED = 1_700_000_000, 1_700_086_400, 1_700_000_100, 1_700_000_200
# The same instants as Anthropic writes them (RFC 3339, UTC, "Z").
AT = {
    CREATED: "2023-11-14T22:13:20Z",
    EXPIRES: "2023-11-15T22:13:20Z",
    CANCELLING: "2023-11-14T22:15:00Z",
    CANCELLED: "2023-11-14T22:16:40Z",
}


def message_batch(status: str, counts: RequestCounts | None, **times: int) -> dict:
    """The unified batch `b1` as the Anthropic route answers it, every field read back (a field the
    answer leaves unset reads None)."""
    batch = BatchState(id="b1", status=status, counts=counts, created_at=CREATED, expires_at=EXPIRES, **times)
    answer = to_anthropic(CancelResult(batch, "openai", 5))
    assert answer.HasField("request_counts")  # always there, as in Anthropic's own answers
    c = answer.request_counts
    optional = ("created_at", "expires_at", "ended_at", "cancel_initiated_at", "archived_at", "results_url")
    return {
        "id": answer.id,
        "type": answer.type,
        "processing_status": answer.processing_status,
        "request_counts": (c.processing, c.succeeded, c.errored, c.canceled, c.expired),
        **{name: getattr(answer, name) if answer.HasField(name) else None for name in optional},
    }


def expected(processing_status: str, counts: tuple, ended_at: int | None = None, initiated: int | None = None) -> dict:
    return {
        "id": "b1",
        "type": "message_batch",
        "processing_status": processing_status,
        "request_counts": counts,  # processing, succeeded, errored, canceled, expired
        "created_at": AT[CREATED],
        "expires_at": AT[EXPIRES],
        "ended_at": AT[ended_at] if ended_at else None,
        "cancel_initiated_at": AT[initiated] if initiated else None,
        "archived_at": None,
        "results_url": None,
    }


# (unified status, counts, timestamps) -> Anthropic's message_batch (README, Providers: anthropic).
MESSAGE_BATCHES = {
    "in progress, processing from the total": (
        ("in_progress", RequestCounts(total=10, completed=3, failed=1), {}),
        expected("in_progress", (6, 3, 1, 0, 0)),
    ),
    "validating reads as in progress": (
        ("validating", RequestCounts(total=4), {}),
        expected("in_progress", (4, 0, 0, 0, 0)),
    ),
    "finalizing reads as in progress": (
        ("finalizing", RequestCounts(total=5, completed=2, failed=1, canceled=1, expired=1), {}),
        expected("in_progress", (0, 2, 1, 1, 1)),
    ),
    "more finished than the total: none processing": (
        ("in_progress", RequestCounts(total=3, completed=5), {}),
        expected("in_progress", (0, 5, 0, 0, 0)),
    ),
    "cancelling, pending and succeeded as reported": (
        ("cancelling", RequestCounts(total=10, completed=3, succeeded=2, pending=5), {"cancelling_at": CANCELLING}),
        expected("canceling", (5, 2, 0, 0, 0), initiated=CANCELLING),
    ),
    "pending without a total": (
        ("cancelling", RequestCounts(pending=7), {"cancelling_at": CANCELLING}),
        expected("canceling", (7, 0, 0, 0, 0), initiated=CANCELLING),
    ),
    "cancelled with only its end known": (
        ("cancelled", RequestCounts(total=10, completed=3, failed=1, canceled=6, expired=0),
         {"cancelled_at": CANCELLED}),
        expected("ended", (0, 3, 1, 6, 0), ended_at=CANCELLED, initiated=CANCELLED),
    ),
    "cancelled with both times known": (
        ("cancelled", RequestCounts(total=2, canceled=2), {"cancelling_at": CANCELLING, "cancelled_at": CANCELLED}),
        expected("ended", (0, 0, 0, 2, 0), ended_at=CANCELLED, initiated=CANCELLING),
    ),
    "completed without counts": (("completed", None, {}), expected("ended", (0, 0, 0, 0, 0))),
    "expired, nothing pending once ended": (
        ("expired", RequestCounts(total=9, completed=4, expired=2), {}),
        expected("ended", (0, 4, 0, 0, 2)),
    ),
}  # fmt: skip


@pytest.mark.parametrize(("given", "answer"), list(MESSAGE_BATCHES.values()), ids=list(MESSAGE_BATCHES))
def test_the_unified_batch_reads_as_anthropics_message_batch(given, answer):
    status, counts, times = given
    assert message_batch(status, counts, **times) == answer


# Anthropic's error types by HTTP status (Anthropic's API reference, Errors), when batchgate decided.
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "api_error",
    529: "overloaded_error",
}


@pytest.mark.parametrize(("status", "kind"), list(ANTHROPIC_TYPES.items()))
def test_gateway_errors_on_the_anthropic_route_have_anthropics_type_for_their_status(status, kind):
    rendered = anthropic_error(GatewayError("why", status_code=status, type="some_bifrost_type", code="x"))
    assert (rendered.status, json.loads(rendered.body), rendered.headers) == (
        status, {"type": "error", "error": {"type": kind, "message": "why"}}, (),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("provider", "is_bifrost_error", "type", "kind"),
    [
        ("anthropic", False, "billing_error", "billing_error"),  # Anthropic's own, passed through
        ("anthropic", False, None, "invalid_request_error"),  # no type given: the status says
        ("anthropic", True, "billing_error", "invalid_request_error"),  # batchgate's own error
        ("openai", False, "billing_error", "invalid_request_error"),  # another provider's type
    ],
)
def test_only_anthropics_own_error_type_passes_through(provider, is_bifrost_error, type, kind):
    error = GatewayError("why", status_code=400, provider=provider, is_bifrost_error=is_bifrost_error)
    error.type = type
    assert json.loads(anthropic_error(error).body)["error"]["type"] == kind


# Google's error body: HTTP status and canonical status name (google.rpc.Code, as Google's APIs map
# them); a batch that already finished is FAILED_PRECONDITION, which Google answers with HTTP 400.
GOOGLE_ERRORS = {
    400: (400, "INVALID_ARGUMENT"),
    401: (401, "UNAUTHENTICATED"),
    403: (403, "PERMISSION_DENIED"),
    404: (404, "NOT_FOUND"),
    409: (400, "FAILED_PRECONDITION"),
    410: (410, "INVALID_ARGUMENT"),
    429: (429, "RESOURCE_EXHAUSTED"),
    500: (500, "INTERNAL"),
    503: (503, "UNAVAILABLE"),
    504: (504, "DEADLINE_EXCEEDED"),
}


@pytest.mark.parametrize(("status", "answer"), list(GOOGLE_ERRORS.items()))
def test_errors_on_the_genai_route_are_googles(status, answer):
    rendered = google_error(GatewayError("why", status_code=status))
    http, name = answer
    assert (rendered.status, json.loads(rendered.body), rendered.headers) == (
        http, {"error": {"code": http, "message": "why", "status": name}}, (),
    )  # fmt: skip


# AWS rest-json errors on the boto3 route: the exception name (x-amzn-ErrorType) for each status
# (the Bedrock API reference's StopModelInvocationJob errors); Bedrock answers a ConflictException
# (a finished job) with HTTP 400.
BEDROCK_ERRORS = {
    400: (400, "ValidationException"),
    401: (401, "AccessDeniedException"),
    403: (403, "AccessDeniedException"),
    404: (404, "ResourceNotFoundException"),
    409: (400, "ConflictException"),
    418: (418, "InternalServerException"),
    429: (429, "ThrottlingException"),
    500: (500, "InternalServerException"),
    502: (502, "ServiceUnavailableException"),
    503: (503, "ServiceUnavailableException"),
    504: (504, "ServiceUnavailableException"),
}


@pytest.mark.parametrize(("status", "answer"), list(BEDROCK_ERRORS.items()))
def test_gateway_errors_on_the_bedrock_route_are_aws_exceptions(status, answer):
    rendered = bedrock_error(GatewayError("why", status_code=status, type="some_bifrost_type"))
    http, name = answer
    assert (rendered.status, json.loads(rendered.body), rendered.headers) == (
        http, {"message": "why"}, (("x-amzn-errortype", name),),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("provider", "is_bifrost_error", "type", "status", "answer"),
    [
        ("bedrock", False, "ModelNotReadyException", 429, (429, "ModelNotReadyException")),  # AWS's own
        ("bedrock", False, "ConflictException", 409, (400, "ConflictException")),
        ("bedrock", False, "ConflictException", 400, (400, "ConflictException")),
        ("bedrock", False, "throttled", 429, (429, "ThrottlingException")),  # not an exception name
        ("bedrock", False, None, 404, (404, "ResourceNotFoundException")),
        ("bedrock", True, "ModelNotReadyException", 429, (429, "ThrottlingException")),  # batchgate's own
        ("openai", False, "ModelNotReadyException", 429, (429, "ThrottlingException")),  # another provider's
    ],
)
def test_only_bedrocks_own_exception_name_passes_through(provider, is_bifrost_error, type, status, answer):
    error = GatewayError("why", status_code=status, provider=provider, is_bifrost_error=is_bifrost_error)
    error.type = type
    rendered = bedrock_error(error)
    assert (rendered.status, dict(rendered.headers)["x-amzn-errortype"]) == answer
