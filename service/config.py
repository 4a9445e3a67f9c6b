"""Loads and checks a Bifrost-style config.json.

Only the subset batchgate uses is read; anything malformed fails at start with one `ConfigError`
line that names the field (`providers.openai.keys[0].value: ...`), never with a traceback.
String values of the form `env.NAME` are read from the environment.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A config problem, with the path of the offending field in the message."""


@dataclass(frozen=True, slots=True)
class AzureKeyConfig:
    endpoint: str
    api_version: str = "2024-10-21"


@dataclass(frozen=True, slots=True)
class VertexKeyConfig:
    project_id: str
    region: str
    # Service-account JSON (its `token_uri` is where access tokens are minted).
    auth_credentials: dict = field(repr=False)


@dataclass(frozen=True, slots=True)
class BedrockKeyConfig:
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    region: str
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Key:
    id: str
    name: str
    value: str = field(repr=False)
    weight: float = 1.0
    enabled: bool = True
    use_for_batch_api: bool = False
    azure: AzureKeyConfig | None = None
    vertex: VertexKeyConfig | None = None
    bedrock: BedrockKeyConfig | None = None
    # Fireworks batch jobs live under an account: `fireworks_key_config.account_id`.
    account_id: str | None = None


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    base_url: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 30.0
    max_retries: int = 2
    retry_backoff_initial_ms: int = 100
    retry_backoff_max_ms: int = 2000


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    keys: tuple[Key, ...]
    network: NetworkConfig = NetworkConfig()
    send_back_raw_response: bool = False
    concurrency: int = 1000

    @property
    def batch_keys(self) -> tuple[Key, ...]:
        """Keys a batch call may use, in the stable order they are tried."""
        return tuple(k for k in self.keys if k.enabled and k.use_for_batch_api)


@dataclass(frozen=True, slots=True)
class ClientConfig:
    allow_per_request_raw_override: bool = False
    allow_direct_keys: bool = False
    enforce_auth_on_inference: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    client: ClientConfig = ClientConfig()
    providers: dict[str, ProviderConfig] = field(default_factory=dict)


class _Reader:
    """Typed access to one JSON object, with the field path for error messages."""

    def __init__(self, data: Any, path: str, env: os._Environ | dict) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{path or 'config'}: expected an object, got {type(data).__name__}")
        self.data, self.path, self.env = data, path, env

    def where(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = self.data.get(name, default)
        if value is None:
            return default
        if kind in (int, float) and isinstance(value, bool):
            raise ConfigError(f"{self.where(name)}: expected a number")
        if kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, kind):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ConfigError(f"{self.where(name)}: expected {expected}, got {type(value).__name__}")
        return value

    def secret(self, name: str, *, required: bool) -> str:
        value = self.get(name, str, "")
        if value.startswith("env."):
            var = value[4:]
            if not var or var not in self.env:
                raise ConfigError(f"{self.where(name)}: environment variable {var or '(empty)'} is not set")
            value = self.env[var]
        if required and not value:
            raise ConfigError(f"{self.where(name)}: must not be empty")
        return value

    def child(self, name: str) -> _Reader:
        return _Reader(self.data.get(name) or {}, self.where(name), self.env)


def _base_url(value: str, where: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: must be an http(s) URL with a host, got {value!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{where}: must not carry a query, fragment or credentials")
    return value.rstrip("/")


def _vertex(reader: _Reader) -> VertexKeyConfig:
    # A JSON object, or a string holding one (literal or env.VAR).
    creds = reader.data.get("auth_credentials")
    if isinstance(creds, str):
        creds = reader.secret("auth_credentials", required=True)
        try:
            creds = json.loads(creds)
        except json.JSONDecodeError:
            raise ConfigError(f"{reader.where('auth_credentials')}: not a service-account JSON document") from None
    if not isinstance(creds, dict) or not {"client_email", "private_key", "token_uri"} <= creds.keys():
        raise ConfigError(
            f"{reader.where('auth_credentials')}: needs a service-account JSON with client_email, private_key, token_uri"
        )
    return VertexKeyConfig(
        project_id=reader.secret("project_id", required=True),
        region=reader.secret("region", required=True),
        auth_credentials=creds,
    )


def _bedrock(reader: _Reader) -> BedrockKeyConfig:
    return BedrockKeyConfig(
        access_key=reader.secret("access_key", required=True),
        secret_key=reader.secret("secret_key", required=True),
        session_token=reader.secret("session_token", required=False) or None,
        region=reader.secret("region", required=True),
    )


def _key(reader: _Reader, provider: str, index: int) -> Key:
    name = reader.get("name", str, "") or f"{provider}-key-{index}"
    azure = vertex = bedrock = account_id = None
    if provider == "azure":
        az = reader.child("azure_key_config")
        endpoint = az.secret("endpoint", required=True)
        azure = AzureKeyConfig(
            endpoint=_base_url(endpoint, az.where("endpoint")),
            api_version=az.secret("api_version", required=False) or "2024-10-21",
        )
    elif provider == "vertex":
        vertex = _vertex(reader.child("vertex_key_config"))
    elif provider == "bedrock":
        bedrock = _bedrock(reader.child("bedrock_key_config"))
    elif provider == "fireworks":
        account_id = reader.child("fireworks_key_config").secret("account_id", required=True)
    weight = reader.get("weight", float, 1.0)
    if weight < 0:
        raise ConfigError(f"{reader.where('weight')}: must not be negative")
    # Vertex and Bedrock authenticate with their key configs; `value` is optional there.
    value_required = provider not in ("vertex", "bedrock")
    return Key(
        id=reader.get("id", str, "") or name,
        name=name,
        value=reader.secret("value", required=value_required),
        weight=weight,
        enabled=reader.get("enabled", bool, True),
        use_for_batch_api=reader.get("use_for_batch_api", bool, False),
        azure=azure,
        vertex=vertex,
        bedrock=bedrock,
        account_id=account_id,
    )


def _network(reader: _Reader) -> NetworkConfig:
    base_url = reader.get("base_url", str, "") or None
    if base_url:
        base_url = _base_url(base_url, reader.where("base_url"))
    headers = reader.get("extra_headers", dict, {})
    for name, value in headers.items():
        if not isinstance(value, str) or not name or any(c in name + value for c in "\r\n\0"):
            raise ConfigError(f"{reader.where('extra_headers')}.{name}: must be a single-line string")
    numbers = {
        "timeout_s": reader.get("default_request_timeout_in_seconds", (int, float), 30),
        "max_retries": reader.get("max_retries", int, 2),
        "retry_backoff_initial_ms": reader.get("retry_backoff_initial_ms", int, 100),
        "retry_backoff_max_ms": reader.get("retry_backoff_max_ms", int, 2000),
    }
    for name, value in numbers.items():
        if value < 0 or (name == "timeout_s" and value == 0):
            raise ConfigError(f"{reader.path}: {name} must be positive")
    return NetworkConfig(base_url=base_url, extra_headers=dict(headers), **numbers)


def parse_config(data: Any, env: os._Environ | dict | None = None) -> Config:
    # Imported here: the registry imports provider modules, which import this module.
    from service.providers.registry import KNOWN_PROVIDERS

    root = _Reader(data, "", os.environ if env is None else env)
    client = root.child("client")
    providers: dict[str, ProviderConfig] = {}
    provs = root.child("providers")
    for name in provs.data:
        if name not in KNOWN_PROVIDERS:
            raise ConfigError(f"providers.{name}: unknown provider (known: {', '.join(sorted(KNOWN_PROVIDERS))})")
        p = provs.child(name)
        keys = p.get("keys", list, [])
        concurrency = p.child("concurrency_and_buffer_size").get("concurrency", int, 1000)
        if concurrency < 1:
            raise ConfigError(f"providers.{name}.concurrency_and_buffer_size.concurrency: must be at least 1")
        providers[name] = ProviderConfig(
            name=name,
            keys=tuple(_key(_Reader(k, f"{p.where('keys')}[{i}]", root.env), name, i) for i, k in enumerate(keys)),
            network=_network(p.child("network_config")),
            send_back_raw_response=p.get("send_back_raw_response", bool, False),
            concurrency=concurrency,
        )
    return Config(
        client=ClientConfig(
            allow_per_request_raw_override=client.get("allow_per_request_raw_override", bool, False),
            allow_direct_keys=client.get("allow_direct_keys", bool, False),
            enforce_auth_on_inference=client.get("enforce_auth_on_inference", bool, False),
        ),
        providers=providers,
    )


def load_config(path: str | Path, env: os._Environ | dict | None = None) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    return parse_config(data, env)
