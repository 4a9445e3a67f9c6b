"""The per-request side of a call, next to its domain command (service.domain.model.CancelCommand)."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.infra.observability import CallRecord


@dataclass(slots=True)
class CallContext:
    """The per-request side of a call, next to its command: the transport headers (credentials,
    SDK headers passed through), who called once authenticated (`vk:<id>`, `admin`, `anonymous`;
    safe to log), and the record of what it did upstream (for its log line and metrics)."""

    headers: dict[str, str] = field(default_factory=dict)
    record: CallRecord | None = None
    caller: str = "anonymous"
