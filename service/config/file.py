"""Loads and checks a Bifrost-style config.json.

Only the subset batchgate uses is read; anything malformed fails at start with one `ConfigError`
line that names the field (`providers.openai.keys[0].value: ...`), never with a traceback.
String values of the form `env.NAME` are read from the environment.

Config names no provider: which providers exist and how each one's keys are read (its
`*_key_config` block) come in as `KeySchema`s from the layer above (`service.infra.providers.catalog`,
whose `parse_config`/`load_config` are the ones to call).
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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
from service.config.reader import ConfigError, ConfigReader, Reading, env_of, http_url, shown

# Re-exported: the config's types are all read from here.
__all__ = [
    "AuthConfig",
    "CallLimits",
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
    "ReadReport",
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
class CallLimits:
    """What one caller may hold in one worker process at once (`client.limits`), so that no caller
    can starve the others; over a limit a call gets 429 `too_many_concurrent_calls`. A caller is a
    virtual key, the gateway credentials, a direct provider key, or for a call without credentials
    its address (as Envoy saw it, from x-forwarded-for, when the call comes from a trusted proxy)."""

    # Calls of one caller in progress (every RPC, from the moment its headers arrive).
    calls_per_caller: int = 64
    # Of those, long calls: CancelMany, Cancel with wait_seconds > 0, and WaitOperation.
    long_calls_per_caller: int = 16
    # Batches one caller's long calls hold (a CancelMany its distinct items, a waiting Cancel one),
    # and all callers' together: each is a task, its state and its reads in this process.
    batches_per_caller: int = 2000
    batches: int = 5000
    # Peers whose x-forwarded-for names the caller (addresses or CIDR blocks; Envoy in front of the
    # workers of one machine reaches them over Unix sockets, always trusted).
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


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
    limits: CallLimits = CallLimits()


@dataclass(frozen=True, slots=True)
class ReadReport:
    """What reading a config found besides its values: fields nothing read (each `path: unknown
    field (did you mean ...)`), references left unresolved (only when the reading allowed that), and
    the secret files read (path, SHA-256 of the content: a reload notices a rotation)."""

    unknown_fields: tuple[str, ...] = ()
    unresolved: tuple[str, ...] = ()
    secret_files: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    client: ClientConfig = ClientConfig()
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    virtual_keys: tuple[VirtualKey, ...] = ()
    auth: AuthConfig = AuthConfig()
    store: StoreConfig = StoreConfig()
    operations: OperationsConfig = OperationsConfig()
    report: ReadReport = field(default=ReadReport(), compare=False, repr=False)

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
    reader.known("models")  # Bifrost routes inference by model; a cancel has none
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
            raise ConfigError(f"{reader.where('extra_headers')}.{shown(name)}: must be a single-line string")
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


def parse_config(
    data: Any,
    env: Mapping[str, str] | None,
    schemas: Mapping[str, KeySchema],
    *,
    base_dir: Path | None = None,
    allow_unresolved: bool = False,
) -> Config:
    """`data` (a parsed config.json) as a checked Config. `schemas` names every provider a config
    may configure, with how its keys are read (`service.infra.providers.catalog.KEY_SCHEMAS`).
    `env` (None: this process's) resolves `env.NAME`, `base_dir` relative `file.` paths. Every
    reference that cannot be resolved is named in one ConfigError (one problem each), unless
    `allow_unresolved`: then it reads as empty and is listed in `Config.report.unresolved`."""
    reading = Reading(env_of(env), base_dir)
    try:
        config = _parse(ConfigReader(data, "", reading), schemas)
    except ConfigError as exc:
        raise ConfigError(*reading.unresolved, *exc.problems) from None
    if reading.unresolved and not allow_unresolved:
        raise ConfigError(*reading.unresolved)
    report = ReadReport(
        unknown_fields=tuple(reading.unknown_fields()),
        unresolved=tuple(reading.unresolved),
        secret_files=tuple(sorted(reading.files.items())),
    )
    return replace(config, report=report)


def _parse(root: ConfigReader, schemas: Mapping[str, KeySchema]) -> Config:
    known_providers = frozenset(schemas)
    root.known("$schema")  # an editor's JSON schema
    client = root.child("client")
    bulk_concurrency = client.get("bulk_concurrency", int, 16)
    if not 1 <= bulk_concurrency <= 1000:
        raise ConfigError(f"{client.where('bulk_concurrency')}: must be between 1 and 1000")
    providers: dict[str, ProviderConfig] = {}
    provs = root.child("providers")
    for name in provs.data:
        if name not in known_providers:
            close = difflib.get_close_matches(name, sorted(known_providers), n=1, cutoff=0.6)
            hint = f"did you mean `{close[0]}`? " if close else ""
            raise ConfigError(
                f"providers.{shown(name)}: unknown provider ({hint}known: {', '.join(sorted(known_providers))})"
            )
        p = provs.child(name)
        limits = p.child("concurrency_and_buffer_size")
        concurrency = limits.get("concurrency", int, 1000)
        buffer_size = limits.get("buffer_size", int, 5000)
        if concurrency < 1:
            raise ConfigError(f"{limits.where('concurrency')}: must be at least 1")
        if buffer_size < 0:
            raise ConfigError(f"{limits.where('buffer_size')}: must not be negative")
        providers[name] = ProviderConfig(
            name=name,
            keys=tuple(_key(key, name, i, schemas[name]) for i, key in enumerate(p.items("keys"))),
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
            limits=_limits(client.child("limits")),
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


def _limits(reader: ConfigReader) -> CallLimits:
    """`client.limits`: every count at least 1; a caller's share no larger than the whole."""
    counts, defaults = {}, CallLimits()
    for name in ("calls_per_caller", "long_calls_per_caller", "batches_per_caller", "batches"):
        counts[name] = reader.get(name, int, getattr(defaults, name))
        if not 1 <= counts[name] <= 1_000_000:
            raise ConfigError(f"{reader.where(name)}: must be between 1 and 1000000")
    if counts["long_calls_per_caller"] > counts["calls_per_caller"]:
        raise ConfigError(f"{reader.where('long_calls_per_caller')}: must not be more than calls_per_caller")
    if counts["batches_per_caller"] > counts["batches"]:
        raise ConfigError(f"{reader.where('batches_per_caller')}: must not be more than batches")
    proxies = []
    for i, value in enumerate(reader.get("trusted_proxies", list, [])):
        where = f"{reader.where('trusted_proxies')}[{i}]"
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__}")
        try:
            proxies.append(ipaddress.ip_network(value.strip()))
        except ValueError:
            raise ConfigError(
                f"{where}: expected an address or a CIDR block like 10.0.0.0/8, got {value[:64]!r}"
            ) from None
    return CallLimits(**counts, trusted_proxies=tuple(proxies))


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


# No setting is nested half as deep; json.loads would recurse once per level of a hostile file.
MAX_DEPTH = 32
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},:]')


def nesting_problem(text: str, limit: int = MAX_DEPTH) -> str | None:
    """`path: nested more than N levels deep` for the first value of the JSON `text` below `limit`
    levels, else None. A scan of its tokens, so a hostile file cannot exhaust the stack."""
    path: list[Any] = []  # per open level: the current key (object) or index (list)
    key_next: list[bool] = []  # per open level: whether the next string is a key
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            if len(path) >= limit:
                return f"{_path_text(path)}: nested more than {limit} levels deep"
            path.append("" if token == "{" else 0)
            key_next.append(token == "{")
        elif token in "]}":
            if path:
                path.pop()
                key_next.pop()
        elif token == ",":
            if path and isinstance(path[-1], int):
                path[-1] += 1
            elif path:
                key_next[-1] = True
        elif token == ":":
            if key_next:
                key_next[-1] = False
        elif key_next and key_next[-1]:
            try:
                path[-1] = str(json.loads(token))
            except ValueError:
                path[-1] = "?"
    return None


def _path_text(path: list[Any]) -> str:
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{shown(part)}" for part in path).lstrip(".")
    if not text or text.startswith("["):
        text = "config" + text  # a list at the top
    return (text[:120] + "...") if len(text) > 120 else text


def parse_config_bytes(
    raw: bytes,
    path: str | Path,
    env: Mapping[str, str] | None,
    schemas: Mapping[str, KeySchema],
    *,
    allow_unresolved: bool = False,
) -> Config:
    """`raw` (the bytes of the file at `path`, which error messages name; relative `file.` paths
    are taken from its directory) as a checked Config."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    deep = nesting_problem(text)
    if deep:
        raise ConfigError(deep)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    except RecursionError:  # not reached after the scan above; never a traceback all the same
        raise ConfigError(f"{path}: nested too deeply") from None
    base_dir = Path(os.path.abspath(path)).parent
    return parse_config(data, env, schemas, base_dir=base_dir, allow_unresolved=allow_unresolved)


def load_config(
    path: str | Path,
    env: Mapping[str, str] | None,
    schemas: Mapping[str, KeySchema],
    *,
    allow_unresolved: bool = False,
) -> Config:
    return parse_config_bytes(read_config(path), path, env, schemas, allow_unresolved=allow_unresolved)
