"""Access control end to end (issue 5): virtual keys, gateway credentials, rate limits, direct keys
and TLS, through the Envoy edge (REST, the drop-in SDK routes and native gRPC on Envoy's port) and
on the service's own gRPC port, against the shared sandbox.

Two extra gateways share the session sandbox (`stack.sandbox_url`):

* `enforced`: `client.enforce_auth_on_inference`, gateway credentials (`auth_config`) and a set of
  virtual keys (all providers, azure-only, inactive, expired, rate-limited, key_ids-restricted). It
  runs with LOG_LEVEL=DEBUG, the console span exporter and /metrics on, so that every log line,
  span attribute and metric label of the run can be searched for secrets at the end.
* `direct`: `client.allow_direct_keys` and TLS on the REST edge and the gRPC port, with configured
  OpenAI/Anthropic keys the simulator does not accept, so a call that works can only have used the
  caller's own key.

Every refused call is made for a seeded batch id, and the simulator's record shows no call for it.
The last test stands alone: it starts two gateways of its own, runs every scenario above through
them, stops them and searches all their log files, what the sandbox logged meanwhile and every
answer they gave for each known secret.
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anthropic
import boto3
import botocore.exceptions
import grpc
import httpx2 as httpx
import openai
import pytest
import requests
from google import genai
from google.genai import errors as genai_errors
from grpc_status import rpc_status

from gateway.paths import ROOT
from gateway.stack import Stack, free_port
from sandbox.anthropic import AnthropicSim
from sandbox.google import GeminiSim
from sandbox.openai import AzureSim, OpenAISim
from sandbox.server import SIMULATORS, gateway_config
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.gen.batchgate.v1 import batchgate_pb2_grpc as pb_grpc
from service.infra.providers.catalog import NO_BATCH_CANCEL
from tests.e2e.conftest import SimAdmin, new_id
from tests.e2e.test_launcher import launcher_env, port_open
from tests.support import self_signed_cert

# --- known secrets (random per run, so a hit in a log can only come from this module) ------------

_RUN = secrets.token_hex(6)
VK_ALL = f"sk-bf-e2e-all-{_RUN}-{secrets.token_hex(8)}"
VK_AZURE_ONLY = f"sk-bf-e2e-azure-only-{secrets.token_hex(8)}"
VK_INACTIVE = f"sk-bf-e2e-inactive-{secrets.token_hex(8)}"
VK_EXPIRED = f"sk-bf-e2e-expired-{secrets.token_hex(8)}"
VK_LIMITED_REST = f"sk-bf-e2e-limited-rest-{secrets.token_hex(8)}"
VK_LIMITED_GRPC = f"sk-bf-e2e-limited-grpc-{secrets.token_hex(8)}"
VK_SECOND_KEY = f"sk-bf-e2e-second-key-{secrets.token_hex(8)}"
VK_BEDROCK_TOKEN = f"sk-bf-e2e-bedrock-token-{secrets.token_hex(8)}"
VK_UNKNOWN = f"sk-bf-e2e-unknown-{secrets.token_hex(8)}"
VIRTUAL_KEYS = (
    VK_ALL,
    VK_AZURE_ONLY,
    VK_INACTIVE,
    VK_EXPIRED,
    VK_LIMITED_REST,
    VK_LIMITED_GRPC,
    VK_SECOND_KEY,
    VK_BEDROCK_TOKEN,
)
ADMIN_USER = "batchgate-admin"
ADMIN_PASSWORD = f"admin-pw-{secrets.token_hex(12)}"
WRONG_ADMIN_PASSWORD = f"wrong-pw-{secrets.token_hex(12)}"
# A second configured OpenAI key (the simulator does not accept it) that only VK_SECOND_KEY may use.
SECOND_OPENAI_KEY = f"sk-second-openai-{secrets.token_hex(10)}"
# A Bedrock key with a session token (which botocore's signer logs at DEBUG unless filtered).
BEDROCK_SESSION_TOKEN = f"IQoJb3JpZ2luX2VjE-e2e-session-token-{secrets.token_hex(16)}"
# The direct-keys gateway's configured keys: refused by the simulator, so success means a direct key.
DECOY_OPENAI_KEY = f"sk-configured-decoy-openai-{secrets.token_hex(10)}"
DECOY_ANTHROPIC_KEY = f"sk-ant-configured-decoy-{secrets.token_hex(10)}"
# A caller's own provider key the simulator refuses.
WRONG_DIRECT_KEY = f"sk-wrong-direct-key-{secrets.token_hex(10)}"
# Caller credentials that are not gateway credentials (never forwarded, never logged).
NON_VK_BEARER = f"sk-callers-provider-key-{secrets.token_hex(8)}"
COOKIE_SECRET = f"cookie-{secrets.token_hex(10)}"
PROXY_AUTH_SECRET = f"proxy-auth-{secrets.token_hex(10)}"
CALLER_X_API_KEY = f"callers-x-api-key-{secrets.token_hex(8)}"
CALLER_GOOG_KEY = f"callers-goog-key-{secrets.token_hex(8)}"

OPENAI_KEY = OpenAISim.default_key  # the key the shared sandbox accepts (and the enforced gateway holds)
ANTHROPIC_KEY = AnthropicSim.default_key
GEMINI_KEY = GeminiSim.default_key
PROVIDERS = [sim.name for sim in SIMULATORS]
BLOCKED_MESSAGE = "Provider 'openai' is not allowed for this virtual key"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def provider_secrets(config: Mapping[str, Any]) -> set[str]:
    """Every secret a gateway config holds for its providers: key values, SigV4 secrets and session
    tokens, and each base64 line of a service-account private key (a log may escape its newlines)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                if name in ("value", "secret_key", "session_token") and isinstance(value, str) and value:
                    found.add(value)
                elif name == "private_key" and isinstance(value, str):
                    found.update(line for line in value.splitlines() if len(line) >= 40 and "-----" not in line)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(config.get("providers", {}))
    return found


# --- everything the gateways answered, for the final secret search (which clears it first) ------

SEEN: list[str] = []


def remember(status: Any, headers: Any, body: Any) -> None:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    items = headers.items() if hasattr(headers, "items") else headers
    SEEN.append(f"{status}\n" + "\n".join(f"{k}: {v}" for k, v in items or ()) + f"\n\n{body}")


def remember_rpc(call: Any, answer: Any = None) -> None:
    """A gRPC call's status, metadata (both kinds) and answer."""
    metadata = [*(call.initial_metadata() or ()), *(call.trailing_metadata() or ())]
    status = f"{call.code()} {call.details()}" if isinstance(call, grpc.RpcError) else "OK"
    remember(status, [(k, v if isinstance(v, str) else repr(v)) for k, v in metadata], str(answer or ""))


def recording_session(**kwargs: Any) -> requests.Session:
    session = requests.Session()
    for name, value in kwargs.items():
        setattr(session, name, value)
    session.hooks["response"].append(lambda r, *a, **k: remember(r.status_code, r.headers, r.content))
    return session


def _httpx_hook(response: httpx.Response) -> None:
    response.read()
    remember(response.status_code, response.headers, response.content)


def recording_httpx(**kwargs: Any) -> httpx.Client:
    return httpx.Client(event_hooks={"response": [_httpx_hook]}, **kwargs)


# --- the two gateways ---------------------------------------------------------------------------


def enforced_config(sandbox_url: str) -> dict:
    config = gateway_config(sandbox_url)
    config["client"]["enforce_auth_on_inference"] = True
    openai_keys = config["providers"]["openai"]["keys"]
    openai_keys[0]["id"] = "sandbox"
    openai_keys.append({"id": "second", "name": "second", "value": SECOND_OPENAI_KEY, "use_for_batch_api": True})
    bedrock_keys = config["providers"]["bedrock"]["keys"]
    with_token = json.loads(json.dumps(bedrock_keys[0]))
    with_token.update(id="with-token", name="with-token")
    with_token["bedrock_key_config"]["session_token"] = BEDROCK_SESSION_TOKEN
    bedrock_keys.append(with_token)
    every = [{"provider": name} for name in PROVIDERS]
    config["governance"] = {
        "rate_limits": [{"id": "two-per-minute", "request_max_limit": 2, "request_reset_duration": "1m"}],
        "virtual_keys": [
            {"id": "all", "name": "All providers", "value": VK_ALL, "provider_configs": every},
            {"id": "azure-only", "value": VK_AZURE_ONLY, "provider_configs": [{"provider": "azure"}]},
            {"id": "inactive", "value": VK_INACTIVE, "is_active": False, "provider_configs": every},
            {"id": "expired", "value": VK_EXPIRED, "expires_at": "2020-01-01T00:00:00Z", "provider_configs": every},
            {
                "id": "limited-rest",
                "value": VK_LIMITED_REST,
                "rate_limit_id": "two-per-minute",
                "provider_configs": every,
            },
            {
                "id": "limited-grpc",
                "value": VK_LIMITED_GRPC,
                "rate_limit_id": "two-per-minute",
                "provider_configs": every,
            },
            {
                "id": "second-key",
                "value": VK_SECOND_KEY,
                "provider_configs": [{"provider": "openai", "key_ids": ["second"]}],
            },
            {
                "id": "bedrock-token",
                "value": VK_BEDROCK_TOKEN,
                "provider_configs": [{"provider": "bedrock", "key_ids": ["with-token"]}],
            },
        ],
    }
    config["auth_config"] = {"is_enabled": True, "admin_username": ADMIN_USER, "admin_password": ADMIN_PASSWORD}
    return config


def direct_config(sandbox_url: str) -> dict:
    config = gateway_config(sandbox_url)
    config["client"]["allow_direct_keys"] = True
    config["providers"]["openai"]["keys"][0]["value"] = DECOY_OPENAI_KEY
    config["providers"]["anthropic"]["keys"][0]["value"] = DECOY_ANTHROPIC_KEY
    return config


# Quiet, fast gateways: no 3 s drain pause on stop; everything the service can say, said.
SERVICE_ENV = {"DRAIN_DELAY_SECONDS": "0", "LOG_LEVEL": "DEBUG", "OTEL_TRACES_EXPORTER": "console"}


def new_stack(config: dict, directory: Path, **kwargs: Any) -> Stack:
    path = directory / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return Stack(
        config=path,
        http_port=free_port(),
        grpc_port=free_port(),
        admin_port=free_port(),
        log_dir=directory / "logs",
        env=dict(SERVICE_ENV),
        **kwargs,
    )


@pytest.fixture(scope="module")
def enforced(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    gateway = new_stack(
        enforced_config(stack.sandbox_url), tmp_path_factory.mktemp("access-enforced"), metrics_port=free_port()
    )
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("access-tls"))


@pytest.fixture(scope="module")
def direct(stack: Stack, tls_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    gateway = new_stack(
        direct_config(stack.sandbox_url),
        tmp_path_factory.mktemp("access-direct"),
        tls_cert=tls_files[0],
        tls_key=tls_files[1],
    )
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def rest(enforced: Stack) -> requests.Session:
    return recording_session()


def native(gateway: Stack, batch_id: str, provider: str = "openai") -> str:
    return f"{gateway.http_url}/v1/batches/{batch_id}/cancel?provider={provider}"


def post(session: requests.Session, url: str, headers: Mapping[str, str] | None = None) -> requests.Response:
    # verify per call: a session's own `verify` loses to REQUESTS_CA_BUNDLE from the environment.
    return session.post(
        url, headers={"x-bf-send-back-raw-response": "true", **(headers or {})}, timeout=10, verify=session.verify
    )


def bifrost_error(resp: requests.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers.get("content-type") == "application/json"
    body = resp.json()
    assert body["is_bifrost_error"] is True
    assert body["status_code"] == status
    assert body["error"]["code"] == code, body
    assert body["extra_fields"]["request_type"] == "batch_cancel"
    return body


def assert_never_reached(sim: SimAdmin, batch_id: str, provider: str = "openai") -> None:
    assert sim.calls(batch_id=batch_id) == []
    assert sim.batch(provider, batch_id)["status"] == "in_progress"  # the seeded batch is untouched


def upstream_calls(sim: SimAdmin, batch_id: str) -> list[dict]:
    return sim.calls(batch_id=batch_id)


# === 1. credential forms and errors through the Envoy REST edge =================================

ACCEPTED_FORMS = {
    "x-bf-vk": {"x-bf-vk": VK_ALL},
    "bearer sk-bf": {"Authorization": f"Bearer {VK_ALL}"},
    "x-api-key": {"x-api-key": VK_ALL},
    "x-goog-api-key": {"x-goog-api-key": VK_ALL},
    "basic admin": {"Authorization": basic(ADMIN_USER, ADMIN_PASSWORD)},
}


@pytest.mark.parametrize("form", list(ACCEPTED_FORMS))
def test_rest_each_credential_form_is_accepted(
    enforced: Stack, rest: requests.Session, sim: SimAdmin, form: str
) -> None:
    batch_id = sim.seed("openai", new_id("batch_acc"))

    resp = post(rest, native(enforced, batch_id), ACCEPTED_FORMS[form])

    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["id"], body["status"], body["extra_fields"]["provider"]) == (batch_id, "cancelling", "openai")
    (call,) = upstream_calls(sim, batch_id)
    assert call["headers"]["Authorization"] == f"Bearer {OPENAI_KEY}"  # the gateway's own key
    assert VK_ALL not in json.dumps(call["headers"])


def test_rest_virtual_key_scoped_to_azure_may_cancel_on_azure(
    enforced: Stack, rest: requests.Session, sim: SimAdmin
) -> None:
    batch_id = sim.seed("azure", new_id("batch_az"))

    resp = post(rest, native(enforced, batch_id, "azure"), {"x-bf-vk": VK_AZURE_ONLY})

    assert resp.status_code == 200, resp.text
    (call,) = upstream_calls(sim, batch_id)
    assert call["headers"]["api-key"] == AzureSim.default_key


def test_rest_virtual_key_limits_the_configured_keys_used(
    enforced: Stack, rest: requests.Session, sim: SimAdmin
) -> None:
    """key_ids: ["second"]: only that key goes upstream (the simulator refuses it, and its 401 is
    the provider's, not the gateway's)."""
    batch_id = sim.seed("openai", new_id("batch_kid"))

    resp = post(rest, native(enforced, batch_id), {"x-bf-vk": VK_SECOND_KEY})

    assert resp.status_code == 401
    assert resp.json()["is_bifrost_error"] is False
    assert [c["headers"]["Authorization"] for c in upstream_calls(sim, batch_id)] == [f"Bearer {SECOND_OPENAI_KEY}"]


def provider_batch_id(provider: str) -> str:
    """An id every simulator takes (Mistral's are UUIDs)."""
    return str(uuid.uuid4()) if provider == "mistral" else f"b{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize("provider", [name for name in PROVIDERS if name not in NO_BATCH_CANCEL])  # not Fireworks
def test_rest_all_providers_virtual_key_works_on_every_provider(
    enforced: Stack, rest: requests.Session, sim: SimAdmin, provider: str
) -> None:
    """Every adapter's own credential path (bearer, api-key, SigV4, minted Vertex tokens) runs with
    DEBUG logging on and raw responses requested: the material the final secret search reads."""
    batch_id = sim.seed(provider, provider_batch_id(provider))

    resp = post(rest, native(enforced, batch_id, provider), {"x-bf-vk": VK_ALL})

    assert resp.status_code == 200, resp.text
    assert resp.json()["extra_fields"]["raw_response"]
    calls = upstream_calls(sim, batch_id)
    assert calls and VK_ALL not in json.dumps([c["headers"] for c in calls])


def test_rest_bedrock_key_with_a_session_token_is_signed_with_it(
    enforced: Stack, rest: requests.Session, sim: SimAdmin
) -> None:
    """key_ids picks the Bedrock key that carries a session token (the simulator knows none, so it
    answers 403): the token goes upstream, and the final search checks it reached no log line."""
    batch_id = sim.seed("bedrock", provider_batch_id("bedrock"))

    resp = post(rest, native(enforced, batch_id, "bedrock"), {"x-bf-vk": VK_BEDROCK_TOKEN})

    assert resp.status_code == 403, resp.text
    assert resp.json()["is_bifrost_error"] is False
    calls = upstream_calls(sim, batch_id)
    assert [c["headers"].get("X-Amz-Security-Token") for c in calls] == [BEDROCK_SESSION_TOKEN]


REFUSED = {
    "no credentials": ({}, 401, "virtual_key_required"),
    "non sk-bf bearer": ({"Authorization": f"Bearer {NON_VK_BEARER}"}, 401, "virtual_key_required"),
    "unknown vk": ({"x-bf-vk": VK_UNKNOWN}, 401, "virtual_key_not_found"),
    "unknown vk as bearer": ({"Authorization": f"Bearer {VK_UNKNOWN}"}, 401, "virtual_key_not_found"),
    "inactive vk": ({"x-bf-vk": VK_INACTIVE}, 401, "virtual_key_not_found"),
    "expired vk": ({"x-bf-vk": VK_EXPIRED}, 401, "virtual_key_not_found"),
    "bad basic": ({"Authorization": basic(ADMIN_USER, WRONG_ADMIN_PASSWORD)}, 401, "invalid_credentials"),
    "unreadable basic": ({"Authorization": "Basic !!!not-base64"}, 401, "invalid_credentials"),
    "provider blocked": ({"x-bf-vk": VK_AZURE_ONLY}, 403, "provider_blocked"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_rest_refusals_have_their_status_and_code_and_never_reach_the_provider(
    enforced: Stack, rest: requests.Session, sim: SimAdmin, case: str
) -> None:
    headers, status, code = REFUSED[case]
    batch_id = sim.seed("openai", new_id("batch_ref"))

    resp = post(rest, native(enforced, batch_id), headers)

    body = bifrost_error(resp, status, code)
    assert body["error"]["type"] == ("permission_error" if status == 403 else "authentication_error")
    if code == "provider_blocked":
        assert body["error"]["message"] == BLOCKED_MESSAGE
        assert body["extra_fields"]["provider"] == "openai"
    assert "retry-after" not in resp.headers
    assert_never_reached(sim, batch_id)


def test_rest_unknown_inactive_and_expired_keys_get_identical_answers(
    enforced: Stack, rest: requests.Session, sim: SimAdmin
) -> None:
    answers = []
    for vk in (VK_UNKNOWN, VK_INACTIVE, VK_EXPIRED):
        batch_id = sim.seed("openai", "batch_same_answer")  # one id: the bodies must match byte for byte
        resp = post(rest, native(enforced, batch_id), {"x-bf-vk": vk})
        answers.append((resp.status_code, resp.headers.get("content-type"), resp.content))
    assert answers[0][0] == 401
    assert answers[0] == answers[1] == answers[2]
    assert json.loads(answers[0][2])["error"]["message"] == "virtual key not found"


def test_rest_rate_limit_answers_429_with_retry_after_on_the_third_call(
    enforced: Stack, rest: requests.Session, sim: SimAdmin
) -> None:
    headers = {"x-bf-vk": VK_LIMITED_REST}
    for _ in range(2):
        batch_id = sim.seed("openai", new_id("batch_rl"))
        assert post(rest, native(enforced, batch_id), headers).status_code == 200
        assert len(upstream_calls(sim, batch_id)) == 1
    third = sim.seed("openai", new_id("batch_rl"))

    resp = post(rest, native(enforced, third), headers)

    body = bifrost_error(resp, 429, "rate_limited")
    assert body["error"]["type"] == "rate_limit_error"
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert_never_reached(sim, third)
    # Other virtual keys are not limited by it.
    other = sim.seed("openai", new_id("batch_rl"))
    assert post(rest, native(enforced, other), {"x-bf-vk": VK_ALL}).status_code == 200


# --- the OpenAI SDK on /openai/v1 ----------------------------------------------------------------


@pytest.fixture(scope="module")
def openai_http(enforced: Stack) -> Iterator[httpx.Client]:
    client = recording_httpx()
    yield client
    client.close()


def openai_sdk(enforced: Stack, http_client: httpx.Client, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{enforced.http_url}/openai/v1", api_key=api_key, max_retries=0, http_client=http_client
    )


def test_openai_sdk_with_a_virtual_key(enforced: Stack, openai_http: httpx.Client, sim: SimAdmin) -> None:
    batch_id = sim.seed("openai", new_id("batch_sdk"))

    batch = openai_sdk(enforced, openai_http, VK_ALL).batches.cancel(batch_id)

    assert (batch.id, batch.status) == (batch_id, "cancelling")
    (call,) = upstream_calls(sim, batch_id)
    assert call["headers"]["Authorization"] == f"Bearer {OPENAI_KEY}"


OPENAI_SDK_REFUSALS = {
    "unknown": (VK_UNKNOWN, openai.AuthenticationError, 401, "virtual_key_not_found"),
    "expired": (VK_EXPIRED, openai.AuthenticationError, 401, "virtual_key_not_found"),
    "not a virtual key": (NON_VK_BEARER, openai.AuthenticationError, 401, "virtual_key_required"),
    "blocked": (VK_AZURE_ONLY, openai.PermissionDeniedError, 403, "provider_blocked"),
}


@pytest.mark.parametrize(
    ("api_key", "error", "status", "code"), list(OPENAI_SDK_REFUSALS.values()), ids=list(OPENAI_SDK_REFUSALS)
)
def test_openai_sdk_refusals(
    enforced: Stack, openai_http: httpx.Client, sim: SimAdmin, api_key: str, error: type, status: int, code: str
) -> None:
    batch_id = sim.seed("openai", new_id("batch_sdkref"))

    with pytest.raises(error) as info:
        openai_sdk(enforced, openai_http, api_key).batches.cancel(batch_id)

    assert (info.value.status_code, info.value.code) == (status, code)
    if code == "provider_blocked":
        assert info.value.response.json()["error"]["message"] == BLOCKED_MESSAGE
    assert_never_reached(sim, batch_id)


# --- native gRPC: through Envoy's port and on the service port -----------------------------------


@pytest.fixture(params=["envoy", "direct"])  # function scope: no reordering of the module's tests
def enforced_stub(request: pytest.FixtureRequest, enforced: Stack) -> Iterator[pb_grpc.BatchServiceStub]:
    port = enforced.http_port if request.param == "envoy" else enforced.grpc_port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.BatchServiceStub(channel)


def grpc_cancel(stub: pb_grpc.BatchServiceStub, batch_id: str, metadata: tuple, provider: str = "openai"):
    request = pb.CancelBatchRequest(batch_id=batch_id, provider=provider)
    answer, call = stub.Cancel.with_call(request, metadata=metadata, timeout=10)
    remember_rpc(call, answer)
    return answer


def grpc_refusal(
    stub: pb_grpc.BatchServiceStub, batch_id: str, metadata: tuple
) -> tuple[grpc.RpcError, pb.ErrorDetail]:
    with pytest.raises(grpc.RpcError) as info:
        grpc_cancel(stub, batch_id, metadata)
    err = info.value
    remember_rpc(err)
    status = rpc_status.from_call(err)
    assert status is not None, "no grpc-status-details-bin on the error"
    detail = pb.ErrorDetail()
    assert status.details[0].Unpack(detail)
    return err, detail


def as_metadata(headers: Mapping[str, str]) -> tuple:
    return tuple((name.lower(), value) for name, value in headers.items())


@pytest.mark.parametrize("form", list(ACCEPTED_FORMS))
def test_grpc_each_credential_form_is_accepted(
    enforced_stub: pb_grpc.BatchServiceStub, sim: SimAdmin, form: str
) -> None:
    batch_id = sim.seed("openai", new_id("batch_gacc"))

    answer = grpc_cancel(enforced_stub, batch_id, as_metadata(ACCEPTED_FORMS[form]))

    assert (answer.id, answer.status) == (batch_id, "cancelling")
    (call,) = upstream_calls(sim, batch_id)
    assert call["headers"]["Authorization"] == f"Bearer {OPENAI_KEY}"


GRPC_CODES = {
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_grpc_refusals_have_their_status_and_detail_and_never_reach_the_provider(
    enforced_stub: pb_grpc.BatchServiceStub, sim: SimAdmin, case: str
) -> None:
    headers, status, code = REFUSED[case]
    batch_id = sim.seed("openai", new_id("batch_gref"))

    err, detail = grpc_refusal(enforced_stub, batch_id, as_metadata(headers))

    assert err.code() == GRPC_CODES[status]
    assert (detail.is_bifrost_error, detail.status_code, detail.error.code) == (True, status, code)
    if code == "provider_blocked":
        assert detail.error.message == BLOCKED_MESSAGE == err.details()
    assert_never_reached(sim, batch_id)


def test_grpc_unknown_and_expired_keys_get_identical_answers(
    enforced_stub: pb_grpc.BatchServiceStub, sim: SimAdmin
) -> None:
    answers = []
    for vk in (VK_UNKNOWN, VK_INACTIVE, VK_EXPIRED):
        err, detail = grpc_refusal(enforced_stub, "batch_same_grpc_answer", (("x-bf-vk", vk),))
        answers.append((err.code(), err.details(), detail.SerializeToString(deterministic=True)))
    assert answers[0] == answers[1] == answers[2]


def test_grpc_rate_limit_is_resource_exhausted_with_retry_after(enforced: Stack, sim: SimAdmin) -> None:
    """Two calls through Envoy's port, the third on the service port: one limit per key (one worker)."""
    metadata = (("x-bf-vk", VK_LIMITED_GRPC),)
    with grpc.insecure_channel(f"127.0.0.1:{enforced.http_port}") as edge:
        stub = pb_grpc.BatchServiceStub(edge)
        for _ in range(2):
            batch_id = sim.seed("openai", new_id("batch_grl"))
            grpc_cancel(stub, batch_id, metadata)
        third = sim.seed("openai", new_id("batch_grl"))
        err, detail = grpc_refusal(stub, third, metadata)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (detail.status_code, detail.error.code) == (429, "rate_limited")
    assert 1 <= int(dict(err.initial_metadata())["retry-after"]) <= 60
    assert_never_reached(sim, third)
    with grpc.insecure_channel(f"127.0.0.1:{enforced.grpc_port}") as channel:
        err, detail = grpc_refusal(pb_grpc.BatchServiceStub(channel), third, metadata)
    assert (err.code(), detail.error.code) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limited")
    assert_never_reached(sim, third)


# --- the drop-in SDK routes ----------------------------------------------------------------------


def claude(enforced: Stack, api_key: str, http_client: httpx.Client) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=f"{enforced.http_url}/anthropic", api_key=api_key, max_retries=0, http_client=http_client
    )


@pytest.fixture(scope="module")
def sdk_http(enforced: Stack) -> Iterator[httpx.Client]:
    client = recording_httpx()
    yield client
    client.close()


def test_anthropic_sdk_with_a_virtual_key_as_x_api_key(enforced: Stack, sdk_http: httpx.Client, sim: SimAdmin) -> None:
    job = sim.seed("anthropic", f"msgbatch_{uuid.uuid4().hex[:12]}")

    batch = claude(enforced, VK_ALL, sdk_http).messages.batches.cancel(job)

    assert (batch.id, batch.processing_status) == (job, "canceling")
    calls = upstream_calls(sim, job)
    assert calls and {c["headers"]["x-api-key"] for c in calls} == {ANTHROPIC_KEY}
    assert VK_ALL not in json.dumps([c["headers"] for c in calls])


ANTHROPIC_SDK_REFUSALS = {
    "unknown": (VK_UNKNOWN, anthropic.AuthenticationError, 401, "virtual key not found"),
    "not a virtual key": (NON_VK_BEARER, anthropic.AuthenticationError, 401, None),
    "blocked": (
        VK_AZURE_ONLY,
        anthropic.PermissionDeniedError,
        403,
        "Provider 'anthropic' is not allowed for this virtual key",
    ),
}


@pytest.mark.parametrize(
    ("api_key", "error", "status", "message"), list(ANTHROPIC_SDK_REFUSALS.values()), ids=list(ANTHROPIC_SDK_REFUSALS)
)
def test_anthropic_sdk_refusals_in_anthropics_envelope(
    enforced: Stack, sdk_http: httpx.Client, sim: SimAdmin, api_key: str, error: type, status: int, message: str | None
) -> None:
    job = sim.seed("anthropic", f"msgbatch_{uuid.uuid4().hex[:12]}")

    with pytest.raises(error) as info:
        claude(enforced, api_key, sdk_http).messages.batches.cancel(job)

    assert info.value.status_code == status
    body = info.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == ("permission_error" if status == 403 else "authentication_error")
    if message is not None:
        assert body["error"]["message"] == message
    assert_never_reached(sim, job, "anthropic")


def genai_client(enforced: Stack, api_key: str) -> genai.Client:
    hooks = {"response": [_httpx_hook]}
    return genai.Client(
        api_key=api_key, http_options={"base_url": f"{enforced.http_url}/genai", "client_args": {"event_hooks": hooks}}
    )


def test_genai_sdk_with_a_virtual_key_as_x_goog_api_key(enforced: Stack, sim: SimAdmin) -> None:
    job = sim.seed("gemini", uuid.uuid4().hex[:12])

    client = genai_client(enforced, VK_ALL)  # held: the SDK closes its HTTP client when collected

    assert client.batches.cancel(name=f"batches/{job}") is None

    calls = upstream_calls(sim, job)
    assert calls and {c["headers"]["x-goog-api-key"] for c in calls} == {GEMINI_KEY}


GENAI_SDK_REFUSALS = {
    "inactive": (VK_INACTIVE, 401, "UNAUTHENTICATED"),
    "blocked": (VK_AZURE_ONLY, 403, "PERMISSION_DENIED"),
}


@pytest.mark.parametrize(
    ("api_key", "status", "grpc_name"), list(GENAI_SDK_REFUSALS.values()), ids=list(GENAI_SDK_REFUSALS)
)
def test_genai_sdk_refusals_in_googles_envelope(
    enforced: Stack, sim: SimAdmin, api_key: str, status: int, grpc_name: str
) -> None:
    job = sim.seed("gemini", uuid.uuid4().hex[:12])
    client = genai_client(enforced, api_key)

    with pytest.raises(genai_errors.ClientError) as info:
        client.batches.cancel(name=f"batches/{job}")

    assert (info.value.code, info.value.status) == (status, grpc_name)
    assert sim.calls(batch_id=job) == []


def bedrock_client(enforced: Stack, vk: str | None) -> Any:
    client = boto3.client(
        "bedrock",
        endpoint_url=f"{enforced.http_url}/bedrock",
        region_name="us-east-1",
        aws_access_key_id="AKIACALLER0000000000",
        aws_secret_access_key="caller/secret",
    )

    def add_vk(request: Any, **_: Any) -> None:
        request.headers["x-bf-vk"] = vk

    def record(http_response: Any, **_: Any) -> None:
        remember(http_response.status_code, http_response.headers, http_response.content)

    if vk is not None:
        client.meta.events.register_first("before-sign.bedrock.StopModelInvocationJob", add_vk)
    client.meta.events.register("after-call.bedrock.StopModelInvocationJob", record)
    return client


def test_boto3_with_a_virtual_key_in_x_bf_vk(enforced: Stack, sim: SimAdmin) -> None:
    job = sim.seed("bedrock", uuid.uuid4().hex[:12])

    answer = bedrock_client(enforced, VK_ALL).stop_model_invocation_job(jobIdentifier=job)

    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    calls = upstream_calls(sim, job)
    assert calls and all("Credential=AKIACALLER" not in c["headers"]["Authorization"] for c in calls)
    assert VK_ALL not in json.dumps([c["headers"] for c in calls])


BOTO3_REFUSALS = {"sigv4 only": (None, 401), "expired": (VK_EXPIRED, 401), "blocked": (VK_AZURE_ONLY, 403)}


@pytest.mark.parametrize(("vk", "status"), list(BOTO3_REFUSALS.values()), ids=list(BOTO3_REFUSALS))
def test_boto3_refusals_are_access_denied(enforced: Stack, sim: SimAdmin, vk: str | None, status: int) -> None:
    job = sim.seed("bedrock", uuid.uuid4().hex[:12])

    with pytest.raises(botocore.exceptions.ClientError) as info:
        bedrock_client(enforced, vk).stop_model_invocation_job(jobIdentifier=job)

    response = info.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert response["Error"]["Code"] == "AccessDeniedException"
    assert sim.calls(batch_id=job) == []


# === 3. the caller's own credentials and hop-by-hop headers never go upstream ====================

CALLER_HEADERS = {
    "Authorization": f"Bearer {VK_ALL}",
    "x-bf-vk": VK_ALL,
    "x-api-key": CALLER_X_API_KEY,
    "x-goog-api-key": CALLER_GOOG_KEY,
    "Cookie": f"session={COOKIE_SECRET}; theme=dark",
    "Proxy-Authorization": f"Basic {PROXY_AUTH_SECRET}",
    "Connection": "keep-alive, x-hop-marker",
    "Keep-Alive": "timeout=5, max=7",
    "TE": "trailers",
    "Upgrade": "x-upgrade-marker/1.0",
    "x-hop-marker": "hop-by-hop-marker-value",
}
CALLER_VALUES = (
    VK_ALL,
    CALLER_X_API_KEY,
    CALLER_GOOG_KEY,
    COOKIE_SECRET,
    PROXY_AUTH_SECRET,
    "x-hop-marker",
    "x-upgrade-marker",
    "timeout=5, max=7",
)
GATEWAY_AUTH = {
    "openai": ("Authorization", f"Bearer {OPENAI_KEY}"),
    "anthropic": ("x-api-key", ANTHROPIC_KEY),
    "gemini": ("x-goog-api-key", GEMINI_KEY),
}


def assert_only_the_gateways_credential(calls: list[dict], provider: str) -> None:
    assert calls
    name, value = GATEWAY_AUTH[provider]
    for call in calls:
        headers = {k.lower(): v for k, v in call["headers"].items()}
        assert headers[name.lower()] == value
        for gone in ("cookie", "proxy-authorization", "x-bf-vk", "upgrade", "keep-alive", "x-hop-marker"):
            assert gone not in headers, (gone, headers)
        if provider != "anthropic":
            assert "x-api-key" not in headers
        if provider != "gemini":
            assert "x-goog-api-key" not in headers
        if provider != "openai":
            assert "authorization" not in headers
        assert headers.get("te", "trailers") == "trailers"
        text = json.dumps(headers)
        assert [v for v in CALLER_VALUES if v in text] == []


@pytest.mark.parametrize("provider", list(GATEWAY_AUTH))
def test_rest_callers_credentials_and_hop_by_hop_headers_stay_at_the_gateway(
    enforced: Stack, sim: SimAdmin, provider: str
) -> None:
    batch_id = sim.seed(provider, f"hop{uuid.uuid4().hex[:12]}")
    conn = http.client.HTTPConnection("127.0.0.1", enforced.http_port, timeout=10)
    try:
        conn.request("POST", f"/v1/batches/{batch_id}/cancel?provider={provider}", headers=CALLER_HEADERS)
        resp = conn.getresponse()
        body = resp.read()
        remember(resp.status, resp.getheaders(), body)
    finally:
        conn.close()

    assert resp.status == 200, body
    assert_only_the_gateways_credential(upstream_calls(sim, batch_id), provider)


def test_grpc_callers_credentials_stay_at_the_gateway(enforced_stub: pb_grpc.BatchServiceStub, sim: SimAdmin) -> None:
    batch_id = sim.seed("openai", new_id("batch_ghop"))
    metadata = as_metadata(
        {k: v for k, v in CALLER_HEADERS.items() if k.lower() not in ("connection", "keep-alive", "te", "upgrade")}
    )

    grpc_cancel(enforced_stub, batch_id, metadata)

    assert_only_the_gateways_credential(upstream_calls(sim, batch_id), "openai")


# === 4./5. direct keys, over TLS ================================================================


@pytest.fixture(scope="module")
def https(direct: Stack, tls_files: tuple[Path, Path]) -> requests.Session:
    return recording_session(verify=str(tls_files[0]))


@pytest.mark.parametrize("form", ["bearer", "x-api-key"])
def test_direct_key_is_what_the_provider_receives(
    direct: Stack, https: requests.Session, sim: SimAdmin, form: str
) -> None:
    batch_id = sim.seed("openai", new_id("batch_dk"))
    headers = {"Authorization": f"Bearer {OPENAI_KEY}"} if form == "bearer" else {"x-api-key": OPENAI_KEY}

    resp = post(https, native(direct, batch_id), headers)

    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "cancelling"
    assert [c["headers"]["Authorization"] for c in upstream_calls(sim, batch_id)] == [f"Bearer {OPENAI_KEY}"]


def test_without_a_direct_key_the_configured_key_is_used(direct: Stack, https: requests.Session, sim: SimAdmin) -> None:
    batch_id = sim.seed("openai", new_id("batch_dk"))

    resp = post(https, native(direct, batch_id))

    assert resp.status_code == 401  # the simulator refuses the configured decoy key
    assert [c["headers"]["Authorization"] for c in upstream_calls(sim, batch_id)] == [f"Bearer {DECOY_OPENAI_KEY}"]


def test_wrong_direct_key_gets_the_providers_401(direct: Stack, https: requests.Session, sim: SimAdmin) -> None:
    batch_id = sim.seed("openai", new_id("batch_dk"))

    resp = post(https, native(direct, batch_id), {"Authorization": f"Bearer {WRONG_DIRECT_KEY}"})

    assert resp.status_code == 401
    body = resp.json()
    assert body["is_bifrost_error"] is False  # the provider's answer, not the gateway's
    assert body["error"]["code"] == "invalid_api_key"
    assert body["error"]["message"].startswith("Incorrect API key provided: sk-...")
    assert WRONG_DIRECT_KEY not in resp.text
    assert [c["headers"]["Authorization"] for c in upstream_calls(sim, batch_id)] == [f"Bearer {WRONG_DIRECT_KEY}"]
    assert sim.batch("openai", batch_id)["status"] == "in_progress"


def test_anthropic_sdk_direct_key_over_https(direct: Stack, tls_files: tuple[Path, Path], sim: SimAdmin) -> None:
    job = sim.seed("anthropic", f"msgbatch_{uuid.uuid4().hex[:12]}")
    with recording_httpx(verify=ssl.create_default_context(cafile=str(tls_files[0]))) as http_client:
        client = anthropic.Anthropic(
            base_url=f"{direct.http_url}/anthropic", api_key=ANTHROPIC_KEY, max_retries=0, http_client=http_client
        )
        batch = client.messages.batches.cancel(job)
    assert batch.processing_status == "canceling"
    calls = upstream_calls(sim, job)
    assert calls and {c["headers"]["x-api-key"] for c in calls} == {ANTHROPIC_KEY}


def test_rest_edge_serves_https_only(direct: Stack, tls_files: tuple[Path, Path]) -> None:
    assert direct.http_url.startswith("https://")
    resp = requests.get(f"{direct.http_url}/health", verify=str(tls_files[0]), timeout=5)
    remember(resp.status_code, resp.headers, resp.content)
    assert resp.status_code == 200
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{direct.http_port}/health", timeout=5)
    with pytest.raises(requests.exceptions.SSLError):  # a certificate nobody trusts by default
        requests.get(f"{direct.http_url}/health", timeout=5)


@pytest.mark.parametrize("port", ["envoy", "service"])
def test_grpc_over_tls_with_a_direct_key(direct: Stack, tls_files: tuple[Path, Path], sim: SimAdmin, port: str) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=tls_files[0].read_bytes())
    target = f"127.0.0.1:{direct.http_port if port == 'envoy' else direct.grpc_port}"
    batch_id = sim.seed("openai", new_id("batch_gtls"))
    with grpc.secure_channel(target, credentials) as channel:
        answer = grpc_cancel(pb_grpc.BatchServiceStub(channel), batch_id, (("authorization", f"Bearer {OPENAI_KEY}"),))
    assert (answer.id, answer.status) == (batch_id, "cancelling")
    assert [c["headers"]["Authorization"] for c in upstream_calls(sim, batch_id)] == [f"Bearer {OPENAI_KEY}"]


@pytest.mark.parametrize("port", ["envoy", "service"])
def test_plaintext_grpc_to_a_tls_port_fails(direct: Stack, sim: SimAdmin, port: str) -> None:
    target = f"127.0.0.1:{direct.http_port if port == 'envoy' else direct.grpc_port}"
    batch_id = sim.seed("openai", new_id("batch_gplain"))
    with grpc.insecure_channel(target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.BatchServiceStub(channel).Cancel(
                pb.CancelBatchRequest(batch_id=batch_id, provider="openai"),
                metadata=(("authorization", f"Bearer {OPENAI_KEY}"),),
                timeout=3,
            )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert sim.calls(batch_id=batch_id) == []


# === 6. no secret anywhere ======================================================================


@pytest.mark.parametrize(
    ("field", "config"),
    [
        (
            "governance.virtual_keys[0].value",
            {"governance": {"virtual_keys": [{"id": "a", "value": "env.BATCHGATE_E2E_MISSING_VK"}]}},
        ),
        (
            "auth_config.admin_password",
            {
                "auth_config": {
                    "is_enabled": True,
                    "admin_username": "admin",
                    "admin_password": "env.BATCHGATE_E2E_MISSING_PW",
                }
            },
        ),
    ],
    ids=["virtual key value", "admin password"],
)
def test_missing_env_var_for_an_access_secret_fails_at_start(tmp_path: Path, field: str, config: dict) -> None:
    """(tests/e2e/test_launcher.py covers a provider key; these are the access-control secrets.)"""
    variable = json.dumps(config).split("env.", 1)[1].split('"', 1)[0]
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"providers": {"openai": {"keys": [{"value": "sk-x"}]}}, **config}))
    env = launcher_env(CONFIG=str(path))
    env.pop(variable, None)

    done = subprocess.run(
        [sys.executable, "-m", "gateway.run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )

    assert done.returncode != 0
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert lines == [f"batchgate: config error: {field}: environment variable {variable} is not set"]
    assert not port_open(int(env["HTTP_PORT"]))


def enforced_tour(gateway: Stack, sim: SimAdmin) -> int:
    """Every way in to the enforced gateway, each scenario with its own assertions (the tests above,
    run against `gateway`): credential forms, scopes, key_ids, every provider with raw answers, a
    session token, each refusal, a rate limit, the four SDKs, native gRPC through Envoy and on the
    service port, the caller's own credentials. Returns how many scenarios ran."""
    scenarios = 0
    rest = recording_session()
    for form in ACCEPTED_FORMS:
        test_rest_each_credential_form_is_accepted(gateway, rest, sim, form)
    test_rest_virtual_key_scoped_to_azure_may_cancel_on_azure(gateway, rest, sim)
    test_rest_virtual_key_limits_the_configured_keys_used(gateway, rest, sim)
    for provider in PROVIDERS:
        if provider not in NO_BATCH_CANCEL:
            test_rest_all_providers_virtual_key_works_on_every_provider(gateway, rest, sim, provider)
            scenarios += 1
    test_rest_bedrock_key_with_a_session_token_is_signed_with_it(gateway, rest, sim)
    for case in REFUSED:
        test_rest_refusals_have_their_status_and_code_and_never_reach_the_provider(gateway, rest, sim, case)
    test_rest_unknown_inactive_and_expired_keys_get_identical_answers(gateway, rest, sim)
    test_rest_rate_limit_answers_429_with_retry_after_on_the_third_call(gateway, rest, sim)
    scenarios += len(ACCEPTED_FORMS) + len(REFUSED) + 5
    with recording_httpx() as client:
        test_openai_sdk_with_a_virtual_key(gateway, client, sim)
        for args in OPENAI_SDK_REFUSALS.values():
            test_openai_sdk_refusals(gateway, client, sim, *args)
        test_anthropic_sdk_with_a_virtual_key_as_x_api_key(gateway, client, sim)
        for args in ANTHROPIC_SDK_REFUSALS.values():
            test_anthropic_sdk_refusals_in_anthropics_envelope(gateway, client, sim, *args)
    test_genai_sdk_with_a_virtual_key_as_x_goog_api_key(gateway, sim)
    for args in GENAI_SDK_REFUSALS.values():
        test_genai_sdk_refusals_in_googles_envelope(gateway, sim, *args)
    test_boto3_with_a_virtual_key_in_x_bf_vk(gateway, sim)
    for args in BOTO3_REFUSALS.values():
        test_boto3_refusals_are_access_denied(gateway, sim, *args)
    scenarios += 4 + len(OPENAI_SDK_REFUSALS) + len(ANTHROPIC_SDK_REFUSALS) + len(GENAI_SDK_REFUSALS)
    scenarios += len(BOTO3_REFUSALS)
    for port in (gateway.http_port, gateway.grpc_port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.BatchServiceStub(channel)
            for form in ACCEPTED_FORMS:
                test_grpc_each_credential_form_is_accepted(stub, sim, form)
            for case in REFUSED:
                test_grpc_refusals_have_their_status_and_detail_and_never_reach_the_provider(stub, sim, case)
            test_grpc_unknown_and_expired_keys_get_identical_answers(stub, sim)
            test_grpc_callers_credentials_stay_at_the_gateway(stub, sim)
            scenarios += len(ACCEPTED_FORMS) + len(REFUSED) + 2
    test_grpc_rate_limit_is_resource_exhausted_with_retry_after(gateway, sim)
    for provider in GATEWAY_AUTH:
        test_rest_callers_credentials_and_hop_by_hop_headers_stay_at_the_gateway(gateway, sim, provider)
    return scenarios + 1 + len(GATEWAY_AUTH)


def direct_tour(gateway: Stack, tls_files: tuple[Path, Path], sim: SimAdmin) -> int:
    """Every way a caller's own key goes through the direct-key gateway, over TLS. Returns how many
    scenarios ran."""
    https = recording_session(verify=str(tls_files[0]))
    for form in ("bearer", "x-api-key"):
        test_direct_key_is_what_the_provider_receives(gateway, https, sim, form)
    test_without_a_direct_key_the_configured_key_is_used(gateway, https, sim)
    test_wrong_direct_key_gets_the_providers_401(gateway, https, sim)
    test_anthropic_sdk_direct_key_over_https(gateway, tls_files, sim)
    test_rest_edge_serves_https_only(gateway, tls_files)
    for port in ("envoy", "service"):
        test_grpc_over_tls_with_a_direct_key(gateway, tls_files, sim, port)
    return 8


def test_no_secret_appears_in_any_log_metric_or_answer(
    stack: Stack, tls_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory, sim: SimAdmin
) -> None:
    """Stands alone: starts its own two gateways, drives every scenario of this module through them
    (each with its assertions, so one that did not happen fails here), scrapes /metrics, stops them
    (flushing their logs and spans) and searches everything they wrote or answered, and what the
    sandbox logged meanwhile, for every known secret."""
    sandbox_logs = sorted(p for p in stack.log_dir.glob("sandbox*") if p.is_file())
    sandbox_from = {p: p.stat().st_size for p in sandbox_logs}
    SEEN.clear()
    enforced_gateway = new_stack(
        enforced_config(stack.sandbox_url), tmp_path_factory.mktemp("leak-enforced"), metrics_port=free_port()
    )
    direct_gateway = new_stack(
        direct_config(stack.sandbox_url),
        tmp_path_factory.mktemp("leak-direct"),
        tls_cert=tls_files[0],
        tls_key=tls_files[1],
    )
    try:
        enforced_gateway.start()
        direct_gateway.start()
        scenarios = enforced_tour(enforced_gateway, sim) + direct_tour(direct_gateway, tls_files, sim)
        metrics = requests.get(f"http://127.0.0.1:{enforced_gateway.metrics_port}/metrics", timeout=5).text
    finally:
        enforced_gateway.stop()
        direct_gateway.stop()
    assert scenarios == 90, f"{scenarios} scenarios ran: change this count with the tours"
    assert len(SEEN) >= scenarios  # every answer was kept for the search
    assert "batchgate_requests_total" in metrics
    assert "caller=" not in metrics

    known = {
        *provider_secrets(enforced_config(stack.sandbox_url)),
        *provider_secrets(direct_config(stack.sandbox_url)),
        *VIRTUAL_KEYS,
        VK_UNKNOWN,
        ADMIN_PASSWORD,
        WRONG_ADMIN_PASSWORD,
        WRONG_DIRECT_KEY,
        NON_VK_BEARER,
        COOKIE_SECRET,
        PROXY_AUTH_SECRET,
        CALLER_X_API_KEY,
        CALLER_GOOG_KEY,
        basic(ADMIN_USER, ADMIN_PASSWORD).split()[1],
        basic(ADMIN_USER, WRONG_ADMIN_PASSWORD).split()[1],
    }
    assert OPENAI_KEY in known and SECOND_OPENAI_KEY in known and DECOY_OPENAI_KEY in known
    assert BEDROCK_SESSION_TOKEN in known
    files = sorted(p for g in (enforced_gateway, direct_gateway) for p in g.log_dir.rglob("*") if p.is_file())
    roles = {p.name for p in files}
    assert {"service.log", "envoy.log"} <= roles, roles
    texts = {str(p): p.read_text(errors="replace") for p in files}
    for path, offset in sandbox_from.items():
        with open(path, "rb") as log:
            log.seek(offset)
            texts[str(path)] = log.read().decode(errors="replace")
    service_logs = "".join(text for path, text in texts.items() if path.endswith("service.log"))
    # The logs being searched do hold the run: access lines for the callers, spans from the exporter.
    assert '"caller":"vk:all"' in service_logs and '"caller":"admin"' in service_logs
    assert '"level":"debug"' in service_logs and '"trace_id"' in service_logs  # DEBUG lines and spans
    assert '"logger":"botocore.auth"' in service_logs  # SigV4 signing happened with DEBUG on
    texts["/metrics"] = metrics
    texts.update({f"answer #{i}": text for i, text in enumerate(SEEN)})
    leaks = sorted(
        {(where, secret[:12] + "...") for where, text in texts.items() for secret in known if secret in text}
    )
    assert leaks == []
