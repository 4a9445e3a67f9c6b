"""Signed webhook calls: an operation's final JSON POSTed to the URL its caller gave.

The receiver checks `X-Batchgate-Signature: sha256=<hex HMAC-SHA256 of the body>` with the shared
`operations.notify_secret`. Redirects are never followed (a redirect must not carry the signed body
elsewhere); the answer's body is not read beyond a few KiB.
"""

from __future__ import annotations

import hashlib
import hmac

import aiohttp
from yarl import URL

SIGNATURE_HEADER = "X-Batchgate-Signature"
USER_AGENT = "batchgate-webhook/0.1"


def signature(body: bytes, secret: str) -> str:
    """The signature header's value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender:
    """POSTs signed JSON bodies over one pooled session (opened on first use)."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def post(self, url: str, body: bytes, secret: str) -> int:
        """The receiver's HTTP status; raises aiohttp.ClientError, OSError or TimeoutError when
        there was no answer."""
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(body, secret)}
        async with self._session.post(
            URL(url),
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
        ) as response:
            await response.content.read(4096)
            return response.status

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
