"""What the blocking and the asyncio client share, so the two differ only in `await`: checking the
constructor's and each method's arguments, building the requests (a list of batches split into calls
of at most 1,000; a selector with its times as unix seconds), each call's metadata and request id,
the retry bookkeeping of one call, and the steps of waiting for an operation.
"""

from __future__ import annotations

import datetime
import math
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias

import grpc
from google.longrunning import operations_proto_pb2 as operations_pb
from google.protobuf import duration_pb2

from batchgate_client._convert import ended_batch
from batchgate_client._proto.batchgate.v1 import batchgate_pb2 as pb
from batchgate_client.errors import BatchgateError, ClientClosed, Conflict
from batchgate_client.models import SELECTOR_STATUSES, Batch, BatchRef, SelectorStatus
from batchgate_client.retry import DEFAULT_RETRY, RetryPolicy

DEFAULT_TARGET: Final = "127.0.0.1:50051"
DEFAULT_TIMEOUT: Final = 30.0
VIRTUAL_KEY_HEADER: Final = "x-bf-vk"
REQUEST_ID_HEADER: Final = "x-request-id"
# CancelMany takes 1 to 1,000 items; `cancel_many` sends longer lists as consecutive calls.
MAX_ITEMS_PER_CALL: Final = 1000
MAX_WAIT_SECONDS: Final = 3600

_SERVICE = pb.DESCRIPTOR.services_by_name["BatchService"].full_name
CANCEL_METHOD: Final = f"/{_SERVICE}/Cancel"
CANCEL_MANY_METHOD: Final = f"/{_SERVICE}/CancelMany"
HEALTH_METHOD: Final = f"/{_SERVICE}/Health"
CANCEL_MATCHING_METHOD: Final = f"/{_SERVICE}/CancelMatching"
_OPERATIONS = operations_pb.DESCRIPTOR.services_by_name["Operations"].full_name
GET_OPERATION_METHOD: Final = f"/{_OPERATIONS}/GetOperation"
LIST_OPERATIONS_METHOD: Final = f"/{_OPERATIONS}/ListOperations"
WAIT_OPERATION_METHOD: Final = f"/{_OPERATIONS}/WaitOperation"
CANCEL_OPERATION_METHOD: Final = f"/{_OPERATIONS}/CancelOperation"
DELETE_OPERATION_METHOD: Final = f"/{_OPERATIONS}/DeleteOperation"

# CancelMatching's bounds (the service checks them again).
MAX_BATCHES_LIMIT: Final = 100_000
MAX_DEADLINE_SECONDS: Final = 86_400
MAX_EXPLICIT_BATCHES: Final = 1000
OPERATION_PREFIX: Final = "operations/"
# One WaitOperation call waits at most this long; `wait_operation` makes as many as its timeout needs
# (the service also answers a little before the call's own deadline, or Envoy's route timeout).
WAIT_CALL_SECONDS: Final = 60.0
MAX_PAGE_SIZE: Final = 1000
_UINT32 = 2**32

Metadata: TypeAlias = tuple[tuple[str, str], ...]
# What `cancel_many` accepts per item: a BatchRef, a mapping with "id" and "provider", or an
# (id, provider) pair, the order of `cancel(batch_id, provider)`.
ItemLike: TypeAlias = BatchRef | Mapping[str, str] | tuple[str, str]
MetadataLike: TypeAlias = Sequence[tuple[str, str]] | Mapping[str, str]
CaFile: TypeAlias = str | os.PathLike[str] | bytes

_HEADER_NAME = re.compile(r"[0-9a-z_.-]+")
_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True, slots=True)
class Settings:
    """A client's checked constructor arguments."""

    target: str
    timeout: float
    retry: RetryPolicy
    metadata: Metadata
    credentials: grpc.ChannelCredentials | None
    # An x-request-id the caller fixed in `metadata` (then every call sends it).
    fixed_request_id: str | None


def settings(
    target: str,
    *,
    vk: str | None,
    timeout: float,
    tls: bool | None,
    tls_ca: CaFile | None,
    retry: RetryPolicy | None,
    metadata: MetadataLike,
) -> Settings:
    """Checks every constructor argument; TypeError or ValueError naming the argument."""
    if not isinstance(target, str) or not target.strip() or any(c.isspace() for c in target):
        raise ValueError(f"target must be a HOST:PORT address (or a gRPC target URI), not {target!r}")
    pairs = list(_metadata_pairs(metadata))
    if vk is not None:
        _header_value("vk", vk)
        if not vk:
            raise ValueError("vk must not be empty (leave it out, or None, to send no virtual key)")
        pairs.append((VIRTUAL_KEY_HEADER, vk))
    if retry is None:
        retry = DEFAULT_RETRY
    elif not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a batchgate_client.RetryPolicy, not {type(retry).__name__}")
    request_ids = [value for key, value in pairs if key == REQUEST_ID_HEADER]
    return Settings(
        target=target,
        timeout=check_timeout(timeout, "timeout"),
        retry=retry,
        metadata=tuple(pairs),
        credentials=channel_credentials(tls, tls_ca),
        fixed_request_id=request_ids[0] if request_ids else None,
    )


def check_timeout(timeout: float, name: str = "timeout") -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
        raise ValueError(f"{name} must be a positive number of seconds, not {timeout!r}")
    return float(timeout)


def _header_value(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not all(" " <= c <= "~" for c in value):
        raise ValueError(f"{name} must be printable ASCII (gRPC metadata cannot carry it otherwise)")
    return value


def _metadata_pairs(metadata: MetadataLike) -> Iterable[tuple[str, str]]:
    items = metadata.items() if isinstance(metadata, Mapping) else metadata
    if isinstance(items, str | bytes):
        raise TypeError("metadata must be (key, value) pairs or a mapping, not a string")
    for pair in items:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise TypeError(f"metadata must be (key, value) pairs, not {pair!r}")
        key, value = pair
        if not isinstance(key, str) or not _HEADER_NAME.fullmatch(key) or key.startswith("grpc-"):
            raise ValueError(f"metadata key {key!r} is not a lowercase gRPC header name (or is reserved)")
        if key == VIRTUAL_KEY_HEADER:
            raise ValueError(f"pass the virtual key as vk=, not as {VIRTUAL_KEY_HEADER} metadata")
        yield key, _header_value(f"metadata {key!r}", value)


def channel_credentials(tls: bool | None, tls_ca: CaFile | None) -> grpc.ChannelCredentials | None:
    """TLS credentials, failing closed: `tls_ca` (a PEM file's path or its bytes) must hold a
    certificate; it is never silently replaced by the system's roots. `tls=True` alone trusts the
    system's roots. None for a plaintext channel."""
    if tls is not None and not isinstance(tls, bool):
        raise TypeError(f"tls must be True, False or None, not {tls!r}")
    if tls_ca is None:
        return grpc.ssl_channel_credentials() if tls else None
    if tls is False:
        raise ValueError("tls=False and tls_ca contradict each other: tls_ca connects with TLS")
    if isinstance(tls_ca, bytes):
        pem, source = tls_ca, "tls_ca"
    elif isinstance(tls_ca, str | os.PathLike):
        path = Path(tls_ca)
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read tls_ca {path}: {exc.strerror or exc}") from None
        source = f"tls_ca {path}"
    else:
        raise TypeError(f"tls_ca must be a path or PEM bytes, not {type(tls_ca).__name__}")
    if not pem.strip():
        raise ValueError(f"{source} is empty: give the PEM certificate(s) to trust")
    if _PEM_CERTIFICATE not in pem:
        raise ValueError(f"{source} holds no PEM certificate ({_PEM_CERTIFICATE.decode()} ...)")
    return grpc.ssl_channel_credentials(root_certificates=pem)


def call_metadata(settings: Settings) -> tuple[Metadata, str]:
    """One call's metadata and request id: an `x-request-id` of the client's own (kept across the
    call's retries) unless `metadata` set one. The service logs, audits and forwards it, and need
    not send back an id it generated (a gRPC operation of its own: ~0.2 ms a call)."""
    if settings.fixed_request_id is not None:
        return settings.metadata, settings.fixed_request_id
    request_id = uuid.uuid4().hex
    return (*settings.metadata, (REQUEST_ID_HEADER, request_id)), request_id


def answered_request_id(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == REQUEST_ID_HEADER and isinstance(value, str):
            return value
    return None


def check_wait(wait_seconds: int) -> int:
    if isinstance(wait_seconds, bool) or not isinstance(wait_seconds, int) or not 0 <= wait_seconds <= MAX_WAIT_SECONDS:
        raise ValueError(
            f"wait_seconds must be a whole number of seconds from 0 to {MAX_WAIT_SECONDS}, not {wait_seconds!r}"
        )
    return wait_seconds


def budget(settings: Settings, timeout: float | None, wait_seconds: int = 0) -> float:
    """A call's deadline in seconds: its timeout (the client's unless given) plus its wait."""
    return (settings.timeout if timeout is None else check_timeout(timeout)) + wait_seconds


def cancel_request(batch_id: str, provider: str, wait_seconds: int) -> pb.CancelBatchRequest:
    if not isinstance(batch_id, str) or not isinstance(provider, str):
        raise TypeError("batch_id and provider must be strings")
    return pb.CancelBatchRequest(batch_id=batch_id, provider=provider, wait_seconds=check_wait(wait_seconds))


def batch_ref(item: ItemLike) -> BatchRef:
    """Normalises one `cancel_many` item; TypeError for anything else."""
    if isinstance(item, BatchRef):
        ref = item
    elif isinstance(item, Mapping):
        ref = BatchRef(item.get("id"), item.get("provider"))  # type: ignore[arg-type]  # checked below
    elif isinstance(item, tuple | list) and len(item) == 2:
        ref = BatchRef(*item)
    else:
        raise TypeError(f"a batch to cancel is a BatchRef, a mapping or an (id, provider) pair, not {item!r}")
    if not isinstance(ref.id, str) or not isinstance(ref.provider, str):
        raise TypeError(f"batch id and provider must be strings: {item!r}")
    return ref


def many_requests(items: Iterable[ItemLike], wait_seconds: int) -> list[tuple[int, pb.CancelManyRequest]]:
    """The CancelMany calls for `items`, 1,000 each, with the index of each call's first item."""
    if isinstance(items, str | bytes | Mapping | BatchRef):
        raise TypeError("items must be a list (or other iterable) of batches, not a single value")
    refs = [batch_ref(item) for item in items]
    if not refs:
        raise ValueError("cancel_many needs at least one batch")
    wait = check_wait(wait_seconds)
    return [
        (
            offset,
            pb.CancelManyRequest(
                batches=[
                    pb.BatchRef(id=ref.id, provider=ref.provider) for ref in refs[offset : offset + MAX_ITEMS_PER_CALL]
                ],
                wait_seconds=wait,
            ),
        )
        for offset in range(0, len(refs), MAX_ITEMS_PER_CALL)
    ]


# --- operations ------------------------------------------------------------------------------------

# A time bound of a selector: a timezone-aware datetime, or unix seconds.
TimeLike: TypeAlias = datetime.datetime | int | float


def unix_seconds(value: TimeLike, name: str) -> int:
    """A selector's time bound as whole unix seconds, rounded up (both bounds compare a batch's
    whole-second creation time: `created_after` inclusive, `created_before` exclusive). A naive
    datetime is refused: which zone it means is a guess."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} must be a timezone-aware datetime (e.g. datetime.now(timezone.utc)), not naive")
        seconds: float = value.timestamp()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value
    else:
        raise TypeError(f"{name} must be a datetime or unix seconds, not {type(value).__name__}")
    if not 0 < seconds < _UINT32 or math.isnan(seconds):
        raise ValueError(f"{name} must be after 1970-01-01 and before 2106 (unix seconds 1 to {_UINT32 - 1})")
    return math.ceil(seconds)


def _names(values: Iterable[str] | None, name: str) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str | bytes):
        raise TypeError(f"{name} must be a list of strings, not a single string")
    listed = list(values)
    for value in listed:
        if not isinstance(value, str):
            raise TypeError(f"{name} must hold strings, not {type(value).__name__}")
        if not value.strip():
            raise ValueError(f"{name} must not hold an empty name")
    return listed


def _bounded(value: int | None, name: str, limit: int) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ValueError(f"{name} must be a whole number from 1 to {limit:,}, not {value!r}")
    return value


def matching_request(
    *,
    providers: Iterable[str] | None,
    statuses: Iterable[SelectorStatus] | None,
    created_after: TimeLike | None,
    created_before: TimeLike | None,
    metadata: Mapping[str, str] | None,
    batches: Iterable[ItemLike] | None,
    validate_only: bool,
    max_batches: int | None,
    wait: bool,
    deadline_seconds: int | None,
    notify_url: str | None,
) -> pb.CancelMatchingRequest:
    """The CancelMatching request, its arguments checked (TypeError / ValueError naming the
    argument); what only the service can judge (a provider it does not know, a notify URL its
    config does not allow) is its 400."""
    selector = pb.BatchSelector(providers=_names(providers, "providers"))
    for status in _names(statuses, "statuses"):
        if status.strip().lower() not in SELECTOR_STATUSES:
            known = ", ".join(sorted(SELECTOR_STATUSES))
            raise ValueError(f"statuses: unknown status {status!r} (known: {known})")
        selector.statuses.append(status)
    if created_after is not None:
        selector.created_after = unix_seconds(created_after, "created_after")
    if created_before is not None:
        selector.created_before = unix_seconds(created_before, "created_before")
    if selector.created_after and selector.created_before and selector.created_after >= selector.created_before:
        raise ValueError("created_after must be before created_before")
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a mapping of str to str, not {type(metadata).__name__}")
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"metadata must map str to str, not {key!r}: {value!r}")
            if not key:
                raise ValueError("metadata keys must not be empty")
            selector.metadata[key] = value
    if batches is not None:
        if isinstance(batches, str | bytes | Mapping | BatchRef):
            raise TypeError("batches must be a list (or other iterable) of batches, not a single value")
        refs = [batch_ref(item) for item in batches]
        if not 1 <= len(refs) <= MAX_EXPLICIT_BATCHES:
            raise ValueError(f"batches must name 1 to {MAX_EXPLICIT_BATCHES:,} batches, not {len(refs):,}")
        if selector.providers or selector.statuses or selector.created_after or selector.created_before or metadata:
            raise ValueError(
                "batches names the batches itself: leave providers, statuses, created_after, created_before "
                "and metadata out"
            )
        selector.batches.extend(pb.BatchRef(id=ref.id, provider=ref.provider) for ref in refs)
    for flag, flag_name in ((validate_only, "validate_only"), (wait, "wait")):
        if not isinstance(flag, bool):
            raise TypeError(f"{flag_name} must be True or False, not {flag!r}")
    request = pb.CancelMatchingRequest(
        selector=selector,
        validate_only=validate_only,
        max_batches=_bounded(max_batches, "max_batches", MAX_BATCHES_LIMIT),
        wait=wait,
        deadline_seconds=_bounded(deadline_seconds, "deadline_seconds", MAX_DEADLINE_SECONDS),
    )
    if notify_url is not None:
        if not isinstance(notify_url, str) or not notify_url:
            raise ValueError(
                f"notify_url must be a URL (one the service's operations.notify_urls allow), not {notify_url!r}"
            )
        request.notify.url = notify_url
    return request


def operation_name(name: str) -> str:
    """`operations/<id>`; a bare id gets the prefix."""
    if not isinstance(name, str):
        raise TypeError(f"an operation name is a str, not {type(name).__name__}")
    if not name.strip():
        raise ValueError("an operation name must not be empty")
    return name if name.startswith(OPERATION_PREFIX) else OPERATION_PREFIX + name


def list_request(page_size: int | None, page_token: str | None) -> operations_pb.ListOperationsRequest:
    if page_token is not None and not isinstance(page_token, str):
        raise TypeError(f"page_token must be a str, not {type(page_token).__name__}")
    return operations_pb.ListOperationsRequest(
        page_size=_bounded(page_size, "page_size", MAX_PAGE_SIZE), page_token=page_token or ""
    )


class Waiting:
    """The WaitOperation calls of one `wait_operation`: each waits at most `WAIT_CALL_SECONDS` and
    never past the overall timeout (None: until the operation is done)."""

    def __init__(self, name: str, timeout: float | None, clock: Callable[[], float]) -> None:
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 <= timeout < math.inf
        ):
            raise ValueError(f"timeout must be a number of seconds >= 0 (or None: until done), not {timeout!r}")
        self.name = operation_name(name)
        self._clock = clock
        self._end = None if timeout is None else clock() + timeout

    def next_call(self) -> tuple[operations_pb.WaitOperationRequest, float]:
        """The next call's request and how long it waits."""
        wait = WAIT_CALL_SECONDS if self._end is None else max(0.0, min(WAIT_CALL_SECONDS, self._end - self._clock()))
        duration = duration_pb2.Duration()
        duration.FromNanoseconds(int(wait * 1e9))
        return operations_pb.WaitOperationRequest(name=self.name, timeout=duration), wait

    def over(self) -> bool:
        """Whether the overall timeout has passed."""
        return self._end is not None and self._clock() >= self._end


def settle(error: BatchgateError, ok_if_ended: bool, batch_id: str, provider: str) -> Batch:
    """`ok_if_ended`: a 409 (the batch already ended) becomes its state; anything else is raised."""
    if ok_if_ended and isinstance(error, Conflict):
        return ended_batch(batch_id, provider, error)
    raise error


def closed_error() -> ClientClosed:
    return ClientClosed(
        "the client is closed: create a new one (or call inside its `with` block)", code="client_closed"
    )


class Attempts:
    """One call's deadline, metadata and retries (shared by its attempts)."""

    def __init__(
        self, settings: Settings, budget: float, clock: Callable[[], float], rand: random.Random | None
    ) -> None:
        self._policy = settings.retry
        self._clock = clock
        self._rand = rand
        self.deadline = clock() + budget
        self.metadata, self.request_id = call_metadata(settings)
        self._retries = 0

    def remaining(self) -> float:
        return max(0.0, self.deadline - self._clock())

    def pause_after(self, error: BatchgateError) -> float | None:
        """The pause before the next attempt, or None: raise `error`."""
        self._retries += 1
        return self._policy.next_pause(error, self._retries, self.deadline - self._clock(), self._rand)


@dataclass(slots=True)
class Hooks:
    """Sleeping, time and randomness of the retries (tests replace them: `_use_hooks` on a client).
    `sleep` is `time.sleep` for the blocking client, `asyncio.sleep` for the asyncio one."""

    sleep: Callable[[float], Any]
    clock: Callable[[], float] = time.monotonic
    rand: random.Random | None = None
