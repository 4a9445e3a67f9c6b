"""The governance part of config.json: virtual keys and their rate limits (`governance`), where
limits are counted (`governance.store`), and the gateway credentials (`auth_config`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from service.config.reader import ConfigError, ConfigReader, split_url


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
    # May start CancelMatching operations with a selector (list and cancel whatever matches within
    # its providers); explicit batches need only the normal cancel permission.
    allow_cancel_matching: bool = False


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


def _virtual_key_value(where: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        if not value.startswith("sk-bf-"):
            raise ConfigError(f"{where}: virtual key values start with sk-bf-")

    return check


def parse_virtual_keys(
    gov: ConfigReader, configured: Mapping[str, frozenset[str]], known_providers: frozenset[str]
) -> tuple[VirtualKey, ...]:
    """`governance.rate_limits` and `governance.virtual_keys`. `configured` maps each configured
    provider to its key ids; `known_providers` are all the names a config may use."""
    limits: dict[str, RateLimit] = {}
    for i, r in enumerate(gov.items("rate_limits")):
        limit_id = r.get("id", str, "") or f"rate-limit-{i}"
        maximum = r.get("request_max_limit", int, 0)
        if maximum < 1:
            raise ConfigError(f"{r.where('request_max_limit')}: must be at least 1")
        limits[limit_id] = RateLimit(limit_id, maximum, _duration(r, "request_reset_duration"))
    keys: list[VirtualKey] = []
    seen: set[str] = set()
    for i, r in enumerate(gov.items("virtual_keys")):
        value = r.env_string("value", required=True, check=_virtual_key_value(r.where("value")))
        if value and value in seen:
            raise ConfigError(f"{r.where('value')}: the same value is used by another virtual key")
        seen.add(value)
        allowed: dict[str, frozenset[str] | None] = {}
        for pr in r.items("provider_configs"):
            provider = pr.get("provider", str, "")
            if not provider:
                raise ConfigError(f"{pr.where('provider')}: required")
            if provider not in configured:
                # A typo (`opneai`) would otherwise silently block the team.
                problem = (
                    f"provider {provider!r} is not configured under providers"
                    if provider in known_providers
                    else f"unknown provider {provider[:64]!r}"
                )
                raise ConfigError(f"{pr.where('provider')}: {problem} (configured: {', '.join(sorted(configured))})")
            key_ids = pr.get("key_ids", list, None)
            if key_ids is not None:
                known = configured[provider]
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
                allow_cancel_matching=r.get("allow_cancel_matching", bool, False),
            )
        )
    return tuple(keys)


def parse_store(reader: ConfigReader) -> StoreConfig:
    """`governance.store`: where rate-limit counters live."""
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
        url = reader.env_string("url", required=True, check=lambda value: _redis_url(value, reader.where("url")))
    elif "url" in reader.data:
        raise ConfigError(f"{reader.where('url')}: only used with type redis")
    return StoreConfig(type=kind, url=url, on_error=on_error, timeout_s=timeout_ms / 1000)


def _redis_url(url: str, where: str) -> None:
    parts = split_url(url, where)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(f"{where}: must be a redis:// or rediss:// URL with a host")
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise ConfigError(f"{where}: the path must be a database number (/0)")


def parse_auth(reader: ConfigReader) -> AuthConfig:
    """`auth_config`: the gateway credentials."""
    config = AuthConfig(
        is_enabled=reader.get("is_enabled", bool, False),
        admin_username=reader.env_string("admin_username", required=False),
        admin_password=reader.env_string("admin_password", required=False),
        disable_auth_on_inference=reader.get("disable_auth_on_inference", bool, False),
    )
    unresolved = reader.unresolved("admin_username") or reader.unresolved("admin_password")
    if config.is_enabled and not (config.admin_username and config.admin_password) and not unresolved:
        raise ConfigError(f"{reader.path}: is_enabled needs admin_username and admin_password")
    return config
