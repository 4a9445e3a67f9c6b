"""What the blocking and the asyncio client share, so the two differ only in `await`: checking the
constructor's and each method's arguments, building the requests (a list of batches split into calls
of at most 1,000), each call's metadata and request id, and the retry bookkeeping of one call.
"""

from __future__ import annotations

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

from batchgate_client._convert import ended_batch
from batchgate_client._proto.batchgate.v1 import batchgate_pb2 as pb
from batchgate_client.errors import BatchgateError, ClientClosed, Conflict
from batchgate_client.models import Batch, BatchRef
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
