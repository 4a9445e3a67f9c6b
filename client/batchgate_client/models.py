"""The typed results of batchgate's calls: frozen dataclasses built from the protobuf answers.

Every answer has one class here and one converter in `batchgate_client._convert`; each keeps the
message it was built from as `raw` (the protobuf, for fields not lifted here and for `to_dict()`).
What a provider may leave out is `int | None`, never a 0 that reads like a number; a status is a
`Literal`, so a type checker knows every value and flags a misspelt one. New answers (the coming
long-running operations) follow the same three steps: a dataclass here, a converter there, a method
on both clients.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, get_args

from google.protobuf import json_format
from google.protobuf.message import Message

from batchgate_client._proto.batchgate.v1 import batchgate_pb2 as pb
from batchgate_client.errors import BatchgateError

# The unified batch statuses (the proto's BatchCancelResponse.status). A status batchgate passes
# through from a provider that is not one of these reads as "unknown"; `raw.status` keeps its word.
BatchStatus: TypeAlias = Literal[
    "validating",
    "in_progress",
    "finalizing",
    "cancelling",
    "cancelled",
    "completed",
    "failed",
    "expired",
    "ended",
    "unknown",
]
BATCH_STATUSES: frozenset[BatchStatus] = frozenset(get_args(BatchStatus))
# Statuses after which a batch does not change any more (what `wait_seconds` waits for).
TERMINAL_STATUSES: frozenset[BatchStatus] = frozenset({"cancelled", "completed", "failed", "expired", "ended"})

CircuitState: TypeAlias = Literal["closed", "half_open", "open", "unknown"]
HealthStatus: TypeAlias = Literal["ok", "draining", "unknown"]
StoreType: TypeAlias = Literal["embedded", "redis", "unknown"]
StoreState: TypeAlias = Literal["ok", "degraded", "unknown"]

# A JSON value as `json.loads` returns it (`Batch.raw_response`).
JSON: TypeAlias = dict[str, "JSON"] | list["JSON"] | str | int | float | bool | None


def _message_to_dict(message: Message) -> dict[str, Any]:
    """The JSON Envoy's transcoder prints for a message: proto field names, defaults included."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class _RawAccess:
    """Keeps code written for the protobuf answers working: an attribute only the message has
    (`batch.extra_fields`, `HasField`, ...) is read from `raw`, with a DeprecationWarning. Type
    checkers do not see this, so they flag such uses."""

    __slots__ = ()
    raw: Message

    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            if name.startswith("__") or name == "raw":
                raise AttributeError(name)
            try:
                value = getattr(self.raw, name)
            except AttributeError:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}") from None
            warnings.warn(
                f"{type(self).__name__}.{name} is the protobuf message's; since batchgate-client 0.2 results are "
                f"typed: use the {type(self).__name__} fields, or .raw.{name}",
                DeprecationWarning,
                stacklevel=2,
            )
            return value


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestCounts:
    """A batch's request counts as the provider reported them; None where it did not."""

    total: int | None = None
    completed: int | None = None
    failed: int | None = None
    succeeded: int | None = None
    expired: int | None = None
    canceled: int | None = None
    pending: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch(_RawAccess):
    """A batch's state after a cancel (or after waiting): what `cancel()` returns and a
    `CancelEvent` carries.

    `status` is the unified status; `cancelling_at` / `cancelled_at` are unix seconds, None when the
    provider did not say. `warning` is set when the status is less certain than usual (the wait ran
    out, a read-back failed) or, with `already_ended`, holds the provider's refusal. `already_ended`
    is true only for a result made by `ok_if_ended=True` from batchgate's 409 ("the batch already
    ended"): then `status` is "ended" and `raw` is a message made on the client.
    """

    id: str
    provider: str
    status: BatchStatus
    request_counts: RequestCounts = field(default_factory=RequestCounts)
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    warning: str | None = None
    latency_ms: int = 0
    raw_response: JSON = None
    already_ended: bool = False
    object: str = "batch"
    raw: pb.BatchCancelResponse = field(default_factory=pb.BatchCancelResponse, repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        """Whether the batch can no longer change (cancelled, completed, failed, expired, ended)."""
        return self.status in TERMINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The REST body of a cancel (the JSON Envoy's transcoder prints for it)."""
        return _message_to_dict(self.raw)


@dataclass(frozen=True, slots=True)
class BatchRef:
    """One batch to cancel: the provider's batch id and the provider that holds it."""

    id: str
    provider: str


@dataclass(frozen=True, slots=True)
class CancelEvent:
    """One step of one item of `cancel_many`: the batch's state (`batch`) or its failure (`error`).
    Every item ends with exactly one event whose `final` is true. `index` is the item's position in
    the list given to `cancel_many` (also past 1,000 items, which go as several calls)."""

    index: int
    id: str
    provider: str
    final: bool
    batch: Batch | None = None
    error: BatchgateError | None = None

    def __post_init__(self) -> None:
        if isinstance(self.batch, pb.BatchCancelResponse):  # code written for 0.1 passed the message
            warnings.warn(
                "CancelEvent(batch=...) takes a batchgate_client.Batch since 0.2; a BatchCancelResponse message "
                "is converted",
                DeprecationWarning,
                stacklevel=3,
            )
            from batchgate_client._convert import batch_from_proto

            object.__setattr__(self, "batch", batch_from_proto(self.batch))

    @property
    def status(self) -> BatchStatus | Literal["error"]:
        """The batch's status, or "error"."""
        return self.batch.status if self.batch is not None else "error"

    @property
    def ok(self) -> bool:
        """Whether this step is a batch state rather than a failure."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The REST stream's line for this event: `batch` is the single-cancel body, `error` the
        single-cancel error body."""
        line: dict[str, Any] = {"index": self.index, "id": self.id, "provider": self.provider, "final": self.final}
        if self.error is not None:
            line["error"] = self.error.to_dict()
        elif self.batch is not None:
            line["batch"] = self.batch.to_dict()
        return line


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderHealth(_RawAccess):
    """One provider's circuit breaker, as the answering worker sees it."""

    circuit: CircuitState
    raw: pb.ProviderHealth = field(default_factory=pb.ProviderHealth, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitStore(_RawAccess):
    """Where virtual-key rate limits are counted, and whether that store works right now."""

    type: StoreType
    state: StoreState
    raw: pb.RateLimitStoreHealth = field(default_factory=pb.RateLimitStoreHealth, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigState(_RawAccess):
    """The config one service worker runs: `version` is the first 12 hex digits of the SHA-256 of
    the file, `loaded_at` unix seconds, `last_reload_successful` false when a reload failed."""

    worker: int
    version: str
    loaded_at: int
    last_reload_successful: bool
    raw: pb.ConfigState = field(default_factory=pb.ConfigState, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Health(_RawAccess):
    """The service's answer to `health()`: its status, each provider's circuit, the rate-limit
    store, the answering worker's config (`config`) and every worker's (`workers`)."""

    status: HealthStatus
    providers: Mapping[str, ProviderHealth] = field(default_factory=dict)
    rate_limit_store: RateLimitStore | None = None
    config: ConfigState | None = None
    workers: tuple[ConfigState, ...] = ()
    raw: pb.HealthResponse = field(default_factory=pb.HealthResponse, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The REST body of `GET /health`, every field printed (worker 0 included)."""
        return _message_to_dict(self.raw)
