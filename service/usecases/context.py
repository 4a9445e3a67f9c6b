"""The per-request side of a call, next to its domain command (service.domain.model.CancelCommand)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from service.infra.observability import CallRecord


class Access(Protocol):
    """Whether the caller may still cancel on a provider (service.usecases.auth.CallerCheck)."""

    def check(self, provider: str) -> float | None: ...


@dataclass(slots=True)
class CallContext:
    """The per-request side of a call, next to its command: the transport headers (credentials,
    SDK headers passed through), who called once authenticated (`vk:<id>`, `admin`, `anonymous`;
    safe to log), the record of what it did upstream (for its log line and metrics), its
    `deadline`, and for a call that outlives a moment (bulk items, waits) how to tell that its
    caller lost its access (`access`).

    A deadline is always one thing in this service: the event loop's time (`loop.time()`) by which
    something must end, or None for no limit. The edge turns the call's gRPC deadline or Envoy's
    route timeout into this one (service.edge.api.call_deadline); each upstream exchange ends by the
    provider's timeout within it (service.usecases.target.exchange_deadline)."""

    headers: dict[str, str] = field(default_factory=dict)
    record: CallRecord | None = None
    caller: str = "anonymous"
    deadline: float | None = None
    access: Access | None = None
