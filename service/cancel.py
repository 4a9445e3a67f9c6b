"""The cancel use case: pick the provider and its keys, call it, and answer in unified terms."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import replace
from time import perf_counter
from typing import Any

from service.auth import Authenticator, Caller
from service.config import Config, Key, ProviderConfig
from service.errors import DeadlineExceeded, GatewayError, InvalidRequest, UnsupportedOperation, UpstreamUnavailable
from service.limits import RateLimiter
from service.model import BatchState, CancelCommand, CancelResult
from service.observability import KEY_FAILOVERS, Trace
from service.providers.base import Adapter, UpstreamRequest, decode_json
from service.providers.http import HttpExecutor
from service.providers.registry import ADAPTERS, KNOWN_PROVIDERS, NO_BATCH_CANCEL
from service.resilience import Admission, CircuitBreaker

log = logging.getLogger(__name__)

# Upstream answers that settle the matter for this batch: another key would not change them.
# Anything else (401/403 for this key, 404 because the batch lives in another key's account,
# 429/5xx after retries) moves on to the next eligible key.
FINAL_STATUSES = frozenset({400, 409, 422})
_PROVIDER_NAME = re.compile(r"^[a-z0-9_-]{1,32}$")


def _breaker(name: str, config: ProviderConfig) -> CircuitBreaker:
    net = config.network
    return CircuitBreaker(name, net.breaker_failure_threshold, net.breaker_open_seconds)


class Canceller:
    """Holds one adapter and one pooled HTTP executor per configured provider."""

    def __init__(self, config: Config, limiter: RateLimiter | None = None) -> None:
        self.config = config
        self.auth = Authenticator(config, limiter=limiter)
        self._providers: dict[str, tuple[Adapter, HttpExecutor]] = {
            name: (ADAPTERS[name](pc), HttpExecutor(name, pc.network, pc.concurrency, _breaker(name, pc)))
            for name, pc in config.providers.items()
            if name in ADAPTERS
        }
        self._admission = {
            name: Admission(name, pc.concurrency, pc.buffer_size) for name, pc in config.providers.items()
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
        # Everything that can refuse the call does so before any upstream request.
        caller = self.auth.authenticate(command.headers)
        command.caller = caller.identity
        adapter, executor = self._resolve(command.provider)
        try:
            allowed_key_ids = await self.auth.authorize(caller, adapter.name)
            ref = adapter.parse_id(command.batch_id)
            keys = self._keys(adapter, caller, allowed_key_ids)
        except GatewayError as err:
            err.provider = adapter.name
            raise
        timeout = adapter.config.network.timeout_s
        if time_remaining is not None:
            timeout = min(timeout, time_remaining)
        deadline = asyncio.get_running_loop().time() + timeout
        async with self._admission[adapter.name].slot():
            return await self._cancel(adapter, executor, keys, ref, command, deadline)

    def breaker_states(self) -> dict[str, str]:
        """Circuit state per configured provider that can cancel (for health reporting)."""
        return {name: executor.breaker.state for name, (_, executor) in self._providers.items()}

    async def _cancel(
        self, adapter: Adapter, executor: HttpExecutor, keys: tuple[Key, ...], ref: Any, command: CancelCommand,
        deadline: float,
    ) -> CancelResult:
        started = perf_counter()
        error: GatewayError | None = None
        trace = command.trace
        for index, key in enumerate(keys):
            if index and trace is not None:
                trace.key_failovers += 1
                KEY_FAILOVERS.labels(adapter.name).inc()
            try:
                request = self._with_request_id(adapter, adapter.cancel_request(key, ref), trace)
                request = await adapter.prepare(key, request)
            except (DeadlineExceeded, InvalidRequest):
                raise
            except GatewayError as err:  # this key's credentials could not be used (token mint failed)
                error = err
                continue
            response = await executor.send(request, deadline, trace)
            if response.status < 300:
                batch, raw, warning = await self._read_state(adapter, executor, key, ref, command, response, deadline)
                batch.id = command.batch_id  # answer with the id in the form the caller sent it
                if not self._send_back_raw(adapter, command):
                    raw = None
                return CancelResult(batch, adapter.name, int((perf_counter() - started) * 1000), raw, warning)
            error = adapter.parse_error(response)
            if error.status_code in FINAL_STATUSES and error.type != "authentication_error":
                break  # about the batch, not the key (Gemini says a bad key with a 400)
        assert error is not None
        raise error

    @staticmethod
    def _with_request_id(adapter: Adapter, request: UpstreamRequest, trace: Trace | None) -> UpstreamRequest:
        """Sends the request id upstream where the provider takes one (OpenAI X-Client-Request-Id)."""
        if adapter.request_id_header and trace is not None:
            request.headers[adapter.request_id_header] = trace.request_id
        return request

    @staticmethod
    def _parse(adapter: Adapter, batch_id: str, data: Any) -> BatchState:
        """The adapter's reading of a 2xx answer; an answer of the wrong shape (a string where an
        object belongs, say) is the provider's failure (502), never a crash."""
        try:
            return adapter.parse_batch(batch_id, data)
        except GatewayError:
            raise
        except (TypeError, ValueError, AttributeError, KeyError, IndexError):
            log.warning("%s answered a batch of an unexpected shape", adapter.name, exc_info=True)
            raise UpstreamUnavailable(
                f"{adapter.name} answered with an unexpected batch shape", provider=adapter.name
            ) from None

    async def _read_state(
        self, adapter: Adapter, executor: HttpExecutor, key: Key, ref: Any, command: CancelCommand, response, deadline
    ) -> tuple[BatchState, Any, str | None]:
        """The batch after an accepted cancel: from the cancel answer itself, or from a follow-up read
        for providers whose cancel answers `{}`. A failed follow-up read still reports the cancel
        (status `cancelling`) with a warning: the cancel did happen."""
        cancel_data = decode_json(response, adapter.name)
        follow_up = adapter.status_request(key, ref)
        if follow_up is None:
            return self._parse(adapter, command.batch_id, cancel_data), cancel_data, None
        try:
            trace = command.trace
            follow_up = self._with_request_id(adapter, follow_up, trace)
            answer = await executor.send(await adapter.prepare(key, follow_up), deadline, trace)
            if answer.status >= 300:
                raise adapter.parse_error(answer)
            data = decode_json(answer, adapter.name)
            batch = self._parse(adapter, command.batch_id, data)
        except GatewayError as err:
            log.warning("%s: cancel accepted but the follow-up read failed: %s", adapter.name, err.message)
            warning = f"cancel accepted; reading the batch state afterwards failed: {err.message}"
            return BatchState(id=command.batch_id, status="cancelling"), {"cancel": cancel_data}, warning
        return batch, {"cancel": cancel_data, "retrieve": data}, None

    @staticmethod
    def _keys(adapter: Adapter, caller: Caller, allowed_key_ids: frozenset[str] | None) -> tuple[Key, ...]:
        """The keys to try, in order: the caller's direct key alone, or the configured batch keys
        the caller's virtual key allows."""
        if caller.direct_key is not None:
            if not adapter.accepts_direct_keys:
                raise InvalidRequest(
                    f"direct keys are not supported for provider: {adapter.name}", code="direct_key_unsupported"
                )
            # Provider settings other than the secret (an Azure endpoint, say) come from the first key.
            template = adapter.config.keys[0] if adapter.config.keys else Key(id="direct", name="direct", value="")
            return (replace(template, id="direct", name="direct", value=caller.direct_key),)
        keys = adapter.config.batch_keys
        if allowed_key_ids is not None:
            keys = tuple(key for key in keys if key.id in allowed_key_ids)
        if not keys:
            raise InvalidRequest(f"no batch-enabled keys found for provider: {adapter.name}", code="no_batch_keys")
        return keys

    def _send_back_raw(self, adapter: Adapter, command: CancelCommand) -> bool:
        if adapter.config.send_back_raw_response:
            return True
        return command.raw_response_requested and self.config.client.allow_per_request_raw_override
