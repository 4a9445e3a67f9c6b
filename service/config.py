"""Loads and checks a Bifrost-style config.json.

Only the subset batchgate uses is read; anything malformed fails at start with one `ConfigError`
line that names the field (`providers.openai.keys[0].value: ...`), never with a traceback.
String values of the form `env.NAME` are read from the environment.

Config names no provider: which providers exist and how each one's keys are read (its
`*_key_config` block) come in as `KeySchema`s from the layer above (`service.providers.catalog`,
whose `parse_config`/`load_config` are the ones to call).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Mapping, Protocol
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A config problem, with the path of the offending field in the message."""


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
class RateLimit:
    id: str
    request_max_limit: int
    reset_seconds: float


@dataclass(frozen=True, slots=True)
class VirtualKey:
    id: str
    name: str
    value: str = field(repr=False)
    is_active: bool = True
    expires_at: int | None = None  # unix seconds
    # provider -> allowed configured key ids (None: every key of that provider).
    providers: dict[str, frozenset[str] | None] = field(default_factory=dict)
    rate_limit: RateLimit | None = None


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Gateway credentials (HTTP Basic). With `is_enabled` every call must carry them or a virtual
    key, unless `disable_auth_on_inference`."""

    is_enabled: bool = False
    admin_username: str = ""
    admin_password: str = field(default="", repr=False)
    disable_auth_on_inference: bool = False


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where rate-limit counters live (`governance.store`). `embedded`: a SQLite file shared by the
    workers of one machine; `redis`: a Redis every replica shares. Read once at process start."""

    type: str = "embedded"
    # redis:// or rediss:// (may hold a password: never printed).
    url: str | None = field(default=None, repr=False)
    # What a limited call gets while the store fails: `allow` (counted per process) or `deny` (503).
    on_error: str = "allow"
    timeout_s: float = 0.25


@dataclass(frozen=True, slots=True)
class Config:
    client: ClientConfig = ClientConfig()
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    virtual_keys: tuple[VirtualKey, ...] = ()
    auth: AuthConfig = AuthConfig()
    store: StoreConfig = StoreConfig()

    @property
    def auth_required(self) -> bool:
        """Whether every call must carry a virtual key or gateway credentials."""
        return self.client.enforce_auth_on_inference or (
            self.auth.is_enabled and not self.auth.disable_auth_on_inference
        )


# How a config type error names what was expected, in JSON terms.
_JSON_TYPES = {
    str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list", dict: "an object"
}


class ConfigReader:
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
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        # bool is an int in Python, never in the config: `true` is not a count.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            numbers = kinds if float not in kinds else tuple(k for k in kinds if k is not int)
            expected = " or ".join(_JSON_TYPES.get(k, k.__name__) for k in numbers)
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

    def child(self, name: str) -> ConfigReader:
        return ConfigReader(self.data.get(name) or {}, self.where(name), self.env)


def http_url(value: str, where: str) -> str:
    # Error messages never repeat the URL: it may hold credentials.
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: must be an http(s) URL with a host")
    if "?" in value or "#" in value or parts.username or parts.password:
        raise ConfigError(f"{where}: must not carry a query, fragment or credentials")
    return value.rstrip("/")


class KeySchema(Protocol):
    """What config needs to know of a provider to read its keys. Each adapter class is one (see
    `service.providers.base.Adapter`); providers without an adapter use `PLAIN_KEYS`. Config never
    imports the providers: the schemas are passed in (`service.providers.catalog` passes them all)."""

    # The key's provider-specific block (`azure_key_config`), or None when there is none.
    key_settings_block: ClassVar[str | None]
    # Whether `value` must be set (providers that authenticate with their key block say no).
    key_value_required: ClassVar[bool]

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
        value=reader.secret("value", required=schema.key_value_required),
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


def parse_config(data: Any, env: os._Environ | dict | None, schemas: Mapping[str, KeySchema]) -> Config:
    """`data` (a parsed config.json) as a checked Config. `schemas` names every provider a config
    may configure, with how its keys are read (`service.providers.catalog.KEY_SCHEMAS`)."""
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
        virtual_keys=_virtual_keys(root.child("governance"), providers, known_providers),
        auth=_auth(root.child("auth_config")),
        store=_store(root.child("governance").child("store")),
    )


_API_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _api_version(reader: ConfigReader) -> str | None:
    # Sent as a header value: a short token, never anything that could break a header line.
    value = reader.get("api_version", str, "")
    if value and not _API_VERSION.match(value):
        raise ConfigError(f"{reader.where('api_version')}: expected a version like 2023-06-01, got {value[:64]!r}")
    return value or None


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(reader: ConfigReader, name: str) -> float:
    value = reader.get(name, str, "")
    match = _DURATION.match(value)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"{reader.where(name)}: expected a duration like 30s, 1m, 1h, got {value!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _timestamp(reader: ConfigReader, name: str) -> int | None:
    """Unix seconds, or an RFC 3339 time. RFC 3339 times carry their zone (`Z` or `+02:00`); one
    without is refused rather than read in whatever zone the server happens to run in."""
    value = reader.get(name, (str, int), None)
    if value is None or isinstance(value, int):
        return value
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{reader.where(name)}: expected an RFC 3339 time, got {value[:64]!r}") from None
    if parsed.tzinfo is None:
        raise ConfigError(
            f"{reader.where(name)}: {value[:64]!r} has no time zone; add one, e.g. Z for UTC (2027-01-01T00:00:00Z)"
        )
    return int(parsed.timestamp())


def _virtual_keys(
    gov: ConfigReader, providers: dict[str, ProviderConfig], known_providers: frozenset[str]
) -> tuple[VirtualKey, ...]:
    limits: dict[str, RateLimit] = {}
    for i, item in enumerate(gov.get("rate_limits", list, [])):
        r = ConfigReader(item, f"{gov.where('rate_limits')}[{i}]", gov.env)
        limit_id = r.get("id", str, "") or f"rate-limit-{i}"
        maximum = r.get("request_max_limit", int, 0)
        if maximum < 1:
            raise ConfigError(f"{r.where('request_max_limit')}: must be at least 1")
        limits[limit_id] = RateLimit(limit_id, maximum, _duration(r, "request_reset_duration"))
    keys: list[VirtualKey] = []
    seen: set[str] = set()
    for i, item in enumerate(gov.get("virtual_keys", list, [])):
        r = ConfigReader(item, f"{gov.where('virtual_keys')}[{i}]", gov.env)
        value = r.secret("value", required=True)
        if not value.startswith("sk-bf-"):
            raise ConfigError(f"{r.where('value')}: virtual key values start with sk-bf-")
        if value in seen:
            raise ConfigError(f"{r.where('value')}: the same value is used by another virtual key")
        seen.add(value)
        allowed: dict[str, frozenset[str] | None] = {}
        for j, pc in enumerate(r.get("provider_configs", list, [])):
            pr = ConfigReader(pc, f"{r.where('provider_configs')}[{j}]", gov.env)
            provider = pr.get("provider", str, "")
            if not provider:
                raise ConfigError(f"{pr.where('provider')}: required")
            if provider not in providers:
                # A typo (`opneai`) would otherwise silently block the team.
                problem = (
                    f"provider {provider!r} is not configured under providers" if provider in known_providers
                    else f"unknown provider {provider[:64]!r}"
                )
                raise ConfigError(f"{pr.where('provider')}: {problem} (configured: {', '.join(sorted(providers))})")
            key_ids = pr.get("key_ids", list, None)
            if key_ids is not None:
                known = {k.id for k in providers[provider].keys}
                for k, key_id in enumerate(key_ids):
                    if not isinstance(key_id, str):
                        raise ConfigError(f"{pr.where('key_ids')}[{k}]: expected a string, got {type(key_id).__name__}")
                    if key_id not in known:
                        raise ConfigError(f"{pr.where('key_ids')}: no key {key_id!r} configured for {provider}")
            allowed[provider] = None if key_ids is None else frozenset(key_ids)
        limit_id = r.get("rate_limit_id", str, "")
        if limit_id and limit_id not in limits:
            raise ConfigError(f"{r.where('rate_limit_id')}: no rate limit {limit_id!r} in governance.rate_limits")
        name = r.get("name", str, "") or f"virtual-key-{i}"
        keys.append(
            VirtualKey(
                id=r.get("id", str, "") or name,
                name=name,
                value=value,
                is_active=r.get("is_active", bool, True),
                expires_at=_timestamp(r, "expires_at"),
                providers=allowed,
                rate_limit=limits.get(limit_id),
            )
        )
    return tuple(keys)


def _store(reader: ConfigReader) -> StoreConfig:
    kind = reader.get("type", str, "embedded")
    if kind not in ("embedded", "redis"):
        raise ConfigError(f"{reader.where('type')}: expected embedded or redis, got {kind[:32]!r}")
    on_error = reader.get("on_error", str, "allow")
    if on_error not in ("allow", "deny"):
        raise ConfigError(f"{reader.where('on_error')}: expected allow or deny, got {on_error[:32]!r}")
    timeout_ms = reader.get("timeout_ms", int, 250)
    if not 1 <= timeout_ms <= 10_000:
        raise ConfigError(f"{reader.where('timeout_ms')}: must be between 1 and 10000")
    url = None
    if kind == "redis":
        # Never repeated in an error: the url may hold a password.
        url = reader.secret("url", required=True)
        parts = urlsplit(url)
        try:
            parts.port
        except ValueError:
            raise ConfigError(f"{reader.where('url')}: the port is not a number") from None
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ConfigError(f"{reader.where('url')}: must be a redis:// or rediss:// URL with a host")
        if parts.path.strip("/") and not parts.path.strip("/").isdigit():
            raise ConfigError(f"{reader.where('url')}: the path must be a database number (/0)")
    elif "url" in reader.data:
        raise ConfigError(f"{reader.where('url')}: only used with type redis")
    return StoreConfig(type=kind, url=url, on_error=on_error, timeout_s=timeout_ms / 1000)


def _auth(reader: ConfigReader) -> AuthConfig:
    config = AuthConfig(
        is_enabled=reader.get("is_enabled", bool, False),
        admin_username=reader.secret("admin_username", required=False),
        admin_password=reader.secret("admin_password", required=False),
        disable_auth_on_inference=reader.get("disable_auth_on_inference", bool, False),
    )
    if config.is_enabled and not (config.admin_username and config.admin_password):
        raise ConfigError(f"{reader.path}: is_enabled needs admin_username and admin_password")
    return config


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
    raw: bytes, path: str | Path, env: os._Environ | dict | None, schemas: Mapping[str, KeySchema]
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


def load_config(path: str | Path, env: os._Environ | dict | None, schemas: Mapping[str, KeySchema]) -> Config:
    return parse_config_bytes(read_config(path), path, env, schemas)
