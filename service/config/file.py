"""Loads and checks a Bifrost-style config.json.

Only the subset batchgate uses is read; anything malformed fails at start with one `ConfigError`
line that names the field (`providers.openai.keys[0].value: ...`), never with a traceback.
String values of the form `env.NAME` are read from the environment.

Config names no provider: which providers exist and how each one's keys are read (its
`*_key_config` block) come in as `KeySchema`s from the layer above (`service.infra.providers.catalog`,
whose `parse_config`/`load_config` are the ones to call).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from service.config.governance import (
    AuthConfig,
    RateLimit,
    StoreConfig,
    VirtualKey,
    parse_auth,
    parse_store,
    parse_virtual_keys,
)
from service.config.operations import OperationsConfig, parse_operations
from service.config.reader import ConfigError, ConfigReader, http_url

# Re-exported: the config's types are all read from here.
__all__ = [
    "AuthConfig",
    "ClientConfig",
    "Config",
    "ConfigError",
    "ConfigReader",
    "Key",
    "KeySchema",
    "NetworkConfig",
    "OperationsConfig",
    "ProviderConfig",
    "RateLimit",
    "StoreConfig",
    "VirtualKey",
    "config_version",
    "http_url",
    "load_config",
    "parse_config",
    "parse_config_bytes",
    "read_config",
]


@dataclass(frozen=True, slots=True)
class Key:
    id: str
    name: str
    value: str = field(repr=False)
    weight: float = 1.0
    enabled: bool = True
    use_for_batch_api: bool = False
    # The provider's own key settings (its `*_key_config` block), parsed by its adapter's
    # `KeySchema` (an Azure endpoint, a Vertex service account, Bedrock's AWS credentials); None
    # for providers that have none.
    settings: Any = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    base_url: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 30.0
    max_retries: int = 2
    retry_backoff_initial_ms: int = 100
    retry_backoff_max_ms: int = 2000
    # Circuit breaker (batchgate's own addition): opens after this many consecutive failures.
    breaker_failure_threshold: int = 5
    breaker_open_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    keys: tuple[Key, ...]
    network: NetworkConfig = NetworkConfig()
    send_back_raw_response: bool = False
    concurrency: int = 1000
    buffer_size: int = 5000
    # The provider's API version where it has one (Anthropic: the `anthropic-version` header).
    api_version: str | None = None

    @property
    def batch_keys(self) -> tuple[Key, ...]:
        """Keys a batch call may use, in the order they are tried: higher `weight` first (the key
        carrying most traffic most likely owns the batch), config order among equal weights."""
        usable = (k for k in self.keys if k.enabled and k.use_for_batch_api)
        return tuple(sorted(usable, key=lambda k: -k.weight))


@dataclass(frozen=True, slots=True)
class ClientConfig:
    allow_per_request_raw_override: bool = False
    allow_direct_keys: bool = False
    enforce_auth_on_inference: bool = False
    # An open gateway (no virtual keys required, no admin credentials) only listens on loopback
    # unless this is set.
    allow_unauthenticated_public: bool = False
    # Upstream calls (cancels and reads) one bulk cancel may have in flight at once.
    bulk_concurrency: int = 16


@dataclass(frozen=True, slots=True)
class Config:
    client: ClientConfig = ClientConfig()
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    virtual_keys: tuple[VirtualKey, ...] = ()
    auth: AuthConfig = AuthConfig()
    store: StoreConfig = StoreConfig()
    operations: OperationsConfig = OperationsConfig()

    @property
    def auth_required(self) -> bool:
        """Whether every call must carry a virtual key or gateway credentials."""
        return self.client.enforce_auth_on_inference or (
            self.auth.is_enabled and not self.auth.disable_auth_on_inference
        )


class KeySchema(Protocol):
    """What config needs to know of a provider to read its keys. Each adapter class is one (see
    `service.infra.providers.base.Adapter`); providers without an adapter use `PLAIN_KEYS`. Config never
    imports the providers: the schemas are passed in (`service.infra.providers.catalog` passes them all)."""

    # The key's provider-specific block (`azure_key_config`), or None when there is none.
    @property
    def key_settings_block(self) -> str | None: ...

    # Whether `value` must be set (providers that authenticate with their key block say no).
    @property
    def key_value_required(self) -> bool: ...

    @classmethod
    def key_settings(cls, reader: ConfigReader) -> Any:
        """The typed settings of the `key_settings_block`; raises ConfigError naming the field."""


class _PlainKeys:
    """Keys that are just a secret `value`."""

    key_settings_block: ClassVar[str | None] = None
    key_value_required: ClassVar[bool] = True

    @classmethod
    def key_settings(cls, reader: ConfigReader) -> Any:
        return None


PLAIN_KEYS: KeySchema = _PlainKeys()


def _key(reader: ConfigReader, provider: str, index: int, schema: KeySchema) -> Key:
    name = reader.get("name", str, "") or f"{provider}-key-{index}"
    settings = schema.key_settings(reader.child(schema.key_settings_block)) if schema.key_settings_block else None
    weight = reader.get("weight", float, 1.0)
    if weight < 0:
        raise ConfigError(f"{reader.where('weight')}: must not be negative")
    return Key(
        id=reader.get("id", str, "") or name,
        name=name,
        value=reader.env_string("value", required=schema.key_value_required),
        weight=weight,
        enabled=reader.get("enabled", bool, True),
        use_for_batch_api=reader.get("use_for_batch_api", bool, False),
        settings=settings,
    )


def _network(reader: ConfigReader) -> NetworkConfig:
    base_url = reader.get("base_url", str, "") or None
    if base_url:
        base_url = http_url(base_url, reader.where("base_url"))
    headers = reader.get("extra_headers", dict, {})
    for name, value in headers.items():
        if not isinstance(value, str) or not name or any(c in name + value for c in "\r\n\0"):
            shown = name.encode("unicode_escape").decode()  # keep the error on one line
            raise ConfigError(f"{reader.where('extra_headers')}.{shown}: must be a single-line string")
    timeout = reader.get("default_request_timeout_in_seconds", (int, float), 30)
    if timeout <= 0:
        raise ConfigError(f"{reader.where('default_request_timeout_in_seconds')}: must be positive")
    counts = {}
    for name, default in (("max_retries", 2), ("retry_backoff_initial_ms", 100), ("retry_backoff_max_ms", 2000)):
        counts[name] = reader.get(name, int, default)
        if counts[name] < 0:
            raise ConfigError(f"{reader.where(name)}: must not be negative")
    breaker = reader.child("circuit_breaker")
    threshold = breaker.get("failure_threshold", int, 5)
    open_seconds = breaker.get("open_seconds", (int, float), 10.0)
    if threshold < 1 or open_seconds <= 0:
        raise ConfigError(f"{breaker.path}: failure_threshold must be at least 1 and open_seconds positive")
    return NetworkConfig(
        base_url=base_url,
        extra_headers=dict(headers),
        timeout_s=float(timeout),
        breaker_failure_threshold=threshold,
        breaker_open_seconds=float(open_seconds),
        **counts,
    )


def parse_config(data: Any, env: Mapping[str, str] | None, schemas: Mapping[str, KeySchema]) -> Config:
    """`data` (a parsed config.json) as a checked Config. `schemas` names every provider a config
    may configure, with how its keys are read (`service.infra.providers.catalog.KEY_SCHEMAS`)."""
    known_providers = frozenset(schemas)
    root = ConfigReader(data, "", os.environ if env is None else env)
    client = root.child("client")
    bulk_concurrency = client.get("bulk_concurrency", int, 16)
    if not 1 <= bulk_concurrency <= 1000:
        raise ConfigError(f"{client.where('bulk_concurrency')}: must be between 1 and 1000")
    providers: dict[str, ProviderConfig] = {}
    provs = root.child("providers")
    for name in provs.data:
        if name not in known_providers:
            raise ConfigError(f"providers.{name}: unknown provider (known: {', '.join(sorted(known_providers))})")
        p = provs.child(name)
        keys = p.get("keys", list, [])
        limits = p.child("concurrency_and_buffer_size")
        concurrency = limits.get("concurrency", int, 1000)
        buffer_size = limits.get("buffer_size", int, 5000)
        if concurrency < 1:
            raise ConfigError(f"{limits.where('concurrency')}: must be at least 1")
        if buffer_size < 0:
            raise ConfigError(f"{limits.where('buffer_size')}: must not be negative")
        providers[name] = ProviderConfig(
            name=name,
            keys=tuple(
                _key(ConfigReader(k, f"{p.where('keys')}[{i}]", root.env), name, i, schemas[name])
                for i, k in enumerate(keys)
            ),
            network=_network(p.child("network_config")),
            send_back_raw_response=p.get("send_back_raw_response", bool, False),
            concurrency=concurrency,
            buffer_size=buffer_size,
            api_version=_api_version(p),
        )
    return Config(
        client=ClientConfig(
            allow_per_request_raw_override=client.get("allow_per_request_raw_override", bool, False),
            allow_direct_keys=client.get("allow_direct_keys", bool, False),
            enforce_auth_on_inference=client.get("enforce_auth_on_inference", bool, False),
            allow_unauthenticated_public=client.get("allow_unauthenticated_public", bool, False),
            bulk_concurrency=bulk_concurrency,
        ),
        providers=providers,
        virtual_keys=parse_virtual_keys(
            root.child("governance"),
            {name: frozenset(key.id for key in pc.keys) for name, pc in providers.items()},
            known_providers,
        ),
        auth=parse_auth(root.child("auth_config")),
        store=parse_store(root.child("governance").child("store")),
        operations=parse_operations(root.child("operations")),
    )


_API_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _api_version(reader: ConfigReader) -> str | None:
    # Sent as a header value: a short token, never anything that could break a header line.
    value = reader.get("api_version", str, "")
    if value and not _API_VERSION.match(value):
        raise ConfigError(f"{reader.where('api_version')}: expected a version like 2023-06-01, got {value[:64]!r}")
    return value or None


def read_config(path: str | Path) -> bytes:
    """The config file's bytes (following symlinks, as a Kubernetes-mounted ConfigMap needs)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None


def config_version(raw: bytes) -> str:
    """A config's version: the first 12 hex digits of its bytes' SHA-256. Safe to show: it names
    the content without revealing any of it."""
    return hashlib.sha256(raw).hexdigest()[:12]


def parse_config_bytes(
    raw: bytes, path: str | Path, env: Mapping[str, str] | None, schemas: Mapping[str, KeySchema]
) -> Config:
    """`raw` (the bytes of the file at `path`, which error messages name) as a checked Config."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    return parse_config(data, env, schemas)


def load_config(path: str | Path, env: Mapping[str, str] | None, schemas: Mapping[str, KeySchema]) -> Config:
    return parse_config_bytes(read_config(path), path, env, schemas)
