"""What every operation this worker runs shares: the store and this worker's name in it, the config
current at each step, the time it runs on, the policy, and how a finished operation is announced."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from service.config.file import Config
from service.domain.operations import BatchItem, Operation
from service.infra.operation_store import OperationStore
from service.infra.timing import Timing
from service.usecases.cancel import Canceller
from service.usecases.operations.policy import OperationPolicy

# Operations run on unix time: an operation's creation, its deadline, leases and the webhook's
# schedule are stored and compared across workers and restarts.
UNIX_TIME = Timing(clock=time.time)


class Runtime(Protocol):
    """One loaded config and what is built from it (service.runtime.live.Runtime), held while in use."""

    config: Config
    canceller: Canceller

    def __enter__(self) -> Runtime: ...

    def __exit__(self, *exc: object) -> None: ...


class Runtimes(Protocol):
    """Whatever gives the runtime current now (service.runtime.live.LiveConfig)."""

    @property
    def current(self) -> Runtime: ...


class Sender(Protocol):
    """POSTs a signed webhook body (service.infra.webhook.WebhookSender)."""

    async def post(self, url: str, body: bytes, secret: str) -> int: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Webhook:
    """How a finished operation is announced: `render` makes the body (what GetOperation answers, as
    JSON), `sender` posts it."""

    render: Callable[[Operation, list[BatchItem]], Awaitable[bytes]]
    sender: Sender


def new_holder() -> str:
    """This process's name as a lease holder: unique per start."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class Worker:
    """This worker's side of operations: `store` (shared with the other workers and replicas), in
    which it holds leases as `holder`; `runtimes`, the config current at each step; `timing`, the
    unix time it runs on (its clock, its sleep, its jitter: tests step it); `policy`; `webhook`
    (None: webhooks are given up)."""

    store: OperationStore
    runtimes: Runtimes
    holder: str = field(default_factory=new_holder)
    timing: Timing = UNIX_TIME
    policy: OperationPolicy = OperationPolicy()
    webhook: Webhook | None = None

    def now(self) -> float:
        return self.timing.now()
