"""The REST error envelope has one source (service/edge/envelope.py): the service's renderers, Envoy's
local replies and the Lua filter (generated at render time) agree with it. The Lua filter runs here
in LuaJIT (lupa), as in Envoy, against a small fake of Envoy's stream handle."""

from __future__ import annotations

import json
import re

import lupa.luajit21 as lupa
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.render import (
    BULK_MAX_REQUEST_BYTES,
    BULK_PATH,
    LOCAL_REPLIES,
    LUA_ENVELOPE_MARKER,
    LUA_FILE,
    MAX_REQUEST_BYTES,
    local_reply_body,
    lua_source,
    render,
)
from service.domain.errors import GatewayError, InvalidRequest, Overloaded, ProviderError, UpstreamUnavailable
from service.domain.model import ItemEvent
from service.edge import envelope
from service.edge.api import ERROR_BODY_HEADER, rest_error_metadata
from service.edge.converters import error_detail, event_to_proto
from service.edge.surfaces import SURFACES, bifrost_error
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.infra.observability import request_id

ERRORS = [
    InvalidRequest("provider query parameter is required", param="provider"),
    ProviderError("Cannot cancel a batch with status 'completed'.", status_code=409, code=None, provider="openai"),
    Overloaded("too many cancels", code="overloaded", provider="openai", headers={"retry-after": "1"}),
    UpstreamUnavailable("openai is failing", status_code=503, code="circuit_open", provider="openai"),
    GatewayError("internal error"),
    GatewayError('quotes " and \\\\ and ünïcode', status_code=404, type="not_found", code="x"),
]
METHODS = {
    "Cancel": bifrost_error,
    "CancelAnthropic": SURFACES["anthropic"].render,
    "CancelGenAI": SURFACES["genai"].render,
    "StopModelInvocationJob": SURFACES["bedrock"].render,
}

# Envoy's stream handle, as much of it as the response hook uses.
FAKE_HANDLE = """
return function(hdrs, chunks)
  local handle, headers = {}, {}
  function headers:get(key) return hdrs[key] end
  function headers:remove(key) hdrs[key] = nil end
  function headers:replace(key, value) hdrs[key] = value end
  function handle:headers() return headers end
  function handle:body()
    return {setBytes = function(_, bytes) handle.body_bytes = bytes end}
  end
  function handle:bodyChunks()
    local i = 0
    return function()
      i = i + 1
      if chunks[i] == nil then return nil end
      local index = i
      return {length = function() return #chunks[index] end,
              getBytes = function(_, from, size) return string.sub(chunks[index], from + 1, from + size) end,
              setBytes = function(_, bytes) chunks[index] = bytes end}
    end
  end
  function handle:streamInfo() return {protocol = function() return "HTTP/1.1" end} end
  function handle:trailers() return nil end
  return handle
end
"""


@pytest.fixture(scope="module")
def lua():
    runtime = lupa.LuaRuntime()
    runtime.execute(lua_source())
    return runtime


def respond(lua, headers: dict[str, str], chunks: list[str] | None = None):
    """Runs the filter's response hook; returns (headers after, body it set, chunks after)."""
    hdrs = lua.table_from(headers)
    lua_chunks = lua.table_from(chunks or [])
    handle = lua.execute(FAKE_HANDLE)(hdrs, lua_chunks)
    lua.globals().envoy_on_response(handle)
    return dict(hdrs), handle.body_bytes, list(lua_chunks.values())


def test_the_lua_filter_is_generated_from_the_envelope():
    source = lua_source()
    assert LUA_ENVELOPE_MARKER not in source and envelope.lua_constants() in source
    # The hand-written part names none of the envelope's strings itself.
    hand_written = source.replace(envelope.lua_constants(), "")
    for literal in ("x-bf-", "is_bifrost_error", '"code"', '"param"'):
        assert literal not in hand_written
    config = render(http_port=8080, grpc_ports=[50051])
    inline = re.search(r"default_source_code: \{inline_string: (\".*\")\}", config).group(1)
    assert json.loads(inline) == source


def test_envelope_keys_follow_the_proto():
    """The Lua filter relies on the transcoder printing the error's keys in proto field order."""
    fields = pb.ErrorField.DESCRIPTOR.fields
    assert tuple(f.name for f in fields) == envelope.ERROR_KEYS
    assert tuple(f.name for f in fields if f.has_presence) == envelope.NULLABLE_ERROR_KEYS
    body = envelope.error_body(GatewayError("x"))
    assert list(body) == [f.name for f in pb.ErrorDetail.DESCRIPTOR.fields]
    assert next(iter(body)) == envelope.FIRST_KEY


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: f"{type(e).__name__}-{e.status_code}")
def test_typed_detail_holds_the_rest_body(error):
    """gRPC callers' ErrorDetail carries exactly the REST body's fields (absent: null)."""
    detail = json_format.MessageToDict(
        error_detail(error), preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    detail["error"] = {key: detail["error"].get(key) for key in envelope.ERROR_KEYS}
    assert detail == envelope.error_body(error)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("error", ERRORS, ids=lambda e: f"{type(e).__name__}-{e.status_code}")
def test_the_lua_filter_answers_with_the_python_rendering(lua, method, error):
    """What the service sends the edge becomes exactly the renderer's status, body and headers."""
    rendered = METHODS[method](error)
    sent = {key.lower(): value for key, value in rest_error_metadata(f"/batchgate.v1.BatchService/{method}", error)}
    headers, body, _ = respond(lua, {":status": "200", "content-type": "application/json", **sent})
    assert body == rendered.body and json.loads(body)
    assert headers[":status"] == str(rendered.status)
    assert headers["content-type"] == "application/json"
    assert ERROR_BODY_HEADER not in headers and envelope.ERROR_STATUS_HEADER not in headers
    for key, value in rendered.headers:
        assert headers[key] == value


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: f"{type(e).__name__}-{e.status_code}")
def test_the_lua_filter_nulls_what_the_transcoder_omits_in_stream_items(lua, error):
    """A CancelMany line as the transcoder prints it (unset optional fields omitted) leaves the edge
    with the item's error exactly the single cancel's error body."""
    line = transcoded(event_to_proto(ItemEvent(3, "batch_1", "openai", True, error=error))) + "\n"
    hdrs = {":status": "200", "content-type": "application/json", envelope.STREAM_HEADER: "ndjson"}
    headers, _, chunks = respond(lua, hdrs, [line, line + line])
    assert headers["content-type"] == "application/x-ndjson" and envelope.STREAM_HEADER not in headers
    for chunk in chunks:
        for item in chunk.splitlines():
            answer = json.loads(item)
            assert answer["error"] == envelope.error_body(error)
            assert list(answer["error"]["error"]) == list(envelope.ERROR_KEYS)


def transcoded(message) -> str:
    """A message as Envoy's transcoder prints it: compact, keys in proto field order, unset optional
    fields omitted (Python's printer puts defaulted fields last, so the order is restored here)."""
    printed = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )

    def ordered(value, descriptor):
        if descriptor is None or not isinstance(value, dict):
            return value
        return {
            field.name: ordered(value[field.name], field.message_type)
            for field in descriptor.fields
            if field.name in value
        }

    return json.dumps(ordered(printed, message.DESCRIPTOR), separators=(",", ":"))


def _shape(value):
    """A body's structure: its keys, nested; values only by type (Envoy format strings aside)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    return "value" if value is not None else None


@pytest.mark.parametrize(
    ("surface", "renderer"),
    [(None, bifrost_error), *((SURFACES[name], SURFACES[name].render) for name in ("anthropic", "genai", "bedrock"))],
    ids=lambda value: getattr(value, "name", None) or str(value),
)
@pytest.mark.parametrize("reply", LOCAL_REPLIES, ids=lambda r: str(r.status))
def test_envoy_local_replies_have_the_service_shape(surface, renderer, reply):
    """Envoy's own replies read like the service's errors on the same route."""
    body, headers = local_reply_body(surface, reply)
    error = GatewayError(reply.message, status_code=reply.status or 400, type=reply.type, code=reply.code)
    rendered = renderer(error)
    assert list(body) == list(json.loads(rendered.body))
    assert _shape(body) == _shape(json.loads(rendered.body))
    assert {key.lower() for key in headers} == {key.lower() for key, _ in rendered.headers}


# Envoy's stream handle as the request hook uses it: headers iterate with `pairs` (the methods live
# in the metatable), and `respond` records the local reply.
FAKE_REQUEST_HANDLE = """
return function(hdrs)
  local methods = {}
  function methods:get(key) return rawget(self, key) end
  function methods:remove(key) rawset(self, key, nil) end
  function methods:add(key, value) rawset(self, key, value) end
  local headers = setmetatable(hdrs, {__index = methods})
  local handle = {}
  function handle:headers() return headers end
  function handle:respond(reply, body)
    handle.status, handle.reply_body, handle.allow = reply[":status"], body, reply["allow"]
  end
  return handle
end
"""


def request(lua, headers: dict[str, str]) -> tuple[str | None, str | None]:
    """Runs the filter's request hook; returns the status and body of its local reply (None: passed on)."""
    handle = lua.execute(FAKE_REQUEST_HANDLE)(lua.table_from(headers))
    lua.globals().envoy_on_request(handle)
    return handle.status, handle.reply_body


@pytest.mark.parametrize(
    ("path", "content_type", "length", "status"),
    [
        (BULK_PATH, "application/json", BULK_MAX_REQUEST_BYTES + 1, "413"),
        (BULK_PATH + "?x=1", "application/json", 10 * BULK_MAX_REQUEST_BYTES, "413"),
        (BULK_PATH, "application/json", BULK_MAX_REQUEST_BYTES, None),  # the limit itself fits
        (BULK_PATH, "application/json", None, None),  # chunked: the buffer filter's limit applies
        ("/v1/batches/b1/cancel", "application/json", MAX_REQUEST_BYTES + 1, "413"),  # its own limit
        ("/v1/batches/b1/cancel", "application/json", MAX_REQUEST_BYTES, None),
        ("/batchgate.v1.BatchService/CancelMany", "application/grpc", BULK_MAX_REQUEST_BYTES + 1, None),
    ],
)
def test_a_body_declared_over_its_routes_limit_is_a_413_before_it_is_read(lua, path, content_type, length, status):
    headers = {":method": "POST", ":path": path, "content-type": content_type}
    if length is not None:
        headers["content-length"] = str(length)
    assert request(lua, headers) == (status, "request body is too large" if status else None)


@pytest.mark.parametrize(
    ("method", "path", "allow", "request_type"),
    [
        ("GET", "/v1/batches/b1/cancel", "POST", None),
        ("DELETE", "/openai/v1/batches/b1/cancel?provider=azure", "POST", None),
        ("GET", "/v1/batches/cancel", "POST", None),
        ("PUT", "/bedrock/model-invocation-job/arn%3Ax/stop", "POST", None),
        ("GET", "/genai/v1beta/batches/b1:cancel", "POST", None),
        ("POST", "/health", "GET", None),
        ("POST", "/v1/batches/b1/cancel", None, "batch_cancel"),
        ("POST", "/anthropic/v1/messages/batches/b1/cancel", None, "batch_cancel"),
        ("GET", "/health", None, None),
        ("GET", "/v1/no/such/route", None, None),  # the transcoder's 404
    ],
)
def test_a_routes_path_with_another_method_is_a_405_naming_its_method(lua, method, path, allow, request_type):
    """Issue 23: 405 with `Allow`, not a 404; and only a cancel route's errors name the request type
    (Envoy's local replies read it from the header the filter sets)."""
    hdrs = lua.table_from({":method": method, ":path": path, "x-bf-request-type": "forged"})
    handle = lua.execute(FAKE_REQUEST_HANDLE)(hdrs)
    lua.globals().envoy_on_request(handle)
    assert (handle.status, handle.allow) == (("405", allow) if allow else (None, None))
    assert hdrs["x-bf-request-type"] == request_type


def test_native_grpc_answers_pass_untouched(lua):
    """A gRPC answer (native caller) passes the filter untouched."""
    hdrs = {":status": "200", "content-type": "application/grpc", ERROR_BODY_HEADER: "{}"}
    headers, body, _ = respond(lua, hdrs)
    assert body is None and headers[ERROR_BODY_HEADER] == "{}"


@pytest.mark.parametrize("content_type", ["application/json", "application/grpc"])
@pytest.mark.parametrize(
    ("name", "value"),
    [("x-bf-vk", "sk-bf-secret\xff"), ("authorization", "Bearer \xe9"), ("x-note", "a\tb"), ("x-note", "a\x7fb")],
)
def test_a_header_value_grpc_metadata_cannot_carry_is_a_400_naming_only_the_header(lua, content_type, name, value):
    headers = {":method": "POST", ":path": "/v1/batches/b1/cancel", "content-type": content_type, name: value}
    status, body = request(lua, headers)
    assert (status, body) == ("400", f"header '{name}' has a value that is not printable ASCII")
    assert value not in body


def test_printable_ascii_header_values_pass(lua):
    headers = {
        ":method": "POST",
        ":path": "/v1/batches/b1/cancel",
        "x-bf-vk": "sk-bf-" + "".join(map(chr, range(32, 127))),
    }
    assert request(lua, headers) == (None, None)


# --- the request-id rule: one in Python, generated into the Lua ----------------------------------------


def lua_keeps_request_id(lua, value: str) -> bool:
    """Whether the filter's request hook passes `x-request-id: value` on (a request it refuses, one
    whose header bytes gRPC metadata cannot carry, passes nothing on)."""
    hdrs = lua.table_from({"x-request-id": value, "content-type": "application/grpc"})
    handle = lua.execute(FAKE_REQUEST_HANDLE)(hdrs)
    lua.globals().envoy_on_request(handle)
    return handle.status is None and hdrs["x-request-id"] is not None


def python_keeps_request_id(value: str) -> bool:
    return request_id({"x-request-id": value}) == (value, False)


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("req-1", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("A.b_c:d-9", True),
        ("a b", False),
        ("a/b", False),
        ("a\nb", False),
        ("abc\n", False),
        ("bätch", False),
        ("a%2Fb", False),
    ],
)
def test_the_edge_and_the_service_keep_the_same_request_ids(lua, value: str, kept: bool) -> None:
    assert python_keeps_request_id(value) is kept
    assert lua_keeps_request_id(lua, value) is kept


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=140))
def test_the_edge_and_the_service_agree_on_any_ascii_request_id(lua, value: str) -> None:
    assert lua_keeps_request_id(lua, value) is python_keeps_request_id(value)


def test_the_lua_names_no_request_id_constant_itself() -> None:
    hand_written = LUA_FILE.read_text()
    for literal in ('"x-request-id"', "128", "%._:"):
        assert literal not in hand_written


def test_the_lua_filter_gets_the_envelope_constants_written_out():
    """The constants gateway/errors.lua runs with, as they must read (not as the generator says)."""
    source = lua_source()
    for line in (
        'local ERROR_BODY_HEADER = "x-bf-error-body"',
        'local ERROR_STATUS_HEADER = "x-bf-status"',
        'local STREAM_HEADER = "x-bf-stream"',
        'local ITEM_ERROR = "\\"error\\":{\\"is_bifrost_error\\":"',
        'local ERROR_KEYS = {"type", "code", "message", "param"}',
        'local NULLABLE_ERROR_KEYS = {"code", "param"}',
    ):
        assert f"\n{line}\n" in source, line


def test_envoys_own_replies_on_the_bifrost_routes_say_batchgate_decided():
    """Envoy's local replies are the gateway's errors, never a provider's: is_bifrost_error true."""
    for reply in LOCAL_REPLIES:
        body, headers = local_reply_body(None, reply)
        assert (body["is_bifrost_error"], body["extra_fields"]["provider"], headers) == (True, "", {})
