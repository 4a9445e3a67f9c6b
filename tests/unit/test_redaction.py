"""Secrets masked in what providers say and in the logs (service.infra.redaction): which secrets a
config holds, how they are found in text, bytes and headers, and the log formatters' last guard."""

from __future__ import annotations

import json
import logging

from service.infra.observability import JsonFormatter, TextFormatter, redact_logs
from service.infra.providers.base import UpstreamRequest, UpstreamResponse
from service.infra.providers.catalog import parse_config
from service.infra.redaction import Redactor, config_secrets, request_credentials
from service.runtime.build import Collaborators, build_providers
from tests.support import config_dict

PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDQ3example0001\n"
    "aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789+/aBcDeFgHiJkLmNoPqRsTuVw02\n"
    "-----END PRIVATE KEY-----\n"
)
SECRETS = {
    "OPENAI": "sk-test-openai-aaaaaaaa1111",
    "AWS_ACCESS": "AKIAEXAMPLEACCESS01",
    "AWS_SECRET": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS_SESSION": "FwoGZXIvYXdzEXAMPLESESSIONTOKEN0123456789",
    "VK": "sk-bf-unit-redaction-team-0001",
    "ADMIN": "admin-password-0123",
    "REDIS": "redis-password-4567",
}


def full_config():
    data = config_dict("http://127.0.0.1:9")
    data["providers"]["bedrock"] = {
        "keys": [
            {
                "name": "aws",
                "use_for_batch_api": True,
                "bedrock_key_config": {
                    "access_key": SECRETS["AWS_ACCESS"],
                    "secret_key": SECRETS["AWS_SECRET"],
                    "session_token": SECRETS["AWS_SESSION"],
                    "region": "us-east-1",
                },
            }
        ]
    }
    data["providers"]["vertex"] = {
        "keys": [
            {
                "name": "gcp",
                "use_for_batch_api": True,
                "vertex_key_config": {
                    "project_id": "p",
                    "region": "us-central1",
                    "auth_credentials": {
                        "type": "service_account",
                        "client_email": "svc@p.iam.gserviceaccount.com",
                        "private_key_id": "0123456789abcdef0123",
                        "private_key": PEM,
                        "token_uri": "https://oauth2.googleapis.com/token",
                    },
                },
            }
        ]
    }
    data["governance"] = {
        "virtual_keys": [{"id": "team", "value": SECRETS["VK"], "provider_configs": [{"provider": "openai"}]}],
        "store": {"type": "redis", "url": f"redis://:{SECRETS['REDIS']}@127.0.0.1:6379/0"},
    }
    data["auth_config"] = {"is_enabled": True, "admin_username": "admin", "admin_password": SECRETS["ADMIN"]}
    data["providers"]["openai"]["keys"][0]["value"] = SECRETS["OPENAI"]
    return parse_config(data, {})


def test_every_secret_of_a_config_is_masked_and_nothing_else() -> None:
    redactor = Redactor(config_secrets(full_config()))
    first_line = PEM.splitlines()[1]
    # The private key as a JSON document carries it, and its first line of key material alone.
    pem_forms = [json.dumps(PEM)[1:-1], PEM, first_line]
    text = " | ".join([*SECRETS.values(), *pem_forms, "0123456789abcdef0123", "svc@p.iam.gserviceaccount.com"])
    masked = redactor.text(text)
    for secret in [*SECRETS.values(), first_line, "0123456789abcdef0123"]:
        assert secret not in masked
    assert "svc@p.iam.gserviceaccount.com" in masked  # an address is not a secret
    assert masked.count("***") == len(SECRETS) + len(pem_forms) + 1


def test_bytes_headers_and_json_escapes() -> None:
    redactor = Redactor(["sk-test-openai-aaaaaaaa1111", "a/b/c/d/e/f/secret"])
    body = json.dumps({"error": {"message": "Incorrect API key provided: sk-test-openai-aaaaaaaa1111"}}).encode()
    assert b"sk-test" not in redactor.data(body) and json.loads(redactor.data(body))
    assert redactor.data(b'{"k": "a\\/b\\/c\\/d\\/e\\/f\\/secret"}') == b'{"k": "***"}'
    untouched = {"x-request-id": "abc"}
    assert redactor.headers(untouched) is untouched
    assert redactor.headers({"www-authenticate": "key sk-test-openai-aaaaaaaa1111"}) == {"www-authenticate": "key ***"}


def test_short_values_are_not_secrets_to_search_for() -> None:
    redactor = Redactor(["pw", "", "1234567"])
    assert not redactor and redactor.text("a pw of 1234567") == "a pw of 1234567"


def test_a_request_adds_the_credentials_it_carried() -> None:
    base = Redactor(["sk-test-openai-aaaaaaaa1111"])
    headers = {"Authorization": "Bearer sk-callers-own-direct-key-99", "x-goog-api-key": "AIzaSyEXAMPLE0123456"}
    assert request_credentials(headers) == ["sk-callers-own-direct-key-99", "AIzaSyEXAMPLE0123456"]
    redactor = base.with_secrets(request_credentials(headers))
    assert redactor.text("bad key sk-callers-own-direct-key-99 / AIzaSyEXAMPLE0123456") == "bad key *** / ***"
    # Credentials the config already holds make no new redactor; a SigV4 signature is no secret.
    assert base.with_secrets(request_credentials({"authorization": "Bearer sk-test-openai-aaaaaaaa1111"})) is base
    assert request_credentials({"Authorization": "AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=ab"}) == []


def test_log_lines_pass_through_the_current_redactor() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "provider said %s", ("sk-bf-unit-log-0001",), None)
    record.fields = {"error": "Incorrect API key provided: sk-bf-unit-log-0001"}
    redact_logs(Redactor(["sk-bf-unit-log-0001"]).text)
    try:
        for formatter in (JsonFormatter(), TextFormatter("%(message)s")):
            line = formatter.format(record)
            assert "sk-bf-unit-log-0001" not in line and "***" in line
    finally:
        redact_logs(None)


async def test_every_exchange_with_a_provider_masks_what_the_provider_says() -> None:
    """Cancels, reads and listing pages all go through `Provider.send`, never the executor alone."""

    class Echo:
        """A provider that echoes the credential it was sent, in its body and a header."""

        breaker = None

        async def send(self, request, deadline, record=None):
            seen = request.headers["Authorization"]
            return UpstreamResponse(401, {"www-authenticate": seen}, json.dumps({"error": seen}).encode())

        async def close(self) -> None:
            pass

    data = config_dict("http://127.0.0.1:9")
    data["operations"] = {"notify_urls": ["https://hooks.example.com/"], "notify_secret": "webhook-secret-0123"}
    config = parse_config(data, {})
    assert "webhook-secret-0123" in config_secrets(config)
    provider = build_providers(config, Collaborators(executor=lambda name, pc, breaker: Echo()), {})["openai"]
    key = config.providers["openai"].keys[0].value
    for credential in (key, "sk-a-callers-own-direct-key"):
        request = UpstreamRequest("GET", "http://127.0.0.1:9/v1/batches", {"Authorization": f"Bearer {credential}"})
        answer = await provider.send(request, 0.0)
        assert credential not in answer.body.decode() and credential not in answer.headers["www-authenticate"]
        assert json.loads(answer.body) == {"error": "Bearer ***"}
