"""Domain objects of a cancel, independent of gRPC and of any provider's wire format."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from service.domain.errors import GatewayError

# The unified status vocabulary (the seed API's enum, with OpenAI's and Bifrost's `cancelled`).
STATUSES = frozenset(
    {"validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled", "ended"}
)
# Statuses a batch never leaves: waiting for a cancel to take effect ends at one of these.
TERMINAL_STATUSES = frozenset({"cancelled", "completed", "failed", "expired", "ended"})
# Bounds of a wait (seconds) and of a bulk call (items), checked before anything happens.
MAX_WAIT_SECONDS = 3600
MAX_BULK_ITEMS = 1000


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
class BatchDetails:
    """OpenAI Batch fields a provider reported beyond the unified ones, for the OpenAI-compatible
    routes; None where it did not report them (never invented). Objects are JSON as sent."""

    endpoint: str | None = None
    input_file_id: str | None = None
    completion_window: str | None = None
    model: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    metadata: dict[str, Any] | None = None
    errors: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None


@dataclass(slots=True)
class BatchState:
    """A batch as the provider describes it after the cancel, in unified terms."""

    id: str
    status: str
    counts: RequestCounts | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    # Not part of the unified answer; the drop-in surfaces use them (Anthropic's message_batch, the
    # OpenAI routes' Batch).
    created_at: int | None = None
    expires_at: int | None = None
    details: BatchDetails | None = None


@dataclass(slots=True, frozen=True)
class CancelCommand:
    """What the caller asked for, in domain terms (no transport, nothing filled in later)."""

    batch_id: str
    provider: str
    # Raw response wanted by the caller (header x-bf-send-back-raw-response), honoured only when
    # the config allows per-request override.
    raw_response_requested: bool = False
    # The provider whose own SDK the caller speaks: the drop-in route's provider when the call came
    # through one (`anthropic` on the Anthropic route), else "". Such a call may pass some of that
    # SDK's headers upstream (`Adapter.caller_headers`).
    sdk_provider: str = ""
    # Seconds to keep reading the batch back until its status is terminal (0: answer at once).
    wait_seconds: int = 0


@dataclass(slots=True)
class CancelResult:
    batch: BatchState
    provider: str
    latency_ms: int
    raw_response: Any = None
    warning: str | None = None


@dataclass(slots=True)
class ItemEvent:
    """One step of one item of a bulk cancel: its result or its error, and whether it is the
    item's last event."""

    index: int
    batch_id: str
    provider: str
    final: bool
    result: CancelResult | None = None
    error: GatewayError | None = None


@dataclass(frozen=True, slots=True)
class ListQuery:
    """Which batches a listing looks for, in unified terms. A batch matches when its status is one
    of `statuses` (never empty), it was created at or after `created_after` and before
    `created_before` (unix seconds; 0: no bound) and every `metadata` pair equals its own."""

    statuses: frozenset[str]
    created_after: int = 0
    created_before: int = 0
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(slots=True)
class ListedBatch:
    """One batch a provider listed: its state (`state.id` in the form a cancel of that provider
    accepts, `state.created_at` when the provider said) and its metadata or labels ({} for a
    provider that keeps none)."""

    state: BatchState
    metadata: dict[str, str] = field(default_factory=dict)


def matches(batch: ListedBatch, query: ListQuery) -> bool:
    """Whether a listed batch is one the query looks for: the one local filter, applied whatever
    the provider filtered on its side. A time bound needs a known creation time."""
    if batch.state.status not in query.statuses:
        return False
    created = batch.state.created_at
    if query.created_after and (created is None or created < query.created_after):
        return False
    if query.created_before and (created is None or created >= query.created_before):
        return False
    return all(batch.metadata.get(name) == value for name, value in query.metadata.items())
