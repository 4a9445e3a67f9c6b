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

import grpc
from google.longrunning import operations_proto_pb2 as operations_pb
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import status_pb2

from batchgate_client._proto.batchgate.v1 import batchgate_pb2 as pb
from batchgate_client.errors import BatchgateError, grpc_status_code

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

# The statuses a selector can name (CancelMatching's `statuses`): the unified ones, "unknown" aside.
SelectorStatus: TypeAlias = Literal[
    "validating",
    "in_progress",
    "finalizing",
    "cancelling",
    "cancelled",
    "completed",
    "failed",
    "expired",
    "ended",
]
SELECTOR_STATUSES: frozenset[SelectorStatus] = frozenset(get_args(SelectorStatus))
# What a selector without statuses matches: batches that still run.
DEFAULT_SELECTOR_STATUSES: tuple[SelectorStatus, ...] = ("validating", "in_progress", "finalizing")

# A CancelMatching operation's state (CancelMatchingMetadata.state): listing the providers,
# cancelling what matched, waiting for the cancelled batches to end (`wait`), done.
OperationState: TypeAlias = Literal["listing", "cancelling", "waiting", "done", "unknown"]
OPERATION_STATES: frozenset[OperationState] = frozenset(get_args(OperationState))
# What became of one batch an operation found (MatchedBatch.outcome): `matched` (a dry run),
# `cancelled` (the provider accepted the cancel), `already_ended`, `failed`, `skipped` (the operation
# was stopped first), or `pending` while it is not settled yet.
BatchOutcome: TypeAlias = Literal["matched", "cancelled", "already_ended", "failed", "skipped", "pending", "unknown"]
BATCH_OUTCOMES: frozenset[BatchOutcome] = frozenset(get_args(BatchOutcome))

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


# --- cancel by selector: long-running operations ------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchSelector(_RawAccess):
    """Which batches an operation touches, as batchgate recorded it (provider and status names
    lowercased): every batch of `providers` (empty: every provider the caller may use that can
    list) in one of `statuses` (empty: validating, in_progress, finalizing), created at or after
    `created_after` and before `created_before` (unix seconds; None: no bound), whose own metadata
    holds every pair of `metadata`; or exactly the named `batches`."""

    providers: tuple[str, ...] = ()
    statuses: tuple[BatchStatus, ...] = ()
    created_after: int | None = None
    created_before: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    batches: tuple[BatchRef, ...] = ()
    raw: pb.BatchSelector = field(default_factory=pb.BatchSelector, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelMatchingMetadata(_RawAccess):
    """An operation's progress (its `metadata`), while it runs and once it is done.

    `matched` = `cancel_accepted` + `already_ended` + `failed` + `skipped` + `pending` (a dry run,
    `validate_only`, counts only `matched`). `create_time` / `update_time` are unix seconds;
    `created_by` is the virtual key's id, `admin` or `anonymous`.
    """

    selector: BatchSelector = field(default_factory=BatchSelector)
    validate_only: bool = False
    state: OperationState = "unknown"
    matched: int = 0
    cancel_accepted: int = 0
    already_ended: int = 0
    failed: int = 0
    pending: int = 0
    skipped: int = 0
    create_time: int = 0
    update_time: int = 0
    created_by: str = ""
    raw: pb.CancelMatchingMetadata = field(default_factory=pb.CancelMatchingMetadata, repr=False, compare=False)

    @property
    def settled(self) -> int:
        """How many matched batches are settled (accepted, already ended, failed or skipped)."""
        return self.matched - self.pending

    def to_dict(self) -> dict[str, Any]:
        """The metadata as the REST API prints it (without the Any's `@type`)."""
        return _message_to_dict(self.raw)


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchedBatch(_RawAccess):
    """One batch an operation found (or was given): where it was found (`provider`, and `key_id`,
    the configured key it was listed and cancelled with), what became of it (`outcome`), its last
    known state (`batch`, the model a single cancel answers; None when none was read) and, when it
    failed, the last error (`error`, the class a single cancel would have raised)."""

    id: str
    provider: str
    key_id: str = ""
    outcome: BatchOutcome = "unknown"
    batch: Batch | None = None
    error: BatchgateError | None = None
    raw: pb.MatchedBatch = field(default_factory=pb.MatchedBatch, repr=False, compare=False)

    @property
    def status(self) -> BatchStatus | None:
        """The batch's last known status, None when batchgate read none."""
        return self.batch.status if self.batch is not None else None

    def to_dict(self) -> dict[str, Any]:
        """The item as the REST API prints it in `response.batches`."""
        return _message_to_dict(self.raw)


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelMatchingResult(_RawAccess):
    """Every batch a done operation found, with its outcome."""

    batches: tuple[MatchedBatch, ...] = ()
    raw: pb.CancelMatchingResult = field(default_factory=pb.CancelMatchingResult, repr=False, compare=False)

    def by_outcome(self, outcome: BatchOutcome) -> tuple[MatchedBatch, ...]:
        """The batches with this outcome, in the result's order."""
        return tuple(batch for batch in self.batches if batch.outcome == outcome)


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationError(_RawAccess):
    """Why an operation ended without doing what it was asked: `code` is the google.rpc.Code number
    (9 FAILED_PRECONDITION: more batches matched than `max_batches`, nothing was cancelled; 1
    CANCELLED: stopped by CancelOperation; 16 UNAUTHENTICATED: its virtual key was revoked; ...),
    `message` batchgate's explanation (e.g. "matches 150 batches, more than max_batches 100; nothing
    was cancelled"). `exception` is the same failure as the `BatchgateError` subclass a call would
    raise (`Conflict` for the cap, `Cancelled`, `Unauthenticated`, ...), with the REST error's
    fields; `raise exception` to treat it as one."""

    code: int
    message: str
    exception: BatchgateError
    raw: status_pb2.Status = field(default_factory=status_pb2.Status, repr=False, compare=False)

    @property
    def grpc_code(self) -> grpc.StatusCode:
        """`code` as a grpc.StatusCode (UNKNOWN for a number gRPC does not define)."""
        return grpc_status_code(self.code)


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation(_RawAccess):
    """A cancel by selector (`cancel_matching`) as a long-running operation (google.longrunning,
    AIP-151): its `name` (`operations/<id>`), whether it is `done`, its progress (`metadata`) and,
    once done, its batches (`result`) or why it failed (`error`).

    `result` is None while it runs, in `list_operations` (which leaves the batches out: get the
    operation for them) and when it failed before keeping any batch; a stopped operation has both
    `error` (CANCELLED) and the `result` with its skipped batches.
    """

    name: str
    done: bool
    metadata: CancelMatchingMetadata = field(default_factory=CancelMatchingMetadata)
    result: CancelMatchingResult | None = None
    error: OperationError | None = None
    raw: operations_pb.Operation = field(default_factory=operations_pb.Operation, repr=False, compare=False)

    @property
    def id(self) -> str:
        """The name without its `operations/` prefix."""
        return self.name.removeprefix("operations/")

    @property
    def ok(self) -> bool:
        """Done without an error (batches may still have failed: see `metadata.failed`)."""
        return self.done and self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The REST body of GetOperation (what `GET /v1/operations/<id>` and the webhook send):
        proto field names, `metadata` / `response` / `error.details` with their `@type`."""
        return _message_to_dict(self.raw)


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationsPage(_RawAccess):
    """One page of ListOperations, newest first: the operations (without their batches) and the
    token of the next page ("" on the last)."""

    operations: tuple[Operation, ...] = ()
    next_page_token: str = ""
    raw: operations_pb.ListOperationsResponse = field(
        default_factory=operations_pb.ListOperationsResponse, repr=False, compare=False
    )

    def to_dict(self) -> dict[str, Any]:
        """The REST body of `GET /v1/operations`."""
        return _message_to_dict(self.raw)
