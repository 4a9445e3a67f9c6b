"""What one loaded config runs with, and carrying it over a reload.

A `Runtime` is one config and its `Canceller`: each provider's adapter, pooled HTTP executor (with
its circuit breaker) and admission queue, and the authenticator. `RuntimeFactory` builds it. With
the runtime being replaced, whatever did not change is taken over rather than rebuilt: a provider's
adapter (token caches) when its block is unchanged, its executor (connection pool and circuit
breaker) when its network settings are, its admission queue when its limits are. Taken-over
executors are then shared by the old and the new runtime until the old one's last call ends;
`Pools` counts their uses and closes one when no runtime uses it any more. The rate limiter and
`Waiting` live outside every runtime: counts and a drain carry over reloads.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from service.config.file import Config, ProviderConfig
from service.infra.limits import RateLimiter
from service.infra.observability import provider_series
from service.infra.providers.catalog import ADAPTERS
from service.infra.providers.http import HttpExecutor, RetryPolicy
from service.infra.redaction import Redactor, config_secrets
from service.infra.resilience import Admission, CircuitBreaker
from service.usecases.auth import Authenticator
from service.usecases.cancel import Canceller
from service.usecases.target import Executor, Provider
from service.usecases.waiting import Waiting


def default_breaker(name: str, config: ProviderConfig, clock: Callable[[], float] = time.monotonic) -> CircuitBreaker:
    net = config.network
    return CircuitBreaker(name, net.breaker_failure_threshold, net.breaker_open_seconds, clock=clock)


def default_admission(name: str, config: ProviderConfig) -> Admission:
    return Admission(name, config.concurrency, config.buffer_size)


def default_authenticator(config: Config, limiter: RateLimiter | None) -> Authenticator:
    return Authenticator(config, limiter=limiter)


def default_executor(name: str, config: ProviderConfig, breaker: CircuitBreaker) -> HttpExecutor:
    return HttpExecutor(config, breaker, RetryPolicy.from_network(config.network))


@dataclass(frozen=True, slots=True)
class Collaborators:
    """How a runtime's parts are built. The defaults are the real ones; tests pass fakes here (an
    executor factory answering from memory, a stepped clock) instead of patching classes."""

    executor: Callable[[str, ProviderConfig, CircuitBreaker], Executor] = default_executor
    breaker: Callable[[str, ProviderConfig, Callable[[], float]], CircuitBreaker] = default_breaker
    admission: Callable[[str, ProviderConfig], Admission] = default_admission
    authenticator: Callable[[Config, RateLimiter | None], Authenticator] = default_authenticator
    # The breakers' clock (monotonic seconds).
    clock: Callable[[], float] = time.monotonic


def build_providers(
    config: Config, parts: Collaborators, previous: Mapping[str, Provider], redactor: Redactor | None = None
) -> dict[str, Provider]:
    """Each configured provider that can cancel, taking over from `previous` (the providers of the
    runtime being replaced) what did not change; each masks its answers with `redactor` (default:
    the config's secrets)."""
    redactor = redactor if redactor is not None else Redactor(config_secrets(config))
    return {
        name: _provider(pc, parts, previous.get(name), redactor)
        for name, pc in config.providers.items()
        if name in ADAPTERS
    }


def _provider(pc: ProviderConfig, parts: Collaborators, old: Provider | None, redactor: Redactor) -> Provider:
    name = pc.name
    if old is None:
        return Provider(ADAPTERS[name](pc), _executor(pc, parts), parts.admission(name, pc), redactor)
    before = old.adapter.config
    adapter = old.adapter if before == pc else ADAPTERS[name](pc)
    same_pool = (before.network, before.concurrency) == (pc.network, pc.concurrency)
    same_limits = (before.concurrency, before.buffer_size) == (pc.concurrency, pc.buffer_size)
    return Provider(
        adapter,
        old.executor if same_pool else _executor(pc, parts),
        old.admission if same_limits else parts.admission(name, pc),
        redactor,  # this config's secrets, whatever was taken over
    )


def _executor(pc: ProviderConfig, parts: Collaborators) -> Executor:
    return parts.executor(pc.name, pc, parts.breaker(pc.name, pc, parts.clock))


class Pools:
    """The executors (connection pools, breakers) of the runtimes alive now, the current one and
    those still draining, by use count. One that no runtime uses any more is closed."""

    def __init__(self) -> None:
        self._uses: collections.Counter[Executor] = collections.Counter()
        self._closing: set[asyncio.Task[None]] = set()

    def hold(self, providers: Mapping[str, Provider]) -> None:
        self._uses.update(provider.executor for provider in providers.values())

    def release(self, providers: Mapping[str, Provider]) -> None:
        for provider in providers.values():
            executor = provider.executor
            self._uses[executor] -= 1
            if self._uses[executor] <= 0:
                del self._uses[executor]
                self._close_soon(executor)

    def __contains__(self, executor: object) -> bool:
        return executor in self._uses

    def _close_soon(self, executor: Executor) -> None:
        try:
            task = asyncio.get_running_loop().create_task(executor.close())
        except RuntimeError:  # no loop: nothing was ever opened
            return
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """At shutdown: closes every pool still open, and waits for those already closing."""
        executors = list(self._uses)
        self._uses.clear()
        await asyncio.gather(*(executor.close() for executor in executors), *self._closing)


class Runtime:
    """One loaded config and what is built from it. A call holds it (`with runtime:`) from start to
    end; once retired and left by its last call it tells its owner, which frees what no other
    runtime uses."""

    __slots__ = ("config", "canceller", "version", "loaded_at", "in_flight", "retired", "_on_drained")

    def __init__(
        self, canceller: Canceller, version: str, loaded_at: float, on_drained: Callable[[Runtime], None]
    ) -> None:
        self.config, self.canceller, self.version, self.loaded_at = canceller.config, canceller, version, loaded_at
        self.in_flight = 0
        self.retired = False
        self._on_drained = on_drained

    def __enter__(self) -> Runtime:
        self.in_flight += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.in_flight -= 1
        if self.retired and not self.in_flight:
            self._on_drained(self)

    def retire(self) -> None:
        """Replaced by a newer runtime: frees its parts once its last call ended (now if none runs)."""
        self.retired = True
        if not self.in_flight:
            self._on_drained(self)


class RuntimeFactory:
    """Builds the runtime of each config this process loads, with the parts that outlive them all:
    the rate limiter (counts carry over a reload), `waiting` (a drain reaches waits that started
    under an older config), the collaborators `parts`, the pools, and `clock` (unix time, for the
    load time a runtime reports)."""

    def __init__(
        self,
        limiter: RateLimiter,
        parts: Collaborators | None = None,
        waiting: Waiting | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limiter = limiter
        self.parts = parts if parts is not None else Collaborators()
        self.waiting = waiting if waiting is not None else Waiting()
        self.pools = Pools()
        self._clock = clock

    @classmethod
    def for_config(cls, config: Config, parts: Collaborators | None = None) -> RuntimeFactory:
        """A factory with the rate limiter `config.store` names (a plain config's server, tests)."""
        return cls(RateLimiter.for_config(config.store), parts)

    def build(self, config: Config, version: str, previous: Runtime | None = None) -> Runtime:
        """The runtime of `config`, taking over from `previous` what did not change."""
        for name in config.providers:
            provider_series(name)  # its counters exist at 0 before their first event (alerts read rate())
        redactor = Redactor(config_secrets(config))
        providers = build_providers(config, self.parts, previous.canceller.providers if previous else {}, redactor)
        auth = self.parts.authenticator(config, self.limiter)
        canceller = Canceller(config, providers, auth, self.waiting, redactor)
        self.pools.hold(providers)
        return Runtime(canceller, version, self._clock(), self._drained)

    def _drained(self, runtime: Runtime) -> None:
        """The last call of a replaced runtime ended: close the pools no other runtime uses."""
        self.pools.release(runtime.canceller.providers)

    async def close(self) -> None:
        """At shutdown, after the server stopped: closes every pool still open."""
        await self.pools.close()
