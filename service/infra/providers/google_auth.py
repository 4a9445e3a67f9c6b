"""OAuth2 access tokens for Google service accounts (Vertex AI), minted with google-auth.

Tokens are minted from the key's service-account JSON (its `token_uri` is honoured), cached per
service account until 5 minutes before expiry (half the lifetime for short-lived tokens) and
dropped when the API answers 401 (`invalidate`). One mint is in flight per service account:
concurrent callers await one shared, shielded future (a caller whose deadline passes stops waiting
without cancelling the others'); it runs in a worker thread so the event loop never blocks, bounded
by the provider timeout. A mint failure is a 401 (the token endpoint refused the credentials) or a
502 (it could not be reached); neither message carries key material.
"""

from __future__ import annotations

import asyncio
from datetime import UTC
from time import time
from typing import Any

from service.domain.errors import DeadlineExceeded, GatewayError, ProviderError, UpstreamUnavailable

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# A cached token is replaced this long before it expires (half its lifetime for short-lived ones).
TOKEN_REFRESH_MARGIN_S = 300.0


class _TokenSource:
    """Access tokens for one service account: google-auth credentials (built once, so the signer is
    reused), the cached token and the one refresh in flight."""

    __slots__ = ("credentials", "token", "refresh_at", "refreshing")

    def __init__(self, credentials: Any) -> None:
        self.credentials = credentials
        self.token: str | None = None
        self.refresh_at = 0.0
        self.refreshing: asyncio.Future[str] | None = None

    def fresh_token(self) -> str | None:
        return self.token if self.token is not None and time() < self.refresh_at else None

    def store(self, token: str, expires_at: float) -> None:
        now = time()
        self.token = token
        self.refresh_at = expires_at - min(TOKEN_REFRESH_MARGIN_S, max(0.0, expires_at - now) / 2)


class ServiceAccountTokens:
    """The token cache of one provider (errors name `provider`; mints are bounded by `timeout_s`)."""

    def __init__(self, provider: str, timeout_s: float) -> None:
        self.provider = provider
        self.timeout_s = timeout_s
        self._sources: dict[tuple[Any, ...], _TokenSource] = {}
        self._http_request: Any = None  # google-auth transport, created on first mint

    async def token(self, info: dict[str, Any]) -> str:
        """A valid access token for the service account `info`: the cached one, else one minted now
        (concurrent callers share the one mint in flight)."""
        source = self._source(info)
        token = source.fresh_token()
        if token is not None:
            return token
        if source.refreshing is None or source.refreshing.done():
            source.refreshing = asyncio.ensure_future(self._mint(source))
            source.refreshing.add_done_callback(_consume_exception)
        try:
            # Shielded: a caller giving up (deadline) does not cancel the others' mint.
            return await asyncio.wait_for(asyncio.shield(source.refreshing), self.timeout_s)
        except TimeoutError:
            raise DeadlineExceeded(
                f"{self.provider}: minting an access token took too long", provider=self.provider
            ) from None

    def invalidate(self) -> None:
        """Forgets every cached token (the API refused one: revoked, expired early)."""
        for source in self._sources.values():
            source.token = None

    def _source(self, info: dict[str, Any]) -> _TokenSource:
        ident = tuple(info.get(name) for name in ("client_email", "token_uri", "private_key_id", "private_key"))
        source = self._sources.get(ident)
        if source is None:
            from google.oauth2 import service_account  # the import costs ~100 ms: only when Vertex is used

            try:
                credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]  # google-auth leaves it unannotated
                    info, scopes=[CLOUD_PLATFORM_SCOPE]
                )
            except (ValueError, TypeError, KeyError) as exc:
                # Never the exception text: it may quote the key material.
                raise GatewayError(
                    f"{self.provider}: the key's service-account credentials could not be loaded "
                    f"({type(exc).__name__})",
                    status_code=401,
                    type="authentication_error",
                    code="invalid_credentials",
                    provider=self.provider,
                ) from None
            source = self._sources[ident] = _TokenSource(credentials)
        return source

    async def _mint(self, source: _TokenSource) -> str:
        from google.auth import exceptions

        if self._http_request is None:
            self._http_request = _timed_request(self.timeout_s)
        try:
            await asyncio.to_thread(source.credentials.refresh, self._http_request)
        except exceptions.RefreshError as exc:
            retryable = bool(getattr(exc, "retryable", False))
            detail = _refresh_error_detail(exc)
            raise ProviderError(
                f"{self.provider}: the token endpoint refused the service-account credentials: {detail}",
                status_code=502 if retryable else 401,
                type="upstream_error" if retryable else "authentication_error",
                code=_refresh_error_code(exc) or ("upstream_unavailable" if retryable else "invalid_grant"),
                provider=self.provider,
            ) from None
        except exceptions.GoogleAuthError as exc:  # TransportError and friends: no answer
            raise UpstreamUnavailable(
                f"{self.provider}: could not reach the token endpoint ({type(exc).__name__})", provider=self.provider
            ) from None
        credentials = source.credentials
        expiry = credentials.expiry
        expires_at = expiry.replace(tzinfo=UTC).timestamp() if expiry is not None else time() + 3600
        token: str = credentials.token
        source.store(token, expires_at)
        return token


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a mint nobody waits for any more logs nothing


def _timed_request(timeout: float) -> Any:
    """google-auth's requests transport with a timeout on every call and no redirects followed
    (a redirect must not carry an assertion to another host)."""
    import requests
    from google.auth.transport.requests import Request

    session = requests.Session()
    session.max_redirects = 0
    transport = Request(session)

    def send(url: str, method: str = "GET", body: Any = None, headers: Any = None, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", timeout)
        return transport(url, method=method, body=body, headers=headers, **kwargs)

    return send


def _refresh_error_code(exc: Exception) -> str | None:
    data = exc.args[1] if len(exc.args) > 1 else None
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) and error else None


def _refresh_error_detail(exc: Exception) -> str:
    """The token endpoint's `error: error_description`, shortened; never a body we cannot read."""
    data = exc.args[1] if len(exc.args) > 1 else None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        description = data.get("error_description")
        text = f"{data['error']}: {description}" if isinstance(description, str) else data["error"]
    else:
        text = "the token endpoint answered with an unreadable error"
    return text[:300]
