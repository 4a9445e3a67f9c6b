"""The cancel use case: resolve the provider, authorize the caller, cancel with key failover, read
the batch back, and answer in unified terms.

A `Canceller` serves one loaded config; what it runs on (each provider's adapter, pooled executor
and admission queue, the authenticator, how waits run) is built and carried over reloads by
service.runtime.build. Its public steps, which other use cases (bulk, operations) compose:

- `provider(name)`: resolve a configured provider (400 when unknown, unable to cancel or not
  configured); `adapters()` lists them.
- `target(caller, provider, batch_id)`: resolve + authorize. Raises the 400/403/429 of the call
  before any upstream request; the `Target` holds the keys the caller may use, in order.
  `Target.only_key(key_id)` narrows it to one configured key (400 when not among them).
  `scoped_target(caller, provider, batch_id, key_id)` does the same for work the caller already
  started (an operation's batch: its scope checked, its rate limit not counted again, optionally
  one key); `batch_keys(caller, provider)` are the keys a listing goes through.
- `cancel_target(target, command, call)`: the cancel itself, within the provider's admission limit
  and the call's deadline (`call.deadline`), trying the target's keys in turn
  (service.usecases.failover), then reading the batch (service.usecases.readback). Returns the
  `CancelOutcome`: the result, and the target narrowed to the key that cancelled.
- `read(target, batch_id, call)`: read back a cancelled batch with that narrowed target.
- `cancel(command, call)`: all of it for a single cancel, waiting when the command asks to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from time import perf_counter
from typing import Any

from service.config.file import Config, Key
from service.domain.errors import GatewayError, InvalidRequest, UnsupportedOperation
from service.domain.model import BatchState, CancelCommand, CancelResult
from service.infra.observability import use_provider_labels
from service.infra.providers.base import Adapter
from service.infra.providers.catalog import KNOWN_PROVIDERS, NO_BATCH_CANCEL, UNSUPPORTED_REASONS
from service.infra.redaction import Redactor, config_secrets
from service.usecases.auth import Authenticator, Caller
from service.usecases.context import CallContext
from service.usecases.failover import cancel_with_failover
from service.usecases.readback import read_back, state_after_cancel
from service.usecases.target import CancelOutcome, Provider, Target, exchange_deadline
from service.usecases.waiting import Waiting, wait_for_terminal

_PROVIDER_NAME = re.compile(r"^[a-z0-9_-]{1,32}$")
use_provider_labels(KNOWN_PROVIDERS)


class Canceller:
    """The cancel use case for one loaded config: `providers` are the configured providers that can
    cancel (by name), `auth` identifies and authorizes callers, `waiting` (shared by every config)
    says how waits run."""

    def __init__(
        self,
        config: Config,
        providers: Mapping[str, Provider],
        auth: Authenticator,
        waiting: Waiting | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.config = config
        self.providers = providers
        self.auth = auth
        self.waiting = waiting if waiting is not None else Waiting()
        # Every secret of this config (service.infra.redaction): its providers mask their answers
        # with it, and log lines pass it.
        self.redactor = redactor if redactor is not None else Redactor(config_secrets(config))

    async def cancel(self, command: CancelCommand, call: CallContext) -> CancelResult:
        """A single cancel. Everything that can refuse the call does so before any upstream request."""
        caller = self.auth.authenticate(call.headers)
        call.caller = caller.identity
        target = await self.target(caller, command.provider, command.batch_id)
        adapter = target.provider.adapter
        if command.sdk_provider == adapter.name:
            # The provider's own drop-in route passes some of its SDK's headers through (Anthropic's
            # anthropic-version): the caller's SDK expects the answer shape they choose.
            try:
                target = replace(target, passed=adapter.caller_headers(call.headers))
            except GatewayError as err:
                err.provider = adapter.name
                raise
        outcome = await self.cancel_target(target, command, call)
        if command.wait_seconds > 0:
            return await wait_for_terminal(self, outcome, command, call)
        return outcome.result

    async def target(self, caller: Caller, provider: str, batch_id: str) -> Target:
        """What a cancel of `batch_id` on `provider` needs, once the caller may do it: raises the
        single cancel's 400/403/429 before any upstream call."""
        resolved = self.provider(provider)
        adapter = resolved.adapter
        try:
            allowed_key_ids = self.auth.scope(caller, adapter.name)
            ref = adapter.parse_id(batch_id)
            keys = self._keys(resolved, caller, allowed_key_ids)
            # Counted last: a call refused for its id or keys spends none of the key's rate limit.
            await self.auth.count(caller)
        except GatewayError as err:
            err.provider = adapter.name
            raise
        return Target(resolved, ref, keys)

    def scoped_target(self, caller: Caller, provider: str, batch_id: str, key_id: str | None = None) -> Target:
        """A target for work the caller already started (a batch of a long-running operation): the
        provider and the caller's scope are checked as for `target`, but no call is counted against
        its rate limit again; with `key_id`, that configured key alone (a batch is cancelled and read
        with the key whose account it was found in, never another). Raises 400/403."""
        resolved = self.provider(provider)
        adapter = resolved.adapter
        try:
            allowed_key_ids = self.auth.scope(caller, adapter.name)
            ref = adapter.parse_id(batch_id)
            keys = self._keys(resolved, caller, allowed_key_ids)
            if key_id is not None:
                keys = tuple(key for key in keys if key.id == key_id)
                if not keys:
                    raise InvalidRequest(
                        f"key {key_id!r} is no longer configured for batches of {adapter.name}", code="no_batch_keys"
                    )
        except GatewayError as err:
            err.provider = adapter.name
            raise
        return Target(resolved, ref, keys)

    def batch_keys(self, caller: Caller, provider: str) -> tuple[Key, ...]:
        """The configured batch keys the caller may use on `provider`, in the order they are tried
        (listing goes through each: every key may be another account). Raises 400/403."""
        resolved = self.provider(provider)
        try:
            return self._keys(resolved, caller, self.auth.scope(caller, resolved.name))
        except GatewayError as err:
            err.provider = resolved.name
            raise

    async def cancel_target(self, target: Target, command: CancelCommand, call: CallContext) -> CancelOutcome:
        """The cancel call itself, within the provider's admission limit and the call's deadline."""
        adapter = target.provider.adapter
        deadline = exchange_deadline(target, call)
        async with target.provider.admission.slot():
            started = perf_counter()
            accepted = await cancel_with_failover(target, call, deadline)
            state = await state_after_cancel(accepted, command.batch_id, call, deadline)
        result = CancelResult(
            state.batch,
            adapter.name,
            int((perf_counter() - started) * 1000),
            state.raw if self._send_back_raw(target, command) else None,
            state.warning,
        )
        return CancelOutcome(result, accepted.target)

    async def read(self, target: Target, batch_id: str, call: CallContext) -> tuple[BatchState, Any]:
        """Reads a cancelled batch back with the provider's retrieve call and the key that cancelled
        it (`CancelOutcome.read_back`; admission, breaker and retries as for a cancel). Raises the
        provider's error."""
        deadline = exchange_deadline(target, call)
        async with target.provider.admission.slot():
            return await read_back(target, batch_id, call, deadline)

    def breaker_states(self) -> dict[str, str]:
        """Circuit state per configured provider that can cancel (for health reporting)."""
        return {name: provider.executor.breaker.state for name, provider in self.providers.items()}

    def adapters(self) -> dict[str, Adapter]:
        """The adapter of every configured provider that can cancel, by name."""
        return {name: provider.adapter for name, provider in self.providers.items()}

    def provider(self, provider: str) -> Provider:
        """A configured provider that can cancel (its adapter, executor and admission queue: a
        cancel's or a listing's); raises the single cancel's 400 for a provider that is unknown,
        cannot cancel or is not configured."""
        if not provider:
            raise InvalidRequest("provider query parameter is required", param="provider")
        if not _PROVIDER_NAME.match(provider) or provider not in KNOWN_PROVIDERS:
            raise InvalidRequest(f"unknown provider: {provider[:64]}", code="unknown_provider", param="provider")
        if provider in NO_BATCH_CANCEL:
            message = UNSUPPORTED_REASONS.get(provider, f"batch cancel is not supported by provider: {provider}")
            raise UnsupportedOperation(message, provider=provider)
        resolved = self.providers.get(provider)
        if resolved is None:
            raise InvalidRequest(
                f"provider is not configured: {provider}", code="provider_not_configured", provider=provider
            )
        return resolved

    @staticmethod
    def _keys(provider: Provider, caller: Caller, allowed_key_ids: frozenset[str] | None) -> tuple[Key, ...]:
        """The keys to try, in order: the caller's direct key alone, or the configured batch keys
        the caller's virtual key allows."""
        adapter = provider.adapter
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

    def _send_back_raw(self, target: Target, command: CancelCommand) -> bool:
        if target.provider.adapter.config.send_back_raw_response:
            return True
        return command.raw_response_requested and self.config.client.allow_per_request_raw_override
