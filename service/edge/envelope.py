"""The REST error envelope, in one place: the Bifrost error body and the drop-in surfaces' error
bodies, and how the service hands a rendered error to the edge.

Everything that writes an error body builds it here: `error_body` (a `GatewayError`'s body), the
surface renderers (service.edge.surfaces), Envoy's own local replies (gateway/render.py fills these
functions with Envoy format strings) and the Lua filter, whose constants (header names, the keys of
the inner `error` object and which of them are nullable) gateway/render.py generates from this
module (`lua_constants`). Adding a field is one change here; tests/unit/test_render.py proves the
generated pieces agree with the Python rendering.

Imports only the domain's error type.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from service.domain.errors import REQUEST_TYPE as DOMAIN_REQUEST_TYPE
from service.domain.errors import GatewayError

# Headers (gRPC initial metadata) the service sends the edge: the rendered REST error body and the
# HTTP status to answer with; and the marker of a newline-delimited JSON stream (CancelMany).
ERROR_BODY_HEADER = "x-bf-error-body"
ERROR_STATUS_HEADER = "x-bf-status"
STREAM_HEADER = "x-bf-stream"
# The request type of a REST call the edge matched to a cancel route (set by gateway/errors.lua, read
# by Envoy's own error replies); absent on other routes.
REQUEST_TYPE_HEADER = "x-bf-request-type"
# AWS rest-json errors name the exception in this header (HTTP header names are case-insensitive).
BEDROCK_ERROR_TYPE_HEADER = "x-amzn-errortype"

# A cancel's `extra_fields.request_type` (errors that are not about a cancel say "").
REQUEST_TYPE = DOMAIN_REQUEST_TYPE


class ErrorText(NamedTuple):
    """The Bifrost body's inner `error` object, in proto field order (batchgate.v1.ErrorField), which
    is the order the transcoder prints them in."""

    type: str
    code: str | None
    message: str
    param: str | None


# Its keys; the nullable ones are optional fields the transcoder omits when unset, and that the edge
# puts back as null in CancelMany's NDJSON lines.
ERROR_KEYS: tuple[str, ...] = ErrorText._fields
NULLABLE_ERROR_KEYS = ("code", "param")
# The first key of the Bifrost body (batchgate.v1.ErrorDetail), which tells an item's error apart.
FIRST_KEY = "is_bifrost_error"


def bifrost(
    text: ErrorText, status_code: Any, provider: str, is_bifrost_error: bool = True, request_type: str = REQUEST_TYPE
) -> dict[str, Any]:
    """The Bifrost error body. `status_code` and `request_type` are values, or Envoy format strings
    in local replies. An error that is not about a cancel says `"request_type": null` (Envoy's local
    replies print an absent value so too)."""
    return {
        FIRST_KEY: is_bifrost_error,
        "status_code": status_code,
        "error": dict(zip(ERROR_KEYS, text, strict=True)),
        "extra_fields": {"provider": provider, "request_type": request_type or None},
    }


def error_body(error: GatewayError) -> dict[str, Any]:
    """A `GatewayError`'s Bifrost error body."""
    text = ErrorText(error.type, error.code, error.message, error.param)
    return bifrost(text, error.status_code, error.provider, error.is_bifrost_error, error.request_type)


def error_json(error: GatewayError) -> str:
    """A `GatewayError`'s Bifrost error body as the edge receives it (`to_json`)."""
    return to_json(error_body(error))


def anthropic(kind: str, message: str) -> dict[str, Any]:
    """Anthropic's error body: `{"type": "error", "error": {"type", "message"}}`."""
    return {"type": "error", "error": {"type": kind, "message": message}}


def google(code: Any, message: str, status: str) -> dict[str, Any]:
    """Google's error body: `{"error": {"code", "message", "status"}}` (`code` the HTTP status)."""
    return {"error": {"code": code, "message": message, "status": status}}


def bedrock(message: str, exception: str) -> tuple[dict[str, Any], dict[str, str]]:
    """AWS rest-json: `{"message"}` in the body, the exception name in a header."""
    return {"message": message}, {BEDROCK_ERROR_TYPE_HEADER: exception}


def to_json(body: dict[str, Any]) -> str:
    """Compact and ASCII-only: the body travels to the edge as a gRPC metadata value."""
    return json.dumps(body, ensure_ascii=True, separators=(",", ":"))


def lua_constants() -> str:
    """The Lua filter's view of the envelope (gateway/errors.lua), generated at render time."""

    def lua_string(value: str) -> str:
        return json.dumps(value)  # a JSON string of ASCII text is a valid Lua string literal

    def lua_list(values: tuple[str, ...]) -> str:
        return "{" + ", ".join(lua_string(v) for v in values) + "}"

    item_error = '"error":{"' + FIRST_KEY + '":'
    return "\n".join(
        [
            "-- Generated from service/edge/envelope.py by gateway/render.py: edit that module, not these lines.",
            f"local ERROR_BODY_HEADER = {lua_string(ERROR_BODY_HEADER)}",
            f"local ERROR_STATUS_HEADER = {lua_string(ERROR_STATUS_HEADER)}",
            f"local STREAM_HEADER = {lua_string(STREAM_HEADER)}",
            f"local REQUEST_TYPE_HEADER = {lua_string(REQUEST_TYPE_HEADER)}",
            f"local ITEM_ERROR = {lua_string(item_error)}",
            f"local ERROR_KEYS = {lua_list(ERROR_KEYS)}",
            f"local NULLABLE_ERROR_KEYS = {lua_list(NULLABLE_ERROR_KEYS)}",
        ]
    )
