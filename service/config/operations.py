"""The `operations` block of config.json: long-running CancelMatching operations (webhooks, limits,
leases)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from service.config.reader import ConfigError, ConfigReader

DEFAULT_MAX_RUNNING_PER_CALLER = 10
DEFAULT_LEASE_SECONDS = 15.0
DEFAULT_RETENTION_DAYS = 30
MAX_RETENTION_DAYS = 3650


@dataclass(frozen=True, slots=True)
class NotifyTarget:
    """One allowed webhook prefix, parsed: scheme, host and port compare exactly, the path as a
    prefix on a `/` boundary."""

    scheme: str
    host: str
    port: int
    path: str  # without a trailing "/"; "" allows every path

    def allows(self, url: str) -> bool:
        parsed = _parse_url(url)
        if parsed is None:
            return False
        scheme, host, port, path = parsed
        if (scheme, host, port) != (self.scheme, self.host, self.port):
            return False
        return not self.path or path == self.path or path.startswith(self.path + "/")


@dataclass(frozen=True, slots=True)
class OperationsConfig:
    # Webhook URLs a CancelMatching `notify.url` may start with.
    notify_urls: tuple[NotifyTarget, ...] = ()
    # HMAC-SHA256 key of the webhook's X-Batchgate-Signature (required with notify_urls).
    notify_secret: str = field(default="", repr=False)
    # Operations one caller (a virtual key, admin) may have running at once; beyond: 429.
    max_running_per_caller: int = DEFAULT_MAX_RUNNING_PER_CALLER
    # How long a worker owns an operation without renewing it (renewed every third of it); after
    # a crash another worker picks the operation up once it expired.
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    # Finished operations older than this (from their creation) are deleted; 0 keeps them until
    # DeleteOperation.
    retention_days: int = DEFAULT_RETENTION_DAYS

    def notify_allowed(self, url: str) -> bool:
        return any(target.allows(url) for target in self.notify_urls)


def _parse_url(url: str) -> tuple[str, str, int, str] | None:
    """(scheme, host, port, path without trailing "/") of an http(s) URL without credentials or
    fragment, else None."""
    if any(c in url for c in "\\\r\n\t\0 ") or not url.isprintable():
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.username is not None or parts.fragment:
        return None
    if "@" in parts.netloc:
        return None
    # No dot segments or encoded dots and slashes: a receiver that normalises the path must not
    # land outside the prefix (`/hooks/../admin`).
    segments = parts.path.split("/")
    if "." in segments or ".." in segments or any(enc in parts.path.lower() for enc in ("%2e", "%2f", "%5c")):
        return None
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80), parts.path.rstrip("/")


def parse_operations(reader: ConfigReader) -> OperationsConfig:
    """`operations`: webhook prefixes and secret, the per-caller limit, the lease, the retention."""
    targets = []
    for i, value in enumerate(reader.get("notify_urls", list, [])):
        where = f"{reader.where('notify_urls')}[{i}]"
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__}")
        parsed = _parse_url(value)
        if parsed is None or "?" in value:
            # Never repeated: a URL may carry a token.
            raise ConfigError(f"{where}: must be an http(s) URL prefix with a host, without credentials or query")
        targets.append(NotifyTarget(*parsed))
    secret = reader.env_string("notify_secret", required=False)
    if targets and not secret and not reader.unresolved("notify_secret"):
        raise ConfigError(f"{reader.where('notify_secret')}: required when notify_urls is set")
    max_running = reader.get("max_running_per_caller", int, DEFAULT_MAX_RUNNING_PER_CALLER)
    if not 1 <= max_running <= 1000:
        raise ConfigError(f"{reader.where('max_running_per_caller')}: must be between 1 and 1000")
    lease = reader.get("lease_seconds", float, DEFAULT_LEASE_SECONDS)
    if not 1 <= lease <= 300:
        raise ConfigError(f"{reader.where('lease_seconds')}: must be between 1 and 300")
    retention = reader.get("retention_days", int, DEFAULT_RETENTION_DAYS)
    if not 0 <= retention <= MAX_RETENTION_DAYS:
        raise ConfigError(f"{reader.where('retention_days')}: must be between 0 and {MAX_RETENTION_DAYS}")
    return OperationsConfig(
        notify_urls=tuple(targets),
        notify_secret=secret,
        max_running_per_caller=max_running,
        lease_seconds=lease,
        retention_days=retention,
    )
