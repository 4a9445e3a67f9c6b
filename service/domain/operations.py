"""Cancel by selector as a long-running operation, in domain terms: what the caller asked for, the
operation as it is stored and read back, and each batch it found. No transport, no storage format:
the store (service.infra.operation_store) keeps these as plain dicts (`to_dict` / `from_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from service.domain.model import BatchState, RequestCounts

# Bounds of a CancelMatching request, checked before anything is listed.
MAX_BATCHES_LIMIT = 100_000
DEFAULT_MAX_BATCHES = 100
MAX_DEADLINE_SECONDS = 86_400
DEFAULT_DEADLINE_SECONDS = 3600
MAX_EXPLICIT_BATCHES = 1000
# OpenAI's own metadata bounds (16 pairs, keys up to 64 characters, values up to 512).
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
# The statuses a selector without statuses matches: batches that still run.
DEFAULT_STATUSES = ("validating", "in_progress", "finalizing")
NAME_PREFIX = "operations/"

# Operation states (CancelMatchingMetadata.state).
LISTING, CANCELLING, WAITING, DONE = "listing", "cancelling", "waiting", "done"
# Batch outcomes (MatchedBatch.outcome); PENDING ("") is a batch not settled yet.
PENDING, MATCHED, CANCELLED, ALREADY_ENDED, FAILED, SKIPPED = (
    "",
    "matched",
    "cancelled",
    "already_ended",
    "failed",
    "skipped",
)
OUTCOMES = frozenset({MATCHED, CANCELLED, ALREADY_ENDED, FAILED, SKIPPED})
# Webhook delivery states.
NOTIFY_NONE, NOTIFY_PENDING, NOTIFY_DELIVERED, NOTIFY_FAILED = "", "pending", "delivered", "failed"


@dataclass(frozen=True, slots=True)
class Selector:
    """Which batches an operation touches: every batch of `providers` matching all the filters, or
    exactly the named `batches` ((id, provider) pairs, providers lowercased)."""

    providers: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    created_after: int = 0
    created_before: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    batches: tuple[tuple[str, str], ...] = ()

    @property
    def explicit(self) -> bool:
        return bool(self.batches)

    @property
    def has_filters(self) -> bool:
        return bool(self.providers or self.statuses or self.created_after or self.created_before or self.metadata)

    def to_dict(self) -> dict[str, Any]:
        return {
            "providers": list(self.providers),
            "statuses": list(self.statuses),
            "created_after": self.created_after,
            "created_before": self.created_before,
            "metadata": dict(self.metadata),
            "batches": [list(ref) for ref in self.batches],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Selector:
        return cls(
            providers=tuple(data.get("providers", ())),
            statuses=tuple(data.get("statuses", ())),
            created_after=int(data.get("created_after", 0)),
            created_before=int(data.get("created_before", 0)),
            metadata=dict(data.get("metadata", {})),
            batches=tuple((str(ref[0]), str(ref[1])) for ref in data.get("batches", ())),
        )


@dataclass(frozen=True, slots=True)
class CancelMatchingCommand:
    """A checked CancelMatching request with its defaults filled in (service.usecases.operations)."""

    selector: Selector
    validate_only: bool = False
    max_batches: int = DEFAULT_MAX_BATCHES
    wait: bool = False
    deadline_seconds: int = DEFAULT_DEADLINE_SECONDS
    notify_url: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "selector": self.selector.to_dict(),
            "validate_only": self.validate_only,
            "max_batches": self.max_batches,
            "wait": self.wait,
            "deadline_seconds": self.deadline_seconds,
            "notify_url": self.notify_url,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CancelMatchingCommand:
        return cls(
            selector=Selector.from_dict(data.get("selector", {})),
            validate_only=bool(data.get("validate_only", False)),
            max_batches=int(data.get("max_batches", DEFAULT_MAX_BATCHES)),
            wait=bool(data.get("wait", False)),
            deadline_seconds=int(data.get("deadline_seconds", DEFAULT_DEADLINE_SECONDS)),
            notify_url=str(data.get("notify_url", "")),
        )


@dataclass(slots=True)
class Failure:
    """An error as data: the fields of a GatewayError (service.domain.errors), so the edge renders
    it like any other (its HTTP status gives the gRPC code: 409 -> FAILED_PRECONDITION, 499 ->
    CANCELLED, 401 -> UNAUTHENTICATED)."""

    message: str
    status_code: int = 500
    type: str = "internal_error"
    code: str | None = "internal_error"
    param: str | None = None
    provider: str = ""
    is_bifrost_error: bool = True

    @classmethod
    def of(cls, error: Any) -> Failure:
        """From a GatewayError (duck-typed: the domain's errors module is independent of this one)."""
        return cls(
            message=error.message,
            status_code=error.status_code,
            type=error.type,
            code=error.code,
            param=error.param,
            provider=error.provider,
            is_bifrost_error=error.is_bifrost_error,
        )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Failure:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def state_to_dict(state: BatchState) -> dict[str, Any]:
    counts = state.counts
    data: dict[str, Any] = {"id": state.id, "status": state.status}
    if counts is not None:
        data["counts"] = {
            f.name: getattr(counts, f.name) for f in fields(counts) if getattr(counts, f.name) is not None
        }
    for name in ("cancelling_at", "cancelled_at", "created_at"):
        value = getattr(state, name)
        if value is not None:
            data[name] = value
    return data


def state_from_dict(data: dict[str, Any]) -> BatchState:
    counts = data.get("counts")
    return BatchState(
        id=data["id"],
        status=data["status"],
        counts=RequestCounts(**counts) if counts is not None else None,
        cancelling_at=data.get("cancelling_at"),
        cancelled_at=data.get("cancelled_at"),
        created_at=data.get("created_at"),
    )


@dataclass(slots=True)
class BatchItem:
    """One batch of an operation: found by listing (under `key_id`) or named by the caller, and
    what became of it. `cancel_sent` is stored before its cancel call goes out, so after a crash
    only a batch whose answer was lost is ever sent a cancel twice."""

    provider: str
    batch_id: str
    key_id: str = ""
    outcome: str = PENDING
    # Last known state (as listed, or as the cancel / a read answered).
    state: BatchState | None = None
    latency_ms: int = 0
    warning: str | None = None
    error: Failure | None = None
    attempts: int = 0
    cancel_sent: bool = False
    # With `wait`: the batch reads a terminal status (or the wait gave up on it).
    settled: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.provider, self.batch_id

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"provider": self.provider, "batch_id": self.batch_id, "key_id": self.key_id}
        if self.outcome:
            data["outcome"] = self.outcome
        if self.state is not None:
            data["state"] = state_to_dict(self.state)
        if self.latency_ms:
            data["latency_ms"] = self.latency_ms
        if self.warning:
            data["warning"] = self.warning
        if self.error is not None:
            data["error"] = self.error.to_dict()
        if self.attempts:
            data["attempts"] = self.attempts
        if self.cancel_sent:
            data["cancel_sent"] = True
        if self.settled:
            data["settled"] = True
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchItem:
        state, error = data.get("state"), data.get("error")
        return cls(
            provider=data["provider"],
            batch_id=data["batch_id"],
            key_id=data.get("key_id", ""),
            outcome=data.get("outcome", PENDING),
            state=state_from_dict(state) if state is not None else None,
            latency_ms=int(data.get("latency_ms", 0)),
            warning=data.get("warning"),
            error=Failure.from_dict(error) if error is not None else None,
            attempts=int(data.get("attempts", 0)),
            cancel_sent=bool(data.get("cancel_sent", False)),
            settled=bool(data.get("settled", False)),
        )


@dataclass(slots=True)
class Counts:
    """CancelMatchingMetadata's counts."""

    matched: int = 0
    cancel_accepted: int = 0
    already_ended: int = 0
    failed: int = 0
    skipped: int = 0
    pending: int = 0

    @classmethod
    def of(cls, items: Any, matched: int | None = None) -> Counts:
        """The counts of `items` (BatchItems); `matched` overrides the total (a refused operation
        keeps no items)."""
        counts = cls()
        for item in items:
            counts.matched += 1
            outcome = item.outcome
            if outcome == CANCELLED:
                counts.cancel_accepted += 1
            elif outcome == ALREADY_ENDED:
                counts.already_ended += 1
            elif outcome == FAILED:
                counts.failed += 1
            elif outcome == SKIPPED:
                counts.skipped += 1
            elif outcome == PENDING:
                counts.pending += 1
        if matched is not None:
            counts.matched = matched
        return counts

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Counts:
        return cls(**{f.name: int(data.get(f.name, 0)) for f in fields(cls)})


@dataclass(slots=True)
class Notification:
    """Where the webhook goes and how its delivery stands (kept with the operation, so a restart
    still delivers)."""

    url: str = ""
    state: str = NOTIFY_NONE
    attempts: int = 0
    # Unix seconds: the next attempt, and when delivery gives up.
    next_at: float = 0.0
    until: float = 0.0
    last_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Notification:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(slots=True)
class Operation:
    """One CancelMatching operation as stored. `owner` is the caller's identity (`vk:<id>`, `admin`
    or `anonymous`); the lease (who runs it, until when) and `cancel_requested` live beside it in
    the store, never in this record."""

    name: str
    owner: str
    command: CancelMatchingCommand
    # Unix seconds (float: microseconds order listings).
    create_time: float
    update_time: float
    state: str = LISTING
    counts: Counts = field(default_factory=Counts)
    done: bool = False
    error: Failure | None = None
    # The error keeps the batches (CancelOperation, a revoked key): they go in its details.
    error_has_batches: bool = False
    # The request id of the CancelMatching call (audit events of its batches carry it).
    request_id: str = ""
    notification: Notification = field(default_factory=Notification)

    @property
    def created_by(self) -> str:
        return self.owner.removeprefix("vk:")

    @property
    def gives_up_at(self) -> float:
        """Unix seconds after which nothing is retried or waited for any more (`deadline_seconds`
        after its creation; unix time, not the loop time a call's deadline is)."""
        return self.create_time + self.command.deadline_seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "owner": self.owner,
            "command": self.command.to_dict(),
            "create_time": self.create_time,
            "update_time": self.update_time,
            "state": self.state,
            "counts": self.counts.to_dict(),
            "done": self.done,
            "error": self.error.to_dict() if self.error is not None else None,
            "error_has_batches": self.error_has_batches,
            "request_id": self.request_id,
            "notification": self.notification.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Operation:
        error = data.get("error")
        return cls(
            name=data["name"],
            owner=data["owner"],
            command=CancelMatchingCommand.from_dict(data["command"]),
            create_time=float(data["create_time"]),
            update_time=float(data["update_time"]),
            state=data.get("state", LISTING),
            counts=Counts.from_dict(data.get("counts", {})),
            done=bool(data.get("done", False)),
            error=Failure.from_dict(error) if error is not None else None,
            error_has_batches=bool(data.get("error_has_batches", False)),
            request_id=data.get("request_id", ""),
            notification=Notification.from_dict(data.get("notification", {})),
        )
