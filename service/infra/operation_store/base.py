"""What every engine of the operation store is: the `OperationStore` protocol, its errors, and the
pieces both engines share (documents, page tokens, decoding many batches without holding the loop).

Each operation is kept with its document, owner, creation time, whether some worker must still run
it, the lease (who runs it and until when) and `cancel_requested`; each of its batches apart. Writes
that a worker makes while running an operation (`save`) succeed only while it holds the lease and,
with `SaveMode.UNLESS_STOPPED`, only while nobody asked to cancel it: a worker that lost its lease or
was asked to stop learns it on its next write (`LeaseLost`, `StopRequested`) and nothing of its
reaches the store after that.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from service.domain.operations import NOTIFY_PENDING, BatchItem, Operation

# The largest page ListOperations answers.
MAX_PAGE_SIZE = 1000
# Batches decoded between two turns of the event loop (a 100,000-batch operation reads in 100).
DECODE_PER_TURN = 1000


class LeaseLost(Exception):
    """This worker no longer runs the operation: another took it over, it was deleted, or the lease
    expired before it was renewed."""


class StopRequested(Exception):
    """CancelOperation was asked for: no new cancel may start."""


class BadPageToken(ValueError):
    """A page token this store did not issue."""


class SaveMode(enum.Enum):
    """How `save` writes the batches it is given."""

    # Added, or updated in place (a batch keeps its place in the order found).
    MERGE = "merge"
    # The operation's whole list of batches from now on (a listing finished).
    REPLACE = "replace"
    # As MERGE, but refused with StopRequested once a cancel was asked for (a `cancel_sent` mark).
    UNLESS_STOPPED = "unless_stopped"


@dataclass(slots=True)
class StoredOperation:
    """An operation with what the store keeps beside it."""

    operation: Operation
    holder: str = ""
    lease_until: float = 0.0
    cancel_requested: bool = False


class OperationStore(Protocol):
    kind: str

    async def create(self, operation: Operation, items: Sequence[BatchItem], holder: str, lease_until: float) -> None:
        """Stores a new operation (and its named batches), leased to `holder` until `lease_until`."""

    async def get(self, name: str) -> StoredOperation | None: ...

    async def items(self, name: str) -> list[BatchItem]:
        """The operation's batches in the order they were found or named."""

    async def page(self, owner: str | None, page_size: int, page_token: str) -> tuple[list[Operation], str]:
        """Operations newest first (`owner` None: everyone's), up to `page_size` after the position
        `page_token` names ("" the start); the token of the next page ("" at the end). Raises
        BadPageToken."""

    async def delete(self, name: str) -> bool: ...

    async def count_running(self, owner: str) -> int:
        """How many of `owner`'s operations are not done."""

    async def request_cancel(self, name: str) -> bool:
        """Marks the operation for cancelling; False when it does not exist."""

    async def save(
        self,
        holder: str,
        now: float,
        operation: Operation,
        items: Sequence[BatchItem] = (),
        mode: SaveMode = SaveMode.MERGE,
    ) -> None:
        """Writes the operation and `items` (as `mode` says) in one transaction, if `holder` still
        holds an unexpired lease (else LeaseLost)."""

    async def claim(self, holder: str, now: float, lease_until: float, limit: int) -> list[str]:
        """Atomically takes up to `limit` operations that some worker must run and whose lease
        expired; returns their names."""

    async def renew(self, holder: str, names: Sequence[str], now: float, lease_until: float) -> dict[str, bool]:
        """Extends the leases `holder` still holds (unexpired) among `names`; returns those, each with
        whether a cancel was asked for."""

    async def release(self, holder: str, names: Sequence[str]) -> None:
        """Gives leases up at once (graceful shutdown), so another worker resumes without waiting."""

    async def delete_finished(self, created_before: float, limit: int) -> list[str]:
        """Deletes up to `limit` operations created before `created_before` (unix seconds) that are
        done and have no webhook left to deliver, oldest first; returns their names."""

    async def close(self) -> None: ...


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def active(operation: Operation) -> int:
    """Whether some worker must still run the operation: not done, or its webhook not delivered."""
    return int(not operation.done or operation.notification.state == NOTIFY_PENDING)


def created_us(operation: Operation) -> int:
    return int(operation.create_time * 1_000_000)


def encode_token(cursor: str) -> str:
    return base64.urlsafe_b64encode(cursor.encode()).decode().rstrip("=")


def decode_token(token: str) -> str:
    try:
        cursor = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadPageToken("page_token is not a token this service issued") from None
    if "|" not in cursor:
        raise BadPageToken("page_token is not a token this service issued")
    return cursor


async def decode_items(docs: Sequence[str | bytes]) -> list[BatchItem]:
    """Batches from their stored documents, `DECODE_PER_TURN` at a time with a turn of the event loop
    in between: a 100,000-batch operation takes about a second to decode, and every other call of
    this worker goes on meanwhile."""
    items: list[BatchItem] = []
    for start in range(0, len(docs), DECODE_PER_TURN):
        if start:
            await asyncio.sleep(0)
        items.extend(BatchItem.from_dict(orjson.loads(doc)) for doc in docs[start : start + DECODE_PER_TURN])
    return items
