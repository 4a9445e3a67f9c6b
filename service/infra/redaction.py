"""Secrets out of everything a provider says and everything batchgate logs.

A provider may echo a key back ("Incorrect API key provided: sk-..."), in an error or in a 200 body;
that text becomes error messages, `raw_response` and log lines. One `Redactor` is built per loaded
config from every secret in it (provider keys and their key blocks' secret fields, virtual keys,
the admin password, the rate-limit store's password) and applied where provider text enters: each
upstream answer's body and headers, before anything parses them (service.usecases.cancel), with
the credentials that very request carried added (a caller's direct key, a minted OAuth token).
Log lines pass through the current one as a last guard (service.infra.observability).

A secret shorter than MIN_SECRET_LENGTH is not searched for: it would match ordinary text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from service.config.file import Config

MIN_SECRET_LENGTH = 8
MASK = "***"

# Request headers that carry a credential; their values are secrets for the answer to that request.
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "x-goog-api-key", "x-amz-security-token"})


def _variants(secret: str) -> Iterable[str]:
    """The secret as it may appear in a JSON document: itself, and with `/` escaped. Of a multi-line
    value (a PEM private key) also its JSON form (`\\n` for each line break) and its first line of
    key material, which any echo of the key carries (searching every line would cost each answer
    a search per line)."""
    yield secret
    if "/" in secret:
        yield secret.replace("/", "\\/")
    if "\n" in secret:
        yield secret.replace("\n", "\\n")
        yield next((line.strip() for line in secret.splitlines() if line.strip() and "-----" not in line), "")


class Redactor:
    """Masks a fixed set of secrets. Longest first, so a secret that contains another goes whole."""

    __slots__ = ("_secrets", "_latin")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        found = {v for s in secrets if s for v in _variants(s) if len(v) >= MIN_SECRET_LENGTH}
        self._secrets = tuple(sorted(found, key=len, reverse=True))
        # Each secret's UTF-8 bytes read as Latin-1 (one character per byte): bytes are searched
        # as such a string, which is faster than searching bytes.
        self._latin = tuple(s.encode("utf-8", "surrogatepass").decode("latin-1") for s in self._secrets)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def with_secrets(self, secrets: Iterable[str]) -> Redactor:
        """This redactor plus `secrets` (e.g. the credentials of one request)."""
        extra = [s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH and s not in self._secrets]
        return Redactor((*self._secrets, *extra)) if extra else self

    def text(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def data(self, data: bytes) -> bytes:
        text = data.decode("latin-1")
        found = False
        for secret in self._latin:
            if secret in text:
                text, found = text.replace(secret, MASK), True
        return text.encode("latin-1") if found else data

    def headers(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        """`headers` unchanged when no value holds a secret, else a copy with the secrets masked."""
        values = "\n".join(headers.values())
        if not any(secret in values for secret in self._secrets):
            return headers
        return {name: self.text(value) for name, value in headers.items()}


def request_credentials(headers: Mapping[str, str]) -> list[str]:
    """The credentials a request carries: the values of its credential headers (of `Authorization:
    Bearer <token>` the token; a SigV4 signature is no secret, its access key is in the config)."""
    found = []
    for name, value in headers.items():
        lowered = name.lower()
        if lowered not in CREDENTIAL_HEADERS or not value:
            continue
        if lowered == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.isalpha() and token.strip():
                found.append(token.strip())
        else:
            found.append(value)
    return found


def config_secrets(config: Config) -> list[str]:
    """Every secret a config holds: provider keys and their key blocks' secrets, virtual keys, the
    gateway password, the webhook secret, the Redis password."""
    found: list[str] = []
    for provider in config.providers.values():
        for key in provider.keys:
            found.append(key.value)
            found.extend(secret_fields(key.settings))
    found.extend(vk.value for vk in config.virtual_keys)
    found.append(config.auth.admin_password)
    found.append(config.operations.notify_secret)  # the webhook signature's key
    if config.store.url:
        parts = urlsplit(config.store.url)
        found.extend(s for s in (parts.password, unquote(parts.password or "")) if s)
    return found


# In a credentials document (a service account's JSON): the entries that are secrets.
_SECRET_ENTRY_SUFFIXES = ("key", "key_id", "secret", "token", "password")


def secret_fields(settings: Any) -> list[str]:
    """The secrets of a key's provider block: every field declared `repr=False` (what a key settings
    dataclass hides from its repr: Bedrock's access key, secret key and session token), and in such
    a field holding a document (Vertex's service account) the entries named like secrets
    (`private_key`, `private_key_id`, `client_secret`, ...)."""
    if settings is None or not dataclasses.is_dataclass(settings):
        return []
    found: list[str] = []
    for f in dataclasses.fields(settings):
        if f.repr:
            continue
        value = getattr(settings, f.name)
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, Mapping):
            found.extend(
                entry
                for name, entry in value.items()
                if isinstance(entry, str) and name.endswith(_SECRET_ENTRY_SUFFIXES)
            )
    return found
