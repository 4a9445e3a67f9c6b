"""The cancel use case: pick the provider and its keys, call it, and answer in unified terms."""

from __future__ import annotations

import asyncio
import re
from time import perf_counter

from service.config import Config
from service.errors import GatewayError, InvalidRequest, ProviderError, UnsupportedOperation
from service.model import CancelCommand, CancelResult
from service.providers.base import Adapter, decode_json, path_segment
from service.providers.http import HttpExecutor
from service.providers.registry import ADAPTERS, KNOWN_PROVIDERS, NO_BATCH_CANCEL

# Upstream answers that settle the matter for this batch: another key would not change them.
# Anything else (401/403 for this key, 404 because the batch lives in another key's account,
# 429/5xx after retries) moves on to the next eligible key.
FINAL_STATUSES = frozenset({400, 409, 422})
_PROVIDER_NAME = re.compile(r"^[a-z0-9_-]{1,32}$")


class Canceller:
    """Holds one adapter and one pooled HTTP executor per configured provider."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._providers: dict[str, tuple[Adapter, HttpExecutor]] = {
            name: (ADAPTERS[name](pc), HttpExecutor(name, pc.network, pc.concurrency))
            for name, pc in config.providers.items()
            if name in ADAPTERS
        }

    async def close(self) -> None:
        await asyncio.gather(*(executor.close() for _, executor in self._providers.values()))

    def _resolve(self, provider: str) -> tuple[Adapter, HttpExecutor]:
        if not provider:
            raise InvalidRequest("provider query parameter is required", param="provider")
        if not _PROVIDER_NAME.match(provider) or provider not in KNOWN_PROVIDERS:
            raise InvalidRequest(f"unknown provider: {provider[:64]}", code="unknown_provider", param="provider")
        if provider in NO_BATCH_CANCEL:
            raise UnsupportedOperation(f"batch cancel is not supported by provider: {provider}", provider=provider)
        entry = self._providers.get(provider)
        if entry is None:
            raise InvalidRequest(
                f"provider is not configured: {provider}", code="provider_not_configured", provider=provider
            )
        return entry

    async def cancel(self, command: CancelCommand, time_remaining: float | None = None) -> CancelResult:
        adapter, executor = self._resolve(command.provider)
        provider = adapter.name
        try:
            path_segment(command.batch_id)  # every bad id is refused before any upstream call
            keys = adapter.config.batch_keys
            if not keys:
                raise InvalidRequest(f"no batch-enabled keys found for provider: {provider}", code="no_batch_keys")
        except GatewayError as err:
            err.provider = provider
            raise
        timeout = adapter.config.network.timeout_s
        if time_remaining is not None:
            timeout = min(timeout, time_remaining)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        started = perf_counter()
        error: ProviderError | None = None
        for key in keys:
            response = await executor.send(adapter.cancel_request(key, command.batch_id), deadline)
            if response.status < 300:
                data = decode_json(response, provider)
                batch = adapter.parse_batch(command.batch_id, data)
                batch.id = command.batch_id  # answer with the id in the form the caller sent it
                raw = data if self._send_back_raw(adapter, command) else None
                return CancelResult(batch, provider, int((perf_counter() - started) * 1000), raw)
            error = adapter.parse_error(response)
            if response.status in FINAL_STATUSES:
                break
        assert error is not None
        raise error

    def _send_back_raw(self, adapter: Adapter, command: CancelCommand) -> bool:
        if adapter.config.send_back_raw_response:
            return True
        return command.raw_response_requested and self.config.client.allow_per_request_raw_override
