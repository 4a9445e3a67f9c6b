"""What a cancel is aimed at: one configured provider (its adapter, pooled executor and admission
queue) and one batch on it with the keys that may be tried (`Target`), and the small rules every
upstream exchange of a target follows (its deadline, the headers passed through, reading the
provider's answer as a batch)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from service.config.file import Key
from service.domain.errors import GatewayError, InvalidRequest, UpstreamUnavailable
from service.domain.model import BatchState, CancelResult
from service.infra.observability import CallRecord
from service.infra.providers.base import Adapter, UpstreamRequest, UpstreamResponse, merge_headers
from service.infra.redaction import Redactor, request_credentials
from service.infra.resilience import Admission, CircuitBreaker
from service.usecases.context import CallContext

log = logging.getLogger(__name__)


class Sender(Protocol):
    """Whatever sends one exchange upstream: an executor, or a `Provider` (which masks the answer)."""

    async def send(
        self, request: UpstreamRequest, deadline: float, record: CallRecord | None = None
    ) -> UpstreamResponse: ...


class Executor(Protocol):
    """What the use case needs of an upstream executor (service.infra.providers.http.HttpExecutor;
    tests pass fakes)."""

    breaker: CircuitBreaker

    async def send(
        self, request: UpstreamRequest, deadline: float, record: CallRecord | None = None
    ) -> UpstreamResponse: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Provider:
    """One configured provider that can cancel, as one config runs it: its adapter (which holds its
    `ProviderConfig`), its pooled executor (with the circuit breaker), its admission queue, and the
    config's secrets (`redactor`). Built by service.runtime.providers, which carries unchanged parts
    over a reload. Exchanges go through `send` and `prepare`, never the executor or adapter alone:
    whatever the provider says comes back with the secrets masked."""

    adapter: Adapter
    executor: Executor
    admission: Admission
    redactor: Redactor = field(default_factory=Redactor)

    @property
    def name(self) -> str:
        return self.adapter.name

    async def send(
        self, request: UpstreamRequest, deadline: float, record: CallRecord | None = None
    ) -> UpstreamResponse:
        """One exchange through the pooled executor. The answer's body and headers come back with
        every secret of the config, and the credentials this request carried (a caller's direct key,
        a minted token), masked before anything reads them: error messages, raw_response, logs."""
        response = await self.executor.send(request, deadline, record)
        masking = self.redactor.with_secrets(request_credentials(request.headers))
        response.body = masking.data(response.body)
        response.headers = masking.headers(response.headers)
        return response

    async def prepare(self, key: Key, request: UpstreamRequest) -> UpstreamRequest:
        """The adapter's signing or token minting; what a token endpoint said comes back masked."""
        try:
            return await self.adapter.prepare(key, request)
        except GatewayError as err:
            err.message = self.redactor.text(err.message)
            err.args = (err.message,)
            raise


@dataclass(frozen=True, slots=True)
class Target:
    """One batch the caller may cancel: its provider, the adapter's reference to it (`parse_id`),
    the keys to try in order, and the caller's SDK headers passed through to the provider."""

    provider: Provider
    ref: Any
    keys: tuple[Key, ...]
    passed: Mapping[str, str] = field(default_factory=dict)

    def with_key(self, key: Key) -> Target:
        """The same batch with one key alone (the key whose account holds it)."""
        return replace(self, keys=(key,))

    def only_key(self, key_id: str) -> Target:
        """The same batch restricted to the configured key `key_id`; InvalidRequest (400) when the
        caller may not use that key here."""
        for key in self.keys:
            if key.id == key_id:
                return self.with_key(key)
        raise InvalidRequest(
            f"key {key_id[:64]} is not a batch key this caller may use on {self.provider.name}",
            code="key_not_allowed",
            provider=self.provider.name,
        )

    @property
    def key(self) -> Key:
        """The first key to try (the only one once narrowed with `with_key`)."""
        return self.keys[0]


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """A cancel the provider accepted: the answer for the caller, and the target narrowed to the
    key that cancelled it (the batch lives in that key's account), to read the batch back with."""

    result: CancelResult
    read_back: Target


def exchange_deadline(target: Target, call: CallContext) -> float:
    """Loop time by which one upstream exchange must end: the provider's timeout, within the call's
    own deadline."""
    deadline = asyncio.get_running_loop().time() + target.provider.adapter.config.network.timeout_s
    return deadline if call.deadline is None else min(deadline, call.deadline)


def outgoing(target: Target, request: UpstreamRequest, record: CallRecord | None) -> UpstreamRequest:
    """Adds the caller's passed-through headers, and the request id where the provider takes one
    (OpenAI X-Client-Request-Id)."""
    adapter = target.provider.adapter
    passed = target.passed
    if adapter.request_id_header and record is not None:
        passed = {**passed, adapter.request_id_header: record.request_id}
    if passed:
        request.headers = merge_headers(request.headers, passed)
    return request


def parse_batch(adapter: Adapter, batch_id: str, data: Any) -> BatchState:
    """The adapter's reading of a 2xx answer; an answer of the wrong shape (a string where an object
    belongs, say) is the provider's failure (502), never a crash."""
    try:
        return adapter.parse_batch(batch_id, data)
    except GatewayError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError):
        log.warning("%s answered a batch of an unexpected shape", adapter.name, exc_info=True)
        raise UpstreamUnavailable(
            f"{adapter.name} answered with an unexpected batch shape", provider=adapter.name
        ) from None
