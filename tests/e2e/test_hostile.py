"""Hostile input through the Envoy edge, property-based (hypothesis): batch ids, providers, headers,
bodies, query strings, methods and path encodings on every REST route.

Every answer must be a documented status with a JSON body in the route's documented shape (Bifrost
error JSON on the native and OpenAI routes and on unrouted paths; the Anthropic / Google / Bedrock
envelopes under /anthropic/, /genai/ and /bedrock/, for the service's answers and Envoy's own
refusals alike), never text/plain and never a traceback. Every upstream call the sandbox recorded
must have exactly the provider's documented path shape, with the id as ONE strictly escaped segment
(no `..`, no raw `/ ? # \\`).

The runs are derandomized (fixed examples, no example database) and bounded so the file takes a few
seconds. Inputs that once broke the edge (invalid UTF-8, gRPC-reserved or gRPC-illegal header names,
oversized metadata, a raw `#`) have explicit regression tests at the end of the file.
"""

from __future__ import annotations

import http.client
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, unquote_to_bytes, urlencode

import grpc
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from service.gen.batchgate.v1 import batchgate_pb2 as pb
from tests.e2e.conftest import Gateway, SimAdmin, new_id, service_log
from tests.e2e.h2wire import GRPC_HEADERS, grpc_frame, h2_call

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")

SETTINGS = dict(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# --- what an answer may look like ----------------------------------------------------------------------

# No faults are injected here, so a 5xx other than "gateway/provider unreachable" is a bug.
# 422 is a provider's own refusal passed on (Mistral validates job ids as UUIDs).
DOCUMENTED_STATUSES = {200, 400, 401, 403, 404, 405, 409, 413, 422, 429, 431, 502, 503, 504}


@dataclass(frozen=True)
class Route:
    name: str
    template: str  # `{id}` marks the batch id segment
    envelope: str  # bifrost | anthropic | google | bedrock


ROUTES = [
    Route("native", "/v1/batches/{id}/cancel", "bifrost"),
    Route("openai_v1", "/openai/v1/batches/{id}/cancel", "bifrost"),
    Route("openai", "/openai/batches/{id}/cancel", "bifrost"),
    Route("anthropic", "/anthropic/v1/messages/batches/{id}/cancel", "anthropic"),
    Route("genai_v1beta", "/genai/v1beta/batches/{id}:cancel", "google"),
    Route("genai_v1", "/genai/v1/batches/{id}:cancel", "google"),
    Route("bedrock", "/bedrock/model-invocation-job/{id}/stop", "bedrock"),
]

# One strictly escaped path segment: what quote(x, safe="") produces.
SEG = r"(?:[A-Za-z0-9_.~-]|%[0-9A-F]{2})+"
UPSTREAM_PATHS = {
    "openai": rf"/openai/v1/batches/{SEG}(?:/cancel)?",
    "azure": rf"/azure/openai(?:/v1)?/batches/{SEG}(?:/cancel)?",
    "anthropic": rf"/anthropic/v1/messages/batches/{SEG}(?:/cancel)?",
    "gemini": rf"/gemini/v1(?:beta)?/batches/{SEG}(?::cancel)?",
    "vertex": (
        rf"/vertex/token|/vertex/v1(?:beta1)?/projects/{SEG}/locations/{SEG}/batchPredictionJobs/{SEG}(?::cancel)?"
    ),
    "bedrock": rf"/bedrock/model-invocation-job/{SEG}(?:/stop)?",
    "mistral": rf"/mistral/v1/batch/jobs/{SEG}(?:/cancel)?",
    "groq": rf"/groq/openai/v1/batches/{SEG}(?:/cancel)?",
    "together": rf"/together/v1/batches/{SEG}(?:/cancel)?",
    "fireworks": rf"/fireworks/v1/accounts/{SEG}/(?:batchJobs|batchInferenceJobs)/{SEG}(?::cancel)?",
    "xai": rf"/xai/v1/batches/{SEG}(?::cancel)?",
    "cohere": rf"/cohere/v2/batches/{SEG}(?::cancel)?",
}
SIM_PROVIDERS = sorted(UPSTREAM_PATHS)


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def send(gw: Gateway, method: str, target: str, body: bytes | None = None, headers: list | None = None) -> Answer:
    """One request with the request line and headers sent exactly as given (no normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.stack.http_port, timeout=10)
    try:
        conn.putrequest(method, target, skip_host=False, skip_accept_encoding=True)
        for name, value in headers or ():
            conn.putheader(name, value.encode("latin-1") if isinstance(value, str) else value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def assert_bifrost_error(body: Any, status: int) -> None:
    assert isinstance(body, dict) and set(body) == {"is_bifrost_error", "status_code", "error", "extra_fields"}, body
    assert body["status_code"] == status
    assert isinstance(body["is_bifrost_error"], bool)
    error = body["error"]
    assert set(error) == {"type", "code", "message", "param"}, error
    assert isinstance(error["type"], str) and error["type"]
    assert isinstance(error["message"], str) and error["message"], "an error without a message"
    assert error["code"] is None or isinstance(error["code"], str)
    assert error["param"] is None or isinstance(error["param"], str)
    assert set(body["extra_fields"]) == {"provider", "request_type"}
    # batch_cancel on a cancel route, null where the request is no cancel (an unknown path, /health).
    assert body["extra_fields"]["request_type"] in ("batch_cancel", None)


SURFACE_ENVELOPES = {"/anthropic/": "anthropic", "/genai/": "google", "/bedrock/": "bedrock"}


def envelope_for(target: str) -> str:
    """The error envelope of a request target: a drop-in SDK surface's own under its prefix (for the
    service's answers and Envoy's own refusals alike), Bifrost JSON everywhere else."""
    return next((env for prefix, env in SURFACE_ENVELOPES.items() if target.startswith(prefix)), "bifrost")


# Envoy refuses some requests while still parsing them (an unknown method, a header name with `_`,
# headers over 60 KiB): it has no path to pick a surface's envelope from then, so these are Bifrost
# JSON on every surface.
CODEC_REFUSALS = {(400, "Bad Request"), (431, "Request Header Fields Too Large")}


def is_codec_refusal(status: int, body: Any) -> bool:
    return (
        isinstance(body, dict)
        and body.get("is_bifrost_error") is True
        and isinstance(body.get("error"), dict)
        and any(
            status == code and str(body["error"].get("message", "")).startswith(text) for code, text in CODEC_REFUSALS
        )
    )


def assert_documented(target: str, answer: Answer, method: str = "POST") -> Any:
    """The answer is a documented status with a JSON body in the envelope of the target's surface."""
    assert answer.status in DOCUMENTED_STATUSES, (answer.status, answer.body[:300])
    assert b"Traceback" not in answer.body and b'File "' not in answer.body
    ctype = answer.headers.get("content-type", "")
    assert ctype == "application/json", (answer.status, ctype, answer.body[:200])
    for internal in ("x-bf-error-body", "x-bf-status", "grpc-status", "grpc-message", "grpc-status-details-bin"):
        assert internal not in answer.headers, internal
    if method == "HEAD":
        return None
    text = answer.body.decode("utf-8")  # JSON is UTF-8
    assert "google.protobuf" not in text and "<class" not in text, text[:300]
    body = json.loads(text)
    envelope = "bifrost" if is_codec_refusal(answer.status, body) else envelope_for(target)
    if answer.status == 200:
        assert_success_shape(envelope, body, openai=target.startswith("/openai/"))
    elif envelope == "bifrost":
        assert_bifrost_error(body, answer.status)
    elif envelope == "anthropic":
        assert set(body) == {"type", "error"} and body["type"] == "error", body
        assert set(body["error"]) == {"type", "message"}
        assert isinstance(body["error"]["type"], str) and body["error"]["type"]
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    elif envelope == "google":
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "status"}, body
        assert body["error"]["code"] == answer.status
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
        assert re.fullmatch(r"[A-Z_]+", body["error"]["status"])
    else:  # bedrock
        assert set(body) == {"message"} and isinstance(body["message"], str) and body["message"], body
        assert re.fullmatch(r"[A-Za-z]+Exception", answer.headers.get("x-amzn-errortype", "")), answer.headers
    return body


# OpenAI's Batch fields a provider may report, which the OpenAI-compatible routes pass on.
OPENAI_BATCH_FIELDS = set(pb.BatchCancelResponse.DESCRIPTOR.fields_by_name) - {
    "id", "object", "status", "request_counts", "cancelling_at", "cancelled_at", "extra_fields"
}  # fmt: skip


def assert_success_shape(envelope: str, body: Any, *, openai: bool = False) -> None:
    assert isinstance(body, dict)
    if envelope == "bifrost":
        unified = {"id", "object", "status", "request_counts", "cancelling_at", "cancelled_at", "extra_fields"}
        assert (
            {"id", "object", "status", "extra_fields"}
            <= set(body)
            <= unified | (OPENAI_BATCH_FIELDS if openai else set())
        ), body
        assert body["object"] == "batch" and isinstance(body["status"], str) and body["status"]
        assert body["extra_fields"]["request_type"] == "batch_cancel"
    elif envelope == "anthropic":
        assert body["type"] == "message_batch" and body["processing_status"] in ("in_progress", "canceling", "ended")
    else:  # Google and Bedrock answer an empty object
        assert body == {}


def assert_safe_upstream_calls(sim: SimAdmin) -> list[dict]:
    calls = sim.calls()
    for call in calls:
        path = call["path"]
        shape = UPSTREAM_PATHS.get(call["provider"])
        assert shape is not None, call["provider"]
        assert re.fullmatch(shape, path), f"unexpected upstream path for {call['provider']}: {path!r}"
        for segment in path.split("/"):
            assert unquote(segment) not in (".", ".."), path
            assert "\\" not in segment and "?" not in segment and "#" not in segment, path
    return calls


def run_case(gw: Gateway, sim: SimAdmin, method: str, target: str, body=None, headers=None):
    sim.http.delete(f"{sim.url}/_sim/calls", timeout=5)
    answer = send(gw, method, target, body, headers)
    parsed = assert_documented(target, answer, method)
    calls = assert_safe_upstream_calls(sim)
    if currently_in_test_context():
        event(f"HTTP {answer.status}")
        event("reached a provider" if calls else "refused before any upstream call")
    return answer, parsed


# --- generators ----------------------------------------------------------------------------------------

NASTY_IDS = [
    "",
    ".",
    "..",
    "...",
    "a/b",
    "../b",
    "a/../b",
    "a?b",
    "a#b",
    "a\\b",
    "a\x00b",
    "\x00",
    " ",
    "a b",
    "\t",
    "%2e%2e",
    "%2E%2E",
    "a%2Fb",
    "a%252Fb",
    "%00",
    "%",
    "%%",
    "%zz",
    "a:cancel",
    ":cancel",
    "a;b",
    "a,b",
    "batches/x",
    "batches/..",
    "batches-x",
    "missing_x",
    "é",
    "\u202e",
    "\ufeff",
    "💥",
    "\u0085",
    "\u2028",
    "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abc",
    "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/..",
    "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Amodel-invocation-job%2Fabc",
    "projects/p/locations/us-central1/batchPredictionJobs/1",
    "projects/../locations/us-central1/batchPredictionJobs/1",
    "projects/p/locations/../batchPredictionJobs/1",
    "accounts/a/batchJobs/j",
    "accounts/../batchJobs/j",
    "accounts/a/batchJobs/..",
    "cHJvamVjdHMvcC9sb2NhdGlvbnMvdXMtY2VudHJhbDEvYmF0Y2hQcmVkaWN0aW9uSm9icy8x",  # base64 of a Vertex name
    "cHJvamVjdHMvLi4vbG9jYXRpb25zL3gvYmF0Y2hQcmVkaWN0aW9uSm9icy8x",  # base64 of projects/../...
    "b" * 512,
    "b" * 513,
    "b" * 3000,
]
ids = st.one_of(
    st.sampled_from(NASTY_IDS),
    st.text(max_size=40),
    st.text(alphabet="./?#\\%:@;=&+ ab09~_-\x00\x7f", max_size=24),
    # Long ids, with the whole request target kept under the gRPC metadata limit (pinned below).
    st.builds(lambda n, c: c * n, st.integers(100, 600), st.sampled_from(["b", ".", "%2F", "é"])),
)


def encode_id(batch_id: str, how: str) -> str:
    """The id as it appears in the request path. `#` is always escaped (a raw one is pinned by
    test_raw_fragment_in_path_reply_has_a_message below)."""
    if how == "full":
        return quote(batch_id, safe="")
    if how == "lower":
        return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(batch_id, safe=""))
    if how == "double":
        return quote(quote(batch_id, safe=""), safe="")
    # "keep": separators, dots, backslashes and percent signs left raw where HTTP allows them.
    return quote(batch_id, safe="/?\\%:@;=&+!$'()*,")


def decodes_as_utf8(target: str) -> bool:
    """Whether the percent-decoded target is UTF-8 (invalid UTF-8 has its own test below)."""
    try:
        unquote_to_bytes(target).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


PROVIDER_NAMES = [
    *SIM_PROVIDERS,
    "",
    "OPENAI",
    " openai ",
    "openai\x00",
    "ollama",
    "openrouter",
    "nope",
    "open ai",
    "../openai",
    "openai/../azure",
    "a" * 40,
    "é",
]
providers = st.one_of(st.sampled_from(PROVIDER_NAMES), st.text(max_size=12))

# Header names: RFC 9110 tokens, and the ones batchgate or Envoy give a meaning to.
MEANINGFUL_HEADERS = [
    "x-model-provider",
    "x-bf-vk",
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "x-bf-send-back-raw-response",
    "x-envoy-original-path",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-max-retries",
    "x-envoy-retry-on",
    "x-envoy-internal",
    "x-forwarded-for",
    "x-request-id",
    "x-bf-error-body",
    "x-bf-status",
    "grpc-message",
    "grpc-accept-encoding",
    "accept",
    "accept-encoding",
    "cookie",
    "origin",
    "x-http-method-override",
    "content-encoding",
    "x-amz-target",
    "anthropic-version",
    "x-goog-user-project",
]
# Framing and hop-by-hop headers would change what request is sent at all.
EXCLUDED_HEADERS = {
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "expect",
    "keep-alive",
    "proxy-connection",
    "trailer",
    "content-type",
}


def grpc_reserved(name: str) -> bool:
    """Header names gRPC parses itself (`grpc-*` but the two that take any text, and binary `*-bin`
    values that must be base64): covered by their own test below."""
    name = name.lower()
    return (name.startswith("grpc-") and name not in ("grpc-message", "grpc-accept-encoding")) or name.endswith("-bin")


# Names are tokens made of the characters gRPC metadata keys allow as well; the other HTTP token
# characters (`+ ! # $ % & ' * ^ ` | ~`) have their own test below.
GRPC_SAFE_TCHARS = "-._0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
header_names = st.one_of(
    st.sampled_from(MEANINGFUL_HEADERS), st.text(alphabet=GRPC_SAFE_TCHARS, min_size=1, max_size=30)
).filter(lambda name: name.lower() not in EXCLUDED_HEADERS and not grpc_reserved(name))
# Field values: visible ASCII, space, tab and obs-text; no leading/trailing whitespace issues matter.
header_values = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60),
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "1",
            "99999999999",
            "true",
            "TRUE",
            "Bearer ",
            "Bearer sk-bf-x",
            "Basic !!",
            "Basic Og==",
            "sk-bf-" + "x" * 40,
            "/v1/batches/other/cancel",
            "\t",
            "gzip",
            "application/grpc",
        ]
    ),
    # Long values: up to 4 KiB (gRPC metadata limit pinned below), and beyond Envoy's 60 KiB (431).
    st.builds(lambda n: "v" * n, st.integers(1000, 4000)),
    st.builds(lambda n: "v" * n, st.integers(62 * 1024, 70 * 1024)),
)

CONTENT_TYPES = [
    None,
    "application/json",
    "application/json; charset=utf-8",
    "application/json; charset=utf-16",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/octet-stream",
    "application/grpc-web",
    "application/grpc-web+json",
    "application/x-protobuf",
    "",
    "*/*",
    "application/JSON",
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
json_objects = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "provider": st.one_of(st.sampled_from(PROVIDER_NAMES), json_values),
            "batch_id": st.one_of(ids, json_values),
            "surface": st.one_of(st.sampled_from(["openai", "anthropic", "genai", "bedrock", ""]), json_values),
            "extra": json_values,
        },
    ),
    st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    json_values,
)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=200),
    json_objects.map(lambda v: json.dumps(v).encode()),
    st.sampled_from(
        [
            b"",
            b"{}",
            b"[]",
            b"null",
            b'"str"',
            b"{",
            b'{"provider": ',
            b"\xef\xbb\xbf{}",
            b"{}{}",
            b'{"provider": "\\ud800"}',
            b"[" * 5000 + b"]" * 5000,
            b'{"a":' * 3000 + b"1" + b"}" * 3000,
        ]
    ),
    st.builds(lambda n, c: c * n, st.integers(60_000, 300_000), st.sampled_from([b" ", b"a", b"{"])),
    st.builds(lambda n: b'{"provider": "' + b"x" * n + b'"}', st.integers(60_000, 80_000)),
)
query_keys = st.one_of(
    st.sampled_from(["provider", "batch_id", "surface", "key", "alt", "$alt", "api-version", "x", ""]),
    st.text(max_size=10),
)
query_values = st.one_of(st.sampled_from(PROVIDER_NAMES), st.text(max_size=20))
queries = st.lists(st.tuples(query_keys, query_values, st.booleans()), max_size=4)
METHODS = ["POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECTX", "post"]


def target_for(route: Route, encoded_id: str, provider: str | None, query: str = "") -> str:
    target = route.template.replace("{id}", encoded_id)
    params = []
    if provider is not None:
        params.append("provider=" + quote(provider, safe=""))
    if query:
        params.append(query)
    return target + ("?" + "&".join(params) if params else "")


def provider_carrier(route: Route, provider: str, how: str) -> tuple[str | None, bytes | None, list]:
    """The provider as a query parameter, a JSON body field or the x-model-provider header."""
    if how == "query" or route.name == "native":
        return provider, None, []
    if how == "body":
        return None, json.dumps({"provider": provider}).encode(), [("Content-Type", "application/json")]
    if "\r" in provider or "\n" in provider or "\x00" in provider or not provider.isprintable():
        return None, None, []
    try:
        provider.encode("latin-1")
    except UnicodeEncodeError:
        return None, None, []
    return None, None, [("x-model-provider", provider)]


# --- properties ----------------------------------------------------------------------------------------


@settings(max_examples=160, **SETTINGS)
@given(
    route=st.sampled_from(ROUTES),
    batch_id=ids,
    how=st.sampled_from(["full", "lower", "double", "keep"]),
    provider=providers,
    carrier=st.sampled_from(["query", "body", "header", "none"]),
)
@example(route=ROUTES[0], batch_id="..", how="keep", provider="openai", carrier="query")
@example(route=ROUTES[0], batch_id="a/../../x", how="keep", provider="openai", carrier="query")
@example(
    route=ROUTES[6],
    batch_id="arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/..",
    how="full",
    provider="bedrock",
    carrier="none",
)
@example(route=ROUTES[4], batch_id="a:cancel", how="keep", provider="gemini", carrier="header")
def test_hostile_batch_id_on_every_route_is_documented_and_upstream_path_safe(
    gw: Gateway, sim: SimAdmin, route: Route, batch_id: str, how: str, provider: str, carrier: str
) -> None:
    encoded = encode_id(batch_id, how)
    if carrier == "none":
        query_provider, body, headers = (provider if route.name == "native" else None), None, []
    else:
        query_provider, body, headers = provider_carrier(route, provider, carrier)
    target = target_for(route, encoded, query_provider)
    assume(decodes_as_utf8(target))

    answer, parsed = run_case(gw, sim, "POST", target, body, headers)

    if answer.status == 200 and route.envelope == "bifrost":
        assert parsed["id"] == unquote(encoded)  # the id comes back exactly as the path carried it


@settings(max_examples=70, **SETTINGS)
@given(
    route=st.sampled_from(ROUTES),
    headers=st.lists(st.tuples(header_names, header_values), min_size=1, max_size=4),
)
@example(route=ROUTES[0], headers=[("x_under_score", "1")])
@example(route=ROUTES[3], headers=[("x-envoy-original-path", "/v1/batches/other/cancel")])
@example(route=ROUTES[0], headers=[("x-big", "v" * 70000)])
@example(route=ROUTES[0], headers=[("x_under_score", "1"), ("X-UPPER.dot-1", "2")])
@example(route=ROUTES[5], headers=[("x-model-provider", "\x80\xff")])
def test_hostile_headers_are_documented_and_upstream_path_safe(gw: Gateway, sim: SimAdmin, route: Route, headers):
    target = target_for(route, "batch_hostile_headers", "openai" if route.name == "native" else None)

    run_case(gw, sim, "POST", target, None, headers)


@settings(max_examples=70, **SETTINGS)
@given(route=st.sampled_from(ROUTES), body=bodies, content_type=st.sampled_from(CONTENT_TYPES))
@example(route=ROUTES[1], body=b"[" * 5000 + b"]" * 5000, content_type="application/json")
@example(route=ROUTES[6], body=b"[1]", content_type="application/json")
@example(route=ROUTES[4], body=b'{"batch_id": "../x"}', content_type="application/json")
def test_hostile_bodies_are_documented_and_upstream_path_safe(
    gw: Gateway, sim: SimAdmin, route: Route, body: bytes | None, content_type: str | None
) -> None:
    target = target_for(route, "batch_hostile_body", "openai" if route.name == "native" else None)
    headers = [] if content_type is None else [("Content-Type", content_type)]

    run_case(gw, sim, "POST", target, body, headers)


@settings(max_examples=70, **SETTINGS)
@given(route=st.sampled_from(ROUTES), params=queries)
@example(route=ROUTES[0], params=[("provider", "openai", True), ("batch_id", "../x", True)])
@example(route=ROUTES[0], params=[("provider", "openai", True), ("provider", "", True)])
@example(route=ROUTES[4], params=[("key", "AIza", True)])
def test_hostile_query_strings_are_documented_and_upstream_path_safe(gw: Gateway, sim: SimAdmin, route, params):
    parts = []
    for key, value, encoded in params:
        if encoded:
            parts.append(f"{quote(key, safe='')}={quote(value, safe='')}")
        else:  # raw, as far as the request line allows (no spaces, controls or fragment)
            raw = quote(f"{key}={value}", safe="=&;/?:@$,+!*'()%[]")
            parts.append(raw)
    query = "&".join(parts)
    provider = "openai" if route.name == "native" else None
    target = target_for(route, "batch_hostile_query", provider, query)
    assume(decodes_as_utf8(target))

    run_case(gw, sim, "POST", target)


@settings(max_examples=40, **SETTINGS)
@given(
    method=st.sampled_from(METHODS),
    route=st.sampled_from(ROUTES),
    prefix=st.sampled_from(["", "/", "//", "/./", "/v1/..", "/%2e", "/x/.."]),
    suffix=st.sampled_from(["", "/", "/..", "/.", "%2F", ":cancel", "/cancel", ";x", "/extra"]),
)
def test_hostile_methods_and_path_shapes_are_documented(gw: Gateway, sim: SimAdmin, method, route, prefix, suffix):
    path = route.template.replace("{id}", "batch_hostile_shape")
    provider_query = "?provider=openai" if route.name == "native" else ""
    target = prefix.rstrip("/") + path + suffix + provider_query if prefix else path + suffix + provider_query

    run_case(gw, sim, method, target)


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/v2/batches/x/cancel",
        "/openai/v1/files",
        "/genai/v1beta/batches/x",
        "/anthropic/v1/messages",
        "/bedrock/model-invocation-job/x",
        "/_sim/calls",
        "/batchgate.v1.BatchService/Cancel",
        "/grpc.health.v1.Health/Check",
    ],
)
def test_unrouted_path_is_a_documented_404(gw: Gateway, sim: SimAdmin, target: str) -> None:
    answer, _ = run_case(gw, sim, "POST", target)
    assert answer.status == 404


# --- known bugs, pinned ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/v1/batches/a%FFb/cancel?provider=openai",
        "/v1/batches/x/cancel?provider=%ff",
        "/anthropic/v1/messages/batches/%C3%28/cancel",
    ],
)
def test_invalid_utf8_percent_encoding_is_a_documented_answer(gw: Gateway, sim: SimAdmin, target: str) -> None:
    answer, _ = run_case(gw, sim, "POST", target)
    assert answer.status == 400


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("grpc-timeout", "garbage"),
        ("grpc-status", "x"),
        ("grpc-encoding", "zzz"),
        ("grpc-previous-rpc-attempts", "x"),
        ("x-trace-bin", "!!!"),
    ],
)
def test_grpc_reserved_header_on_rest_call_is_a_documented_answer(gw: Gateway, sim: SimAdmin, name, value) -> None:
    answer, _ = run_case(
        gw, sim, "POST", "/v1/batches/batch_hostile_grpc_header/cancel?provider=openai", None, [(name, value)]
    )
    assert answer.status == 200


def test_raw_fragment_in_path_reply_has_a_message(gw: Gateway, sim: SimAdmin) -> None:
    answer, _ = run_case(gw, sim, "POST", "/v1/batches/a#b/cancel?provider=openai")
    assert answer.status == 400


@pytest.mark.parametrize("name", ["+", "x!y", "a~b", "x*", "x|y"])
def test_header_name_legal_in_http_not_in_grpc_is_a_documented_answer(gw: Gateway, sim: SimAdmin, name: str) -> None:
    answer, _ = run_case(gw, sim, "POST", "/v1/batches/batch_hostile_hname/cancel?provider=openai", None, [(name, "1")])
    assert answer.status == 200


@pytest.mark.parametrize("where", ["path", "header"])
def test_request_metadata_over_grpc_limit_is_a_documented_answer(gw: Gateway, sim: SimAdmin, where: str) -> None:
    if where == "path":
        target, headers = f"/v1/batches/{'b' * 20000}/cancel?provider=openai", []
    else:
        target, headers = "/v1/batches/batch_hostile_big/cancel?provider=openai", [("x-big", "v" * 20000)]
    answer, _ = run_case(gw, sim, "POST", target, None, headers)
    # Under Envoy's 60 KiB header limit a big header is just carried; an over-long id is our 400.
    assert answer.status == (200 if where == "header" else 400)


# --- issue 12: the edge treats every REST request alike ---------------------------------------------


def log_lines_for(gw: Gateway, batch_id: str) -> list[tuple[str, str]]:
    return [
        (line["logger"], line.get("outcome") or line.get("result"))
        for line in service_log(gw.stack)
        if line.get("batch_id") == batch_id
    ]


@pytest.mark.parametrize(
    "content_type",
    ["application/grpc-web", "application/grpcfoo", "application/grpc-web+proto", "application/grpc-web-text"],
)
@pytest.mark.parametrize("header", [("x!y", "1"), ("x-trace-bin", "!!!"), ("grpc-timeout", "garbage")])
def test_grpc_lookalike_content_type_is_a_rest_request(
    gw: Gateway, sim: SimAdmin, content_type: str, header: tuple[str, str]
) -> None:
    """Only what Envoy itself takes for gRPC (application/grpc, application/grpc+...) skips the REST
    treatment; anything else with a header gRPC cannot carry used to be an unlogged 500."""
    batch_id = sim.seed("openai")
    target = f"/v1/batches/{batch_id}/cancel?provider=openai"

    answer, body = run_case(gw, sim, "POST", target, b"{}", [("Content-Type", content_type), header])

    assert answer.status == 200 and body["id"] == batch_id
    assert log_lines_for(gw, batch_id) == [("batchgate.access", "OK"), ("batchgate.audit", "ok")]


# Every binding, as Envoy matches it, with spellings the transcoder also accepts. A victim id in the
# query and in the body must never be what gets cancelled.
PATH_VARIANTS = ["{path}/", "{path}//", "{path}/./", "/{path}", "{path};x"]
VERB_VARIANTS = {
    "genai_v1beta": ["/genai/v1beta/batches/{id}/:cancel", "/genai/v1beta/batches/{id}:cancel/"],
    "native": ["/v1/batches/{id}:cancel", "/v1/batches/{id}/:cancel"],
}


def path_variants() -> list[tuple[Route, str]]:
    cases = []
    for route in ROUTES:
        path = route.template.replace("{id}", "mine")
        cases += [(route, variant.format(path=path)) for variant in PATH_VARIANTS]
        cases += [(route, variant.format(id="mine")) for variant in VERB_VARIANTS.get(route.name, [])]
    return cases


@pytest.mark.parametrize(("route", "target"), path_variants(), ids=lambda v: getattr(v, "name", v))
def test_every_path_spelling_names_the_batch_it_cancels(gw: Gateway, sim: SimAdmin, route: Route, target: str) -> None:
    provider_of_route = {"bedrock": "bedrock", "google": "gemini", "anthropic": "anthropic"}
    victim = sim.seed(provider_of_route.get(route.envelope, "openai"))
    provider = "openai" if route.envelope == "bifrost" else None
    query = urlencode({**({"provider": provider} if provider else {}), "batch_id": victim})
    body = json.dumps({"batch_id": victim}).encode()

    answer, parsed = run_case(gw, sim, "POST", f"{target}?{query}", body, [("Content-Type", "application/json")])

    assert answer.status in (400, 404), (answer.status, parsed)
    assert sim.calls(batch_id=victim) == []


def test_trailing_slash_is_a_404_in_the_routes_shape(gw: Gateway, sim: SimAdmin) -> None:
    answer, body = run_case(gw, sim, "POST", "/anthropic/v1/messages/batches/mine/cancel/")
    assert answer.status == 404
    assert body["error"] == {
        "type": "not_found_error",
        "message": "no route for POST /anthropic/v1/messages/batches/mine/cancel/",
    }


# Replies Envoy makes itself: the message says what the status says. The HTTP/1 codec refuses this
# one before any route is known, so it is Bifrost JSON on every path (as CODEC_REFUSALS above).
@pytest.mark.parametrize(
    "route",
    [
        "/v1/batches/{id}/cancel?provider=openai",
        "/genai/v1beta/batches/{id}:cancel",
        "/bedrock/model-invocation-job/{id}/stop",
    ],
)
def test_unsupported_transfer_encoding_is_a_501_that_says_so(gw: Gateway, sim: SimAdmin, route: str) -> None:
    answer = send(gw, "POST", route.format(id=new_id()), None, [("Transfer-Encoding", "chunked, identity")])

    assert answer.status == 501
    body = json.loads(answer.body)
    assert_bifrost_error(body, 501)
    assert body["error"]["code"] == "not_implemented"
    assert body["error"]["message"] == "Not Implemented (http1.invalid_transfer_encoding)"


# The transcoder's complaints in the caller's terms: (request, body, the message every route shows).
TRANSCODER_REFUSALS = [
    ("?foo=1", None, "unknown query parameter 'foo'"),
    ("?request_counts.total=1", None, "unknown query parameter 'request_counts'"),
    ("?provider.x=1", None, "query parameter 'provider' has no sub-fields"),
    ("", b'{"provider": 1}', "'provider' must be a string, not 1"),
    ("", b'{"batch_id": true}', "'batch_id' must be a string, not true"),
    ("", b'{"provider": {"a": 1}}', "'provider' must not be an object"),
    ("", b'{"wait_seconds": {}}', "'wait_seconds' must not be an object"),
    ("", b'{"provider": [1]}', "a field must be a single value, not a list"),
    ("", b"[1]", "the request body must be a JSON object"),
    ("", b'{"provider": ', "the request body is not valid JSON: Unexpected end of string. Expected a value."),
    ("", b'{"provider": "a"}x', "the request body is not valid JSON: Parsing terminated before end of input."),
    ("", b'{"provider": "\xff"}', "the request body is not valid JSON: Encountered non UTF-8 code points."),
]


@pytest.mark.parametrize("route", [r for r in ROUTES if r.name != "native"], ids=lambda r: r.name)
@pytest.mark.parametrize(("query", "body", "message"), TRANSCODER_REFUSALS)
def test_transcoder_refusals_name_what_the_caller_sent(
    gw: Gateway, sim: SimAdmin, route: Route, query: str, body: bytes | None, message: str
) -> None:
    target = route.template.replace("{id}", new_id()) + query
    answer, parsed = run_case(gw, sim, "POST", target, body, [("Content-Type", "application/json")])

    assert answer.status == 400
    shown = parsed.get("message") or parsed["error"]["message"]
    assert shown == message
    for internal in ("batchgate.v1", "TYPE_", "transcode", "Proto field", "lua_response", "\\n", "\\u000a"):
        assert internal not in answer.body.decode(), answer.body


# The bulk body's items, as schemathesis sends them (tests/e2e/test_openapi.py): the field inside
# an item is named, and no word of the JSON parser's shows.
BULK_REFUSALS = [
    (b'{"batches": [{"id": "a", "provider": {}}]}', "'batches[0].provider' must not be an object"),
    (b'{"batches": [{"id": "a", "provider": "openai"}], "wait_seconds": {}}', "'wait_seconds' must not be an object"),
    (b'{"batches": [1]}', "'batches[0]' must be an object, not 1"),
    (b'{"batches": ["x"]}', "'batches[0]' must be an object, not \"x\""),
]


@pytest.mark.parametrize(("body", "message"), BULK_REFUSALS)
def test_bulk_refusals_name_the_item_field(gw: Gateway, sim: SimAdmin, body: bytes, message: str) -> None:
    answer, parsed = run_case(gw, sim, "POST", "/v1/batches/cancel", body, [("Content-Type", "application/json")])

    assert answer.status == 400
    assert parsed["error"]["message"] == message
    assert "Starting an object" not in answer.body.decode() and "googleapis" not in answer.body.decode()


def test_rest_over_h2_has_no_grpc_trailers(gw: Gateway, sim: SimAdmin) -> None:
    ok = h2_call(gw.stack.http_port, f"/v1/batches/{sim.seed('openai')}/cancel?provider=openai", [])
    finished = sim.seed("openai", status="completed")
    refused = h2_call(gw.stack.http_port, f"/v1/batches/{finished}/cancel?provider=openai", [])

    for answer in (ok, refused):
        assert answer.ended and answer.headers["content-type"] == "application/json", answer
        assert not answer.trailers, answer.trailers
        assert not [k for k in answer.headers if k.startswith("grpc-") or k.startswith("x-bf-")], answer.headers
    assert (ok.headers[":status"], refused.headers[":status"]) == ("200", "409")


def test_native_grpc_through_the_edge_keeps_its_trailers(gw: Gateway, sim: SimAdmin) -> None:
    message = pb.CancelBatchRequest(batch_id=sim.seed("openai", status="completed"), provider="openai")
    answer = h2_call(
        gw.stack.http_port, "/batchgate.v1.BatchService/Cancel", GRPC_HEADERS, grpc_frame(message.SerializeToString())
    )
    # No message and no initial metadata of its own (the edge's plumbing is for REST calls only):
    # a Trailers-Only answer, whose one HEADERS frame carries the status.
    status = answer.trailers if answer.trailers is not None else answer.headers
    assert status["grpc-status"] == str(grpc.StatusCode.FAILED_PRECONDITION.value[0])
    assert "grpc-status-details-bin" in status
    assert not any(name.startswith("x-bf-") for name in (*answer.headers, *(answer.trailers or {})))


@pytest.mark.parametrize("given", ['a"b', "v" * 9000, "", "a b", "x" * 129, "ok,other"])
@pytest.mark.parametrize("outcome", ["ok", "refused"])
def test_unsafe_request_id_is_replaced_everywhere(gw: Gateway, sim: SimAdmin, given: str, outcome: str) -> None:
    batch_id = sim.seed("openai") if outcome == "ok" else new_id()
    provider = "openai" if outcome == "ok" else "nope"

    answer = send(gw, "POST", f"/v1/batches/{batch_id}/cancel?provider={provider}", None, [("x-request-id", given)])

    assert answer.status == (200 if outcome == "ok" else 400)
    used = answer.headers.get_all("x-request-id")
    assert used is not None and len(used) == 1 and used[0] != given
    assert re.fullmatch(r"[0-9a-f]{32}|[0-9a-f-]{36}", used[0]), used  # ours, or Envoy's for an empty one
    logged = {line["request_id"] for line in service_log(gw.stack) if line.get("batch_id") == batch_id}
    assert logged == {used[0]}
    upstream = [{k.lower(): v for k, v in call["headers"].items()} for call in sim.calls(batch_id=batch_id)]
    sent = [headers["x-client-request-id"] for headers in upstream]
    assert sent == ([used[0]] if outcome == "ok" else [])


@pytest.mark.parametrize("given", ["abc-123", "a.b:c_d-e", "x" * 128])
def test_safe_request_id_is_kept_everywhere(gw: Gateway, sim: SimAdmin, given: str) -> None:
    batch_id = sim.seed("openai")

    answer = send(gw, "POST", f"/v1/batches/{batch_id}/cancel?provider=openai", None, [("x-request-id", given)])

    assert answer.status == 200
    assert answer.headers.get_all("x-request-id") == [given]
    assert {line["request_id"] for line in service_log(gw.stack) if line.get("batch_id") == batch_id} == {given}


# --- issue 21: header bytes, echoed keys, chunked bodies ----------------------------------------------

SECRET_SHAPED = "sk-bf-hostile-header-secret-0001"


@pytest.mark.parametrize("route", [r for r in ROUTES if r.name in ("native", "anthropic", "genai_v1beta")])
def test_a_header_value_grpc_cannot_carry_is_a_400_before_the_service_and_never_logged(
    gw: Gateway, sim: SimAdmin, route: Route
) -> None:
    target = target_for(route, new_id(), "openai" if route.name == "native" else None)
    before = len(service_log(gw.stack))

    answer, body = run_case(gw, sim, "POST", target, None, [("x-bf-vk", SECRET_SHAPED.encode() + b"\xff")])

    assert answer.status == 400
    assert "header 'x-bf-vk' has a value that is not printable ASCII" in answer.body.decode()
    assert SECRET_SHAPED not in answer.body.decode()
    assert service_log(gw.stack)[before:] == []  # the service never saw it


@pytest.mark.parametrize("route", ["envoy", "direct"])
def test_a_grpc_caller_with_such_a_header_gets_invalid_argument_and_no_traceback(gw: Gateway, route: str) -> None:
    port = gw.stack.http_port if route == "envoy" else gw.stack.grpc_port
    message = pb.CancelBatchRequest(batch_id=new_id(), provider="openai").SerializeToString()
    log_file = gw.stack.log_dir / "service.log"
    size = log_file.stat().st_size

    # The raw byte 0xff (not UTF-8): what grpc-python logged with a traceback and the whole value.
    hostile = (b"x-bf-vk", SECRET_SHAPED.encode() + b"\xff")
    answer = h2_call(port, "/batchgate.v1.BatchService/Cancel", [*GRPC_HEADERS, hostile], grpc_frame(message))

    assert answer.grpc_status == str(grpc.StatusCode.INVALID_ARGUMENT.value[0]), answer
    assert answer.grpc_message == "header 'x-bf-vk' has a value that is not printable ASCII"
    # The service writes its one "malformed call" line (direct) before it answers.
    written = log_file.read_bytes()[size:].decode("utf-8", "replace")
    assert SECRET_SHAPED not in written and "Traceback" not in written and "Invalid encoding" not in written
    assert '"level":"error"' not in written


ECHO_KEY = "sk-sandbox-openai"  # the sandbox's OpenAI key (gateway/stack.py sandbox mode)


def test_a_key_echoed_in_a_provider_error_never_reaches_the_caller_or_the_log(gw: Gateway, faults: SimAdmin) -> None:
    batch_id = faults.seed("openai")
    echo = {"error": {"message": f"Incorrect API key provided: {ECHO_KEY}.", "type": "invalid_request_error"}}
    faults.add_faults("openai", {"status": 401, "body": json.dumps(echo)})

    answer = send(gw, "POST", f"/v1/batches/{batch_id}/cancel?provider=openai")

    assert answer.status == 401
    assert ECHO_KEY not in answer.body.decode()
    assert json.loads(answer.body)["error"]["message"] == "Incorrect API key provided: ***."
    logged = [line for line in service_log(gw.stack) if line.get("batch_id") == batch_id]
    assert logged and ECHO_KEY not in json.dumps(logged)


def test_a_key_echoed_in_a_200_body_never_reaches_raw_response(gw: Gateway, faults: SimAdmin) -> None:
    batch_id = faults.seed("openai")
    body = {"id": batch_id, "object": "batch", "status": "cancelling", "metadata": {"seen_key": ECHO_KEY}}
    faults.add_faults("openai", {"status": 200, "body": json.dumps(body)})

    answer = send(
        gw, "POST", f"/v1/batches/{batch_id}/cancel?provider=openai", None, [("x-bf-send-back-raw-response", "true")]
    )

    assert answer.status == 200
    text = answer.body.decode()
    assert ECHO_KEY not in text
    assert json.loads(text)["extra_fields"]["raw_response"]["metadata"] == {"seen_key": "***"}


def chunked_bulk(gw: Gateway, size: int, chunk: int) -> tuple[Answer, int]:
    """A bulk cancel body of about `size` bytes sent with Transfer-Encoding: chunked (no length),
    and its length."""
    item = json.dumps({"id": "c" * 500, "provider": "openai"})
    count = max(1, (size - 40) // (len(item) + 1))
    body = ('{"batches": [' + ",".join([item] * count) + "]}").encode()
    conn = http.client.HTTPConnection("127.0.0.1", gw.stack.http_port, timeout=30)
    try:
        conn.putrequest("POST", "/v1/batches/cancel", skip_accept_encoding=True)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        try:
            for start in range(0, len(body), chunk):
                piece = body[start : start + chunk]
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.send(b"0\r\n\r\n")
        except OSError:
            pass  # Envoy answered and closed before the whole body was sent
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read()), len(body)
    finally:
        conn.close()


@pytest.mark.parametrize("size_kb", [700, 760, 775, 800, 900, 1000, 1030, 1070])
@pytest.mark.parametrize("chunk", [4096, 65536])
def test_a_chunked_bulk_body_over_the_limit_is_always_a_413_in_the_bifrost_shape(
    gw: Gateway, size_kb: int, chunk: int
) -> None:
    from gateway.render import BULK_MAX_REQUEST_BYTES

    answer, length = chunked_bulk(gw, size_kb * 1000, chunk)

    body = json.loads(answer.body)
    if length > BULK_MAX_REQUEST_BYTES:
        assert answer.status == 413, (length, answer.status, answer.body[:200])
        assert_bifrost_error(body, 413)
        assert body["error"]["code"] == "request_too_large"
    else:  # read whole: more than 1,000 items, the service's own 400 for the call
        assert answer.status == 400, (length, answer.status, answer.body[:200])
        assert_bifrost_error(body, 400)
        assert body["error"]["message"].startswith("batches must hold 1 to 1000 items")
