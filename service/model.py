"""Domain objects of a cancel, independent of gRPC and of any provider's wire format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.observability import Trace

# The unified status vocabulary (the seed API's enum, with OpenAI's and Bifrost's `cancelled`).
STATUSES = frozenset(
    {"validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled", "ended"}
)


@dataclass(slots=True)
class RequestCounts:
    """Counts a provider reported; None means the provider did not say (never invented)."""

    total: int | None = None
    completed: int | None = None
    failed: int | None = None
    succeeded: int | None = None
    expired: int | None = None
    canceled: int | None = None
    pending: int | None = None


@dataclass(slots=True)
class BatchState:
    """A batch as the provider describes it after the cancel, in unified terms."""

    id: str
    status: str
    counts: RequestCounts | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    # Not part of the unified answer; the drop-in surfaces use them (Anthropic's message_batch).
    created_at: int | None = None
    expires_at: int | None = None


@dataclass(slots=True)
class CancelCommand:
    batch_id: str
    provider: str
    # Raw response wanted by the caller (header x-bf-send-back-raw-response), honoured only when
    # the config allows per-request override.
    raw_response_requested: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    # The drop-in route the call came through (`anthropic`, `genai`, `bedrock`, `openai`), else "".
    surface: str = ""
    # Filled in on the way: what the request did upstream (observability), and who called
    # (`vk:<id>`, `admin`, `anonymous`; safe to log).
    trace: Trace | None = None
    caller: str = "anonymous"


@dataclass(slots=True)
class CancelResult:
    batch: BatchState
    provider: str
    latency_ms: int
    raw_response: Any = None
    warning: str | None = None
