"""Who is calling, and what they may do: virtual keys, direct provider keys, gateway credentials and
per-virtual-key rate limits (counted by `service.infra.limits`). The same rules hold for REST and gRPC
callers (headers arrive as gRPC metadata either way).

Secrets are never compared directly: virtual keys are looked up by their SHA-256 digest and gateway
credentials are compared digest to digest with `hmac.compare_digest`, so timing reveals nothing
about a stored value. No secret is ever put into an error message or a log line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from service.config.file import Config
from service.config.governance import VirtualKey
from service.domain.errors import PermissionDenied, Unauthenticated
from service.infra.limits import EmbeddedStore, RateLimiter

VIRTUAL_KEY_PREFIX = "sk-bf-"
VIRTUAL_KEY_HEADER = "x-bf-vk"
# Headers that may carry a virtual key or, with client.allow_direct_keys, a provider key.
KEY_HEADERS = ("x-api-key", "x-goog-api-key")


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller. `identity` is safe to log: `vk:<id>`, `admin` or `anonymous`."""

    identity: str
    virtual_key: VirtualKey | None = None
    direct_key: str | None = field(default=None, repr=False)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def _bearer(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _basic(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""  # present but unreadable: a failed login, not an anonymous call


class Authenticator:
    def __init__(
        self, config: Config, clock: Callable[[], float] = time.time, limiter: RateLimiter | None = None
    ) -> None:
        """`limiter` is the process's rate limiter (its store outlives any one config); the default,
        an in-memory store, suits a single Authenticator on its own."""
        self._config = config
        self._clock = clock
        self._virtual_keys = {_digest(vk.value): vk for vk in config.virtual_keys}
        auth = config.auth
        self._admin = _digest(f"{auth.admin_username}:{auth.admin_password}") if auth.is_enabled else None
        self.limiter = limiter if limiter is not None else RateLimiter(EmbeddedStore(":memory:"))

    def authenticate(self, headers: Mapping[str, str]) -> Caller:
        """Identifies the caller from its headers; raises Unauthenticated (401)."""
        virtual, carried = _presented(headers)
        if virtual:
            vk = self._virtual_key(virtual)
            return Caller(f"vk:{vk.id}", vk)
        identity = "anonymous"
        basic = _basic(headers)
        if basic is not None:
            if self._admin is None or not hmac.compare_digest(_digest(basic), self._admin):
                raise Unauthenticated("invalid gateway credentials", code="invalid_credentials")
            identity = "admin"
        elif self._config.auth_required:
            raise Unauthenticated(
                "a virtual key is required: send it as x-bf-vk or Authorization: Bearer sk-bf-...",
                code="virtual_key_required",
            )
        direct = None
        if self._config.client.allow_direct_keys:
            direct = next((v for v in carried if v), None)
        return Caller(identity, direct_key=direct)

    def caller_key(self, headers: Mapping[str, str]) -> str | None:
        """Whom a call counts against for fair share (service.infra.concurrency), from its headers
        alone and before its message arrives: `vk:<id>` for a virtual key this config knows (active
        or not), `admin` for the right gateway credentials, `key:<digest>` for a direct provider key
        where those are allowed; None for anything else (the caller is then its address). One
        digest and a lookup: nothing is counted or refused here."""
        virtual, carried = _presented(headers)
        if virtual:
            vk = self._virtual_keys.get(_digest(virtual))
            return f"vk:{vk.id}" if vk is not None else None
        basic = _basic(headers)
        if basic is not None:
            return "admin" if self._admin is not None and hmac.compare_digest(_digest(basic), self._admin) else None
        if self._config.client.allow_direct_keys:
            direct = next((v for v in carried if v), None)
            if direct:
                return f"key:{_digest(direct).hex()[:16]}"
        return None

    def _virtual_key(self, value: str) -> VirtualKey:
        vk = self._virtual_keys.get(_digest(value))
        now = self._clock()
        if vk is None or not vk.is_active or (vk.expires_at is not None and vk.expires_at <= now):
            # One answer for unknown, inactive and expired keys: the caller learns nothing more.
            raise Unauthenticated("virtual key not found", code="virtual_key_not_found")
        return vk

    async def authorize(self, caller: Caller, provider: str) -> frozenset[str] | None:
        """The configured key ids the caller may use on `provider` (None: all); raises
        PermissionDenied (403), Overloaded (429, rate limit) or UpstreamUnavailable (503, the
        rate-limit store failed and `on_error` is `deny`). Only a virtual key with a limit touches
        the store."""
        allowed = self.scope(caller, provider)
        await self.count(caller)
        return allowed

    def scope(self, caller: Caller, provider: str) -> frozenset[str] | None:
        """The configured key ids the caller may use on `provider` (None: all), without counting a
        call; raises PermissionDenied (403)."""
        vk = caller.virtual_key
        if vk is None:
            return None
        if provider not in vk.providers:
            raise PermissionDenied(
                f"Provider '{provider}' is not allowed for this virtual key", code="provider_blocked", provider=provider
            )
        return vk.providers[provider]

    async def count(self, caller: Caller) -> None:
        """Counts one call against the caller's virtual-key rate limit, if it has one (429 over it)."""
        vk = caller.virtual_key
        if vk is not None and vk.rate_limit is not None:
            await self.limiter.check(vk.id, vk.rate_limit)


class CallerCheck:
    """Whether a running call's caller may still do what it started, against the config current
    now (`current` gives its Authenticator; service.runtime.live swaps configs on reload): a key
    revoked, deactivated or expired, gateway credentials changed, or a provider taken off the key's
    list, end what the call still had to do (bulk items, waits) with the single cancel's 401/403.
    One digest and a lookup, never the rate-limit store: cheap before every upstream call."""

    __slots__ = ("_headers", "_current", "_clock")

    def __init__(
        self, headers: Mapping[str, str], current: Callable[[], Authenticator], clock: Callable[[], float] = time.time
    ) -> None:
        self._headers, self._current, self._clock = headers, current, clock

    def check(self, provider: str) -> float | None:
        """Raises Unauthenticated (401) or PermissionDenied (403) when the caller may no longer
        cancel on `provider`; else returns the seconds until its virtual key expires (None: never)."""
        auth = self._current()
        caller = auth.authenticate(self._headers)
        auth.scope(caller, provider)
        vk = caller.virtual_key
        return None if vk is None or vk.expires_at is None else max(0.0, vk.expires_at - self._clock())


def _presented(headers: Mapping[str, str]) -> tuple[str | None, tuple[str | None, ...]]:
    """The virtual key a call presents (or None), and every value that could be a provider key."""
    carried = (_bearer(headers), *(headers.get(h) for h in KEY_HEADERS))
    # x-bf-vk always means a virtual key; elsewhere the sk-bf- prefix tells it from a provider key.
    virtual = headers.get(VIRTUAL_KEY_HEADER) or next(
        (v for v in carried if v and v.startswith(VIRTUAL_KEY_PREFIX)), None
    )
    return virtual, carried


def exposure_problem(config: Config, host: str) -> str | None:
    """Why listening on `host` would be unsafe with this config, or None. An open gateway (no
    virtual key or gateway credentials required) spends the company's provider keys for anyone
    who can reach it, so it stays on loopback unless explicitly allowed."""
    if config.auth_required or config.client.allow_unauthenticated_public:
        return None
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return (
        f"refusing to listen on {host}: the gateway is open (no virtual key or gateway credentials are "
        "required). Set client.enforce_auth_on_inference or auth_config, or set "
        "client.allow_unauthenticated_public to expose it anyway."
    )
