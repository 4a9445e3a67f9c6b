"""The cancel use case: pick the provider and its keys, call it, and answer in unified terms."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from time import perf_counter
from typing import Any, Protocol

from service.config.file import Config, Key, ProviderConfig
from service.domain.errors import (
    DeadlineExceeded,
    GatewayError,
    InvalidRequest,
    UnsupportedOperation,
    UpstreamUnavailable,
)
from service.domain.model import BatchState, CancelCommand, CancelResult
from service.infra.limits import RateLimiter
from service.infra.observability import KEY_FAILOVERS, CallRecord, provider_series, use_provider_labels
from service.infra.providers.base import (
    Adapter,
    UpstreamRequest,
    UpstreamResponse,
    after_accepted_cancel,
    decode_json,
    merge_headers,
)
from service.infra.providers.catalog import ADAPTERS, KNOWN_PROVIDERS, NO_BATCH_CANCEL, UNSUPPORTED_REASONS
from service.infra.providers.http import HttpExecutor, RetryPolicy, keep_retry_after
from service.infra.resilience import Admission, CircuitBreaker
from service.usecases.auth import Authenticator, Caller
from service.usecases.context import CallContext
from service.usecases.waiting import PollPolicy, wait_for_terminal

log = logging.getLogger(__name__)

# Upstream answers that settle the matter for this batch: another key would not change them.
# Anything else (401/403 for this key, 404 because the batch lives in another key's account,
# 429/5xx after retries) moves on to the next eligible key.
FINAL_STATUSES = frozenset({400, 409, 422})
_PROVIDER_NAME = re.compile(r"^[a-z0-9_-]{1,32}$")
use_provider_labels(KNOWN_PROVIDERS)


@dataclass(slots=True)
class Target:
    """One batch the caller may cancel: its provider's adapter and executor, the keys to try, and
    the adapter's reference to the batch, and the caller's headers passed through to the provider."""

    adapter: Adapter
    executor: Executor
    keys: tuple[Key, ...]
    ref: Any
    passed: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ReadBack:
    """What reading a cancelled batch back needs: the key whose account holds it."""

    adapter: Adapter
    executor: Executor
    key: Key
    ref: Any
    passed: dict[str, str] = field(default_factory=dict)


def default_breaker(name: str, config: ProviderConfig, clock: Callable[[], float] = time.monotonic) -> CircuitBreaker:
    net = config.network
    return CircuitBreaker(name, net.breaker_failure_threshold, net.breaker_open_seconds, clock=clock)


def default_admission(name: str, config: ProviderConfig) -> Admission:
    return Admission(name, config.concurrency, config.buffer_size)


def default_authenticator(config: Config, limiter: RateLimiter | None) -> Authenticator:
    return Authenticator(config, limiter=limiter)


def default_executor(name: str, config: ProviderConfig, breaker: CircuitBreaker) -> HttpExecutor:
    return HttpExecutor(name, config.network, config.concurrency, breaker, RetryPolicy.from_network(config.network))


class Executor(Protocol):
    """What the use case needs of an upstream executor (service.infra.providers.http.HttpExecutor; tests
    pass fakes)."""

    breaker: CircuitBreaker

    async def send(
        self, request: UpstreamRequest, deadline: float, record: CallRecord | None = None
    ) -> UpstreamResponse: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Collaborators:
    """How a Canceller builds the parts it does not own the logic of. The defaults are the real
    ones; tests pass fakes here (an executor factory answering from memory, a stepped clock)
    instead of patching classes."""

    executor: Callable[[str, ProviderConfig, CircuitBreaker], Executor] = default_executor
    breaker: Callable[[str, ProviderConfig, Callable[[], float]], CircuitBreaker] = default_breaker
    admission: Callable[[str, ProviderConfig], Admission] = default_admission
    authenticator: Callable[[Config, RateLimiter | None], Authenticator] = default_authenticator
    # The breakers' clock (monotonic seconds).
    clock: Callable[[], float] = time.monotonic


class Canceller:
    """Holds one adapter and one pooled HTTP executor per configured provider.

    Built once per loaded config. `limiter` outlives configs (rate-limit counts carry over a
    reload), and with `previous` (the canceller of the config being replaced) whatever did not
    change is taken over rather than rebuilt: a provider's adapter (token caches) when its block is
    unchanged, its executor (connection pool and circuit breaker) when its network settings are,
    its admission queue when its limits are. Taken-over parts are then shared with `previous` until
    its in-flight calls end (service.runtime.live closes what is no longer used). `parts` builds the
    executors, breakers, admission queues and authenticator (by default the real ones, else those
    of `previous`)."""

    def __init__(
        self,
        config: Config,
        limiter: RateLimiter | None = None,
        previous: Canceller | None = None,
        poll_policy: PollPolicy | None = None,
        parts: Collaborators | None = None,
    ) -> None:
        self.config = config
        self.parts = parts = parts or (previous.parts if previous is not None else Collaborators())
        # How a wait reads batches back (service.usecases.waiting); tests pass a faster one.
        self.poll_policy = poll_policy or (previous.poll_policy if previous is not None else PollPolicy())
        # Set once the service drains: waits end at once with the last known state. Shared across
        # reloads, so a drain reaches waits that started under an older config.
        self.stopping = previous.stopping if previous is not None else asyncio.Event()
        self.auth = parts.authenticator(config, limiter)
        old = previous.config.providers if previous is not None else {}
        self._providers: dict[str, tuple[Adapter, Executor]] = {}
        self._admission: dict[str, Admission] = {}
        for name, pc in config.providers.items():
            provider_series(name)
            before = old.get(name)
            if name in ADAPTERS:
                adapter, executor = previous._providers[name] if before is not None else (None, None)
                if before != pc:
                    adapter = ADAPTERS[name](pc)
                if before is None or (before.network, before.concurrency) != (pc.network, pc.concurrency):
                    executor = parts.executor(name, pc, parts.breaker(name, pc, parts.clock))
                self._providers[name] = (adapter, executor)
            same_limits = before is not None and (before.concurrency, before.buffer_size) == (
                pc.concurrency,
                pc.buffer_size,
            )
            self._admission[name] = previous._admission[name] if same_limits else parts.admission(name, pc)

    def executors(self) -> list[Executor]:
        return [executor for _, executor in self._providers.values()]

    def adapters(self) -> dict[str, Adapter]:
        """The adapter of every configured provider that can cancel, by name."""
        return {name: adapter for name, (adapter, _) in self._providers.items()}

    def provider(self, name: str) -> tuple[Adapter, Executor]:
        """A configured provider's adapter and executor (for listing its batches); raises the
        single cancel's 400 for a provider that is unknown, cannot cancel or is not configured."""
        return self._resolve(name)

    async def close(self) -> None:
        await asyncio.gather(*(executor.close() for executor in self.executors()))

    def _resolve(self, provider: str) -> tuple[Adapter, Executor]:
        if not provider:
            raise InvalidRequest("provider query parameter is required", param="provider")
        if not _PROVIDER_NAME.match(provider) or provider not in KNOWN_PROVIDERS:
            raise InvalidRequest(f"unknown provider: {provider[:64]}", code="unknown_provider", param="provider")
        if provider in NO_BATCH_CANCEL:
            message = UNSUPPORTED_REASONS.get(provider, f"batch cancel is not supported by provider: {provider}")
            raise UnsupportedOperation(message, provider=provider)
        entry = self._providers.get(provider)
        if entry is None:
            raise InvalidRequest(
                f"provider is not configured: {provider}", code="provider_not_configured", provider=provider
            )
        return entry

    async def cancel(
        self, command: CancelCommand, call: CallContext, time_remaining: float | None = None
    ) -> CancelResult:
        # Everything that can refuse the call does so before any upstream request.
        caller = self.auth.authenticate(call.headers)
        call.caller = caller.identity
        target = await self.target(caller, command.provider, command.batch_id)
        if command.surface and command.surface == target.adapter.sdk_surface:
            # The provider's own drop-in route passes some of its SDK's headers through (Anthropic's
            # anthropic-version): the caller's SDK expects the answer shape they choose.
            try:
                target.passed = target.adapter.caller_headers(call.headers)
            except GatewayError as err:
                err.provider = target.adapter.name
                raise
        call_end = None if time_remaining is None else asyncio.get_running_loop().time() + time_remaining
        result = await self.cancel_target(target, command, call, call_end)
        if command.wait_seconds > 0:
            result = await wait_for_terminal(self, result, command, call, call_end)
        return result

    async def target(self, caller: Caller, provider: str, batch_id: str) -> Target:
        """What a cancel of `batch_id` on `provider` needs, once the caller may do it: raises the
        single cancel's 400/403/429 before any upstream call."""
        adapter, executor = self._resolve(provider)
        try:
            allowed_key_ids = await self.auth.authorize(caller, adapter.name)
            ref = adapter.parse_id(batch_id)
            keys = self._keys(adapter, caller, allowed_key_ids)
        except GatewayError as err:
            err.provider = adapter.name
            raise
        return Target(adapter, executor, keys, ref)

    def scoped_target(self, caller: Caller, provider: str, batch_id: str, key_id: str | None = None) -> Target:
        """A target for work the caller already started (a batch of a long-running operation): the
        provider and the caller's scope are checked as for `target`, but no call is counted against
        its rate limit again; with `key_id`, that configured key alone (a batch is cancelled and read
        with the key whose account it was found in, never another). Raises 400/403."""
        adapter, executor = self._resolve(provider)
        try:
            allowed_key_ids = self.auth.scope(caller, adapter.name)
            ref = adapter.parse_id(batch_id)
            keys = self._keys(adapter, caller, allowed_key_ids)
            if key_id is not None:
                keys = tuple(key for key in keys if key.id == key_id)
                if not keys:
                    raise InvalidRequest(
                        f"key {key_id!r} is no longer configured for batches of {adapter.name}", code="no_batch_keys"
                    )
        except GatewayError as err:
            err.provider = adapter.name
            raise
        return Target(adapter, executor, keys, ref)

    def batch_keys(self, caller: Caller, provider: str) -> tuple[Key, ...]:
        """The configured batch keys the caller may use on `provider`, in the order they are tried
        (listing goes through each: every key may be another account). Raises 400/403."""
        adapter, _ = self._resolve(provider)
        try:
            return self._keys(adapter, caller, self.auth.scope(caller, adapter.name))
        except GatewayError as err:
            err.provider = adapter.name
            raise

    async def cancel_target(
        self, target: Target, command: CancelCommand, call: CallContext, call_end: float | None
    ) -> CancelResult:
        """The cancel call itself, within the provider's admission limit and the call's deadline."""
        adapter = target.adapter
        deadline = self._deadline(adapter, call_end)
        async with self._admission[adapter.name].slot():
            return await self._cancel(
                adapter, target.executor, target.keys, target.ref, command, call.record, deadline, target.passed
            )

    async def read(
        self, handle: ReadBack, command: CancelCommand, call: CallContext, call_end: float | None
    ) -> tuple[BatchState, Any]:
        """Reads a cancelled batch back with the provider's retrieve call and the key that cancelled
        it (admission, breaker and retries as for a cancel). Raises the provider's error."""
        adapter = handle.adapter
        request = adapter.retrieve_request(handle.key, handle.ref)
        if request is None:
            raise UnsupportedOperation(f"reading a batch back is not supported by provider: {adapter.name}")
        request = self._outgoing(adapter, request, call.record, handle.passed)
        request.operation = "read"
        deadline = self._deadline(adapter, call_end)
        async with self._admission[adapter.name].slot():
            answer = await handle.executor.send(await adapter.prepare(handle.key, request), deadline, call.record)
        if answer.status >= 300:
            raise keep_retry_after(adapter.parse_error(answer), answer)
        data = decode_json(answer, adapter.name)
        state = self._parse(adapter, command.batch_id, data)
        state.id = command.batch_id
        state.status = after_accepted_cancel(state.status)
        return state, data

    @staticmethod
    def _deadline(adapter: Adapter, call_end: float | None) -> float:
        """Loop time by which one upstream exchange must end: the provider's timeout, within the call's."""
        deadline = asyncio.get_running_loop().time() + adapter.config.network.timeout_s
        return deadline if call_end is None else min(deadline, call_end)

    def breaker_states(self) -> dict[str, str]:
        """Circuit state per configured provider that can cancel (for health reporting)."""
        return {name: executor.breaker.state for name, (_, executor) in self._providers.items()}

    async def _cancel(
        self,
        adapter: Adapter,
        executor: Executor,
        keys: tuple[Key, ...],
        ref: Any,
        command: CancelCommand,
        record: CallRecord | None,
        deadline: float,
        passed: dict[str, str],
    ) -> CancelResult:
        started = perf_counter()
        error: GatewayError | None = None
        for index, key in enumerate(keys):
            if index and record is not None:
                record.key_failovers += 1
                KEY_FAILOVERS.labels(adapter.name).inc()
            try:
                request = self._outgoing(adapter, adapter.cancel_request(key, ref), record, passed)
                request = await adapter.prepare(key, request)
            except (DeadlineExceeded, InvalidRequest):
                raise
            except GatewayError as err:  # this key's credentials could not be used (token mint failed)
                error = err
                continue
            response = await executor.send(request, deadline, record)
            if response.status < 300:
                batch, raw, warning = await self._read_state(
                    adapter, executor, key, ref, command, record, response, deadline, passed
                )
                batch.id = command.batch_id  # answer with the id in the form the caller sent it
                batch.status = after_accepted_cancel(batch.status)
                if not self._send_back_raw(adapter, command):
                    raw = None
                return CancelResult(
                    batch,
                    adapter.name,
                    int((perf_counter() - started) * 1000),
                    raw,
                    warning,
                    read_back=ReadBack(adapter, executor, key, ref, passed),
                )
            error = keep_retry_after(adapter.parse_error(response), response)
            if error.status_code in FINAL_STATUSES and error.type != "authentication_error":
                break  # about the batch, not the key (Gemini says a bad key with a 400)
        assert error is not None
        raise error

    @staticmethod
    def _outgoing(
        adapter: Adapter, request: UpstreamRequest, record: CallRecord | None, passed: dict[str, str]
    ) -> UpstreamRequest:
        """Adds the caller's passed-through headers, and the request id where the provider takes one
        (OpenAI X-Client-Request-Id)."""
        if adapter.request_id_header and record is not None:
            passed = {**passed, adapter.request_id_header: record.request_id}
        if passed:
            request.headers = merge_headers(request.headers, passed)
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
        self,
        adapter: Adapter,
        executor: Executor,
        key: Key,
        ref: Any,
        command: CancelCommand,
        record: CallRecord | None,
        response,
        deadline: float,
        passed: dict[str, str],
    ) -> tuple[BatchState, Any, str | None]:
        """The batch after an accepted cancel: from the cancel answer itself, or from a follow-up read
        for providers whose cancel answers `{}`. A failed follow-up read still reports the cancel
        (status `cancelling`) with a warning: the cancel did happen. Either way a batch that has not
        finished is then reported as `cancelling` (`after_accepted_cancel`), whatever the provider's
        answer still says."""
        cancel_data = decode_json(response, adapter.name)
        follow_up = adapter.status_request(key, ref)
        if follow_up is None:
            return self._parse(adapter, command.batch_id, cancel_data), cancel_data, None
        try:
            follow_up = self._outgoing(adapter, follow_up, record, passed)
            follow_up.operation = "read"
            answer = await executor.send(await adapter.prepare(key, follow_up), deadline, record)
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
                # Never fall back to the gateway's own credentials for a call that brought its own.
                raise InvalidRequest(
                    f"direct keys are not supported for provider: {adapter.name} (its requests are authenticated "
                    "with the configured key settings, not a caller's key); call it with a virtual key instead",
                    code="direct_key_unsupported",
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
