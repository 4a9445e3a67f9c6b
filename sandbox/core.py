"""Shared simulator machinery: batch state, per-provider stores, fault injection, call recording and
the base class every simulated provider builds on.

Batch state uses the OpenAI status vocabulary (validating, in_progress, finalizing, completed,
failed, expired, cancelling, cancelled); each provider module renders it in its own wire shape.
State advances lazily when a batch is read, so the simulator runs no background tasks.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import re
import uuid
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from itertools import count as counter
from itertools import repeat
from time import monotonic, time
from typing import Any, ClassVar

import orjson
from aiohttp import web

CANCELLABLE = frozenset({"validating", "in_progress", "finalizing"})
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
STATUSES = CANCELLABLE | TERMINAL | {"cancelling"}

DEFAULT_COUNTS: Mapping[str, int] = {"total": 100, "completed": 10, "failed": 0}
DEFAULT_CANCEL_DELAY_S = 0.2
# With auto_create, ids with this prefix stay unknown so a demo can show a 404.
MISSING_PREFIX = "missing"
# Auto-created batches beyond this many evict the oldest auto-created one (benchmarks touch many ids).
AUTO_CREATED_LIMIT = 100_000
CALLS_LIMIT = 10_000
BATCH_LIFETIME_S = 24 * 3600

MALFORMED_JSON = b'{"id": "batch_sandbox", "object": "batch", "status": "in_pro'
BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)

_INTEGER = re.compile(r"[+-]?[0-9]+")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# A position in a store's creation order: (created_at, insertion sequence number).
Position = tuple[int, int]


class NotCancellable(Exception):
    """The batch already reached a terminal state."""

    def __init__(self, batch: SimBatch) -> None:
        super().__init__(f"batch {batch.id!r} is {batch.status}")
        self.batch = batch


@dataclass(slots=True)
class SimBatch:
    """One simulated batch. `cancel_delay_s` is the time from the cancel call until the batch reads
    as `cancelled` (0: it is `cancelling` in the cancel answer and `cancelled` on the next read)."""

    provider: str
    id: str
    status: str = "in_progress"
    created_at: int = field(default_factory=lambda: int(time()))
    request_counts: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_COUNTS))
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    cancel_delay_s: float = DEFAULT_CANCEL_DELAY_S
    in_progress_at: int | None = None
    # The batch's own metadata (labels on Vertex), rendered only by providers that keep metadata.
    metadata: dict[str, str] | None = None
    # The key (one of the simulator's keys for the provider) whose account the batch belongs to:
    # only that key lists, reads and cancels it. None: every accepted key sees it.
    owner: str | None = None
    # Exact time the cancel was accepted; cancelling_at is its whole-second rendering.
    _cancel_started: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError("id must be a non-empty string")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {sorted(STATUSES)}, not {self.status!r}")
        if not _is_number(self.cancel_delay_s) or self.cancel_delay_s < 0:
            raise ValueError("cancel_delay_s must be a number >= 0")
        for name in ("created_at", "cancelling_at", "cancelled_at", "in_progress_at"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{name} must be unix seconds (an integer)")
        self.request_counts = _counts(self.request_counts)
        if self.metadata is not None:
            self.metadata = _metadata(self.metadata)
        if self.owner is not None and (not isinstance(self.owner, str) or not self.owner):
            raise ValueError("owner must be a non-empty string (a key of the provider)")
        if self.in_progress_at is None and self.status not in ("validating", "failed"):
            self.in_progress_at = self.created_at
        if self.status == "cancelling":
            self._cancel_started = time() if self.cancelling_at is None else float(self.cancelling_at)
            self.cancelling_at = int(self._cancel_started)
        elif self.status == "cancelled":
            self.cancelled_at = self.cancelled_at or int(time())
            self.cancelling_at = self.cancelling_at or self.cancelled_at

    def visible_to(self, account: str | None) -> bool:
        """Whether the key `account` may see this batch (its owner's, or an unowned batch)."""
        return self.owner is None or self.owner == account

    def refresh(self, now: float) -> SimBatch:
        """Advances a pending cancel: `cancelling` reads as `cancelled` once cancel_delay_s passed."""
        if self.status == "cancelling" and now - self._cancel_started >= self.cancel_delay_s:
            self.status = "cancelled"
            self.cancelled_at = int(self._cancel_started + self.cancel_delay_s)
        return self

    def cancel(self, now: float, *, immediately: bool = False) -> SimBatch:
        """Accepts a cancel: running batches move to `cancelling`; a batch already `cancelling` is
        left as it is (with `immediately`, either one is `cancelled` at `now` instead). Raises
        NotCancellable for a finished batch."""
        if self.status in TERMINAL:
            raise NotCancellable(self)
        if self.status != "cancelling":
            self.status = "cancelling"
            self.cancelling_at = int(now)
            self._cancel_started = now
        if immediately:
            self.status, self.cancelled_at = "cancelled", int(now)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The batch as an OpenAI Batch object (the canonical shape, also used by the admin API)."""
        status, created = self.status, self.created_at
        expires = created + BATCH_LIFETIME_S
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "errors": None,
            "input_file_id": "file-sandbox-input",
            "completion_window": "24h",
            "status": status,
            "output_file_id": None,
            "error_file_id": None,
            "created_at": created,
            "in_progress_at": self.in_progress_at,
            "expires_at": expires,
            "finalizing_at": created if status in ("finalizing", "completed") else None,
            "completed_at": created if status == "completed" else None,
            "failed_at": created if status == "failed" else None,
            "expired_at": expires if status == "expired" else None,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": dict(self.request_counts),
            "metadata": None if self.metadata is None else dict(self.metadata),
        }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metadata(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("metadata must be an object of string values")
    return dict(value)


def _counts(value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping) or not set(value) <= set(DEFAULT_COUNTS):
        raise ValueError(f"request_counts must be an object with keys {sorted(DEFAULT_COUNTS)}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value.values()):
        raise ValueError("request_counts values must be integers >= 0")
    return {**DEFAULT_COUNTS, **value}


class BatchStore:
    """One provider's batches. With `auto_create`, an unknown id (not starting with `missing`) is
    created on first touch as an in_progress batch with the default counts.

    Seeded batches are also kept in creation order (created_at, then insertion), so a list page
    costs O(page + batches skipped by its filter) from a cursor, not O(all batches). Auto-created
    batches are never listed: they stand for ids a caller already knows."""

    def __init__(
        self, provider: str, *, auto_create: bool = False, cancel_delay_s: float = DEFAULT_CANCEL_DELAY_S
    ) -> None:
        self.provider = provider
        self.auto_create = auto_create
        # How long batches created without their own `cancel_delay_s` stay `cancelling`.
        self.cancel_delay_s = cancel_delay_s
        # Makes a fresh id in the provider's format (set by the provider's simulator).
        self.new_id: Callable[[], str] = lambda: f"batch_{uuid.uuid4().hex[:24]}"
        self._seeded: dict[str, SimBatch] = {}
        self._auto: dict[str, SimBatch] = {}
        self._order: list[Position] = []  # ascending
        self._positions: dict[str, Position] = {}
        self._by_seq: dict[int, SimBatch] = {}
        self._seq = counter()

    def __len__(self) -> int:
        """How many seeded (listable) batches the store holds."""
        return len(self._seeded)

    def seed(self, id: str, **fields: Any) -> SimBatch:
        """Creates or replaces a batch; `fields` are SimBatch fields (status, created_at, ...)."""
        return self.seed_many([{**fields, "id": id}])[0]

    def seed_many(self, batches: Iterable[Mapping[str, Any]]) -> list[SimBatch]:
        """Creates or replaces batches (each a mapping of SimBatch fields with its `id`); all are
        validated before any is stored. A large seed is sorted into the order once."""
        created: dict[str, SimBatch] = {}  # a repeated id: the last one wins
        for fields in batches:
            fields = dict(fields)
            fields.setdefault("cancel_delay_s", self.cancel_delay_s)
            batch = SimBatch(self.provider, fields.pop("id", None), **fields)
            created.pop(batch.id, None)
            created[batch.id] = batch
        for batch_id in created:
            self._forget(batch_id)
            self._auto.pop(batch_id, None)
        bulk = len(created) > 64
        for batch in created.values():
            self._seeded[batch.id] = batch
            position = (batch.created_at, next(self._seq))
            self._positions[batch.id] = position
            self._by_seq[position[1]] = batch
            if bulk:
                self._order.append(position)
            else:
                insort(self._order, position)
        if bulk:
            self._order.sort()
        return list(created.values())

    def _forget(self, batch_id: str) -> None:
        position = self._positions.pop(batch_id, None)
        if position is not None:
            del self._order[bisect_left(self._order, position)]
            del self._by_seq[position[1]]

    def peek(self, batch_id: str) -> SimBatch | None:
        """The batch's current state without auto-creating it (whoever owns it)."""
        batch = self._seeded.get(batch_id)
        if batch is None:
            batch = self._auto.get(batch_id)
        return None if batch is None else batch.refresh(time())

    def get(self, batch_id: str, account: str | None = None) -> SimBatch | None:
        """The batch as the key `account` sees it: None when it does not exist or belongs to
        another key; auto-created when the store does that and no batch has the id."""
        batch = self.peek(batch_id)
        if batch is not None:
            return batch if batch.visible_to(account) else None
        if self.auto_create and not batch_id.startswith(MISSING_PREFIX):
            if len(self._auto) >= AUTO_CREATED_LIMIT:
                del self._auto[next(iter(self._auto))]
            batch = self._auto[batch_id] = SimBatch(self.provider, batch_id, cancel_delay_s=self.cancel_delay_s)
        return batch

    def position(self, batch_id: str) -> Position | None:
        """A seeded batch's place in the creation order (a list cursor), whoever owns it."""
        return self._positions.get(batch_id)

    def page(
        self,
        account: str | None,
        *,
        limit: int,
        after: Position | None = None,
        newest_first: bool = True,
        where: Callable[[SimBatch], bool] | None = None,
    ) -> tuple[list[SimBatch], bool]:
        """Up to `limit` batches that `account` sees and `where` accepts, beyond the position
        `after` in the listing's direction, and whether more such batches follow."""
        order, by_seq, now = self._order, self._by_seq, time()
        if newest_first:
            i, step = (len(order) if after is None else bisect_left(order, after)) - 1, -1
        else:
            i, step = (0 if after is None else bisect_right(order, after)), 1
        found: list[SimBatch] = []
        while 0 <= i < len(order):
            batch = by_seq[order[i][1]]
            i += step
            if not batch.visible_to(account):
                continue
            batch.refresh(now)
            if where is not None and not where(batch):
                continue
            if len(found) >= limit:
                return found, True
            found.append(batch)
        return found, False

    def next_token(self, batches: list[SimBatch], more: bool) -> str | None:
        """The page token that continues after a page (None after the last page)."""
        return page_token(self._positions[batches[-1].id]) if more and batches else None

    def clear(self) -> None:
        self._seeded.clear()
        self._auto.clear()
        self._order.clear()
        self._positions.clear()
        self._by_seq.clear()


def page_token(position: Position) -> str:
    """An opaque page token for a list cursor."""
    return base64.urlsafe_b64encode(f"{position[0]}.{position[1]}".encode()).decode().rstrip("=")


def parse_page_token(token: str) -> Position | None:
    """The cursor in a page token, None when the token is not one this simulator made."""
    try:
        created, seq = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode().split(".")
        return int(created), int(seq)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        return None


class RateLimit:
    """At most `per_second` admitted calls in any sliding second. `admit` answers None for an
    admitted call, else the seconds until the next call would be admitted."""

    def __init__(self, per_second: int) -> None:
        if not isinstance(per_second, int) or isinstance(per_second, bool) or per_second < 1:
            raise ValueError("per_second must be an integer >= 1")
        self.per_second = per_second
        self._admitted: deque[float] = deque()

    def admit(self, now: float) -> float | None:
        admitted = self._admitted
        while admitted and now - admitted[0] >= 1.0:
            admitted.popleft()
        if len(admitted) < self.per_second:
            admitted.append(now)
            return None
        return 1.0 - (now - admitted[0])


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected misbehaviour, consumed by one call. Effects combine in this order: wait
    `latency_ms`, then the first of reset (drop the connection), malformed (200 with truncated
    JSON), html (502 HTML page) or status (an error answer); with none of those the call is then
    answered normally."""

    status: int | None = None
    retry_after: float | None = None
    body: str | None = None
    content_type: str | None = None
    latency_ms: float = 0
    reset: bool = False
    malformed: bool = False
    html: bool = False

    @classmethod
    def parse(cls, data: Any) -> tuple[Fault, int]:
        """A fault and its repeat count from its JSON form; ValueError when it is not valid."""
        if not isinstance(data, Mapping):
            raise ValueError("a fault must be a JSON object")
        fields = dict(data)
        count = fields.pop("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError("count must be an integer >= 1")
        try:
            fault = cls(**fields)
        except TypeError:
            unknown = sorted(set(fields) - set(cls.__dataclass_fields__))
            raise ValueError(f"unknown fault fields {unknown}") from None
        fault._validate()
        return fault, count

    def _validate(self) -> None:
        if self.status is not None:
            lowest = 200 if self.body is not None else 400
            if not isinstance(self.status, int) or isinstance(self.status, bool) or not lowest <= self.status <= 599:
                raise ValueError(f"status must be an HTTP status {lowest}-599")
        elif (self.retry_after, self.body, self.content_type) != (None, None, None):
            raise ValueError("retry_after, body and content_type need a status")
        if self.retry_after is not None and (not _is_number(self.retry_after) or self.retry_after < 0):
            raise ValueError("retry_after must be a number of seconds >= 0")
        for name in ("body", "content_type"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string")
        if not _is_number(self.latency_ms) or self.latency_ms < 0:
            raise ValueError("latency_ms must be a number >= 0")
        if not all(isinstance(flag, bool) for flag in (self.reset, self.malformed, self.html)):
            raise ValueError("reset, malformed and html must be booleans")
        if self.status is None and not (self.latency_ms or self.reset or self.malformed or self.html):
            raise ValueError("a fault needs one of status, latency_ms, reset, malformed or html")


class Simulator:
    """The state of one sandbox: a batch store and a fault queue per provider, the accepted keys
    (`keys[provider]`; a provider without keys accepts none), recorded calls and options."""

    def __init__(
        self,
        *,
        keys: Mapping[str, Iterable[str]],
        auto_create: bool = False,
        azure_quirks: bool = False,
        cancel_delay_s: float = DEFAULT_CANCEL_DELAY_S,
    ) -> None:
        if not _is_number(cancel_delay_s) or cancel_delay_s < 0:
            raise ValueError("cancel_delay_s must be a number >= 0")
        self.keys = {provider: frozenset(values) for provider, values in keys.items()}
        self.auto_create = auto_create
        self.azure_quirks = azure_quirks
        self.cancel_delay_s = cancel_delay_s
        # Calls being answered right now and the most there were at once (reset() zeroes the peak).
        self.in_flight = 0
        self.peak_in_flight = 0
        # The clock cancel rate limits count with (tests replace it).
        self.clock: Callable[[], float] = monotonic
        self._stores: dict[str, BatchStore] = {}
        self._faults: dict[str, deque[Fault]] = {}
        self._cancel_limits: dict[str, RateLimit] = {}
        self._calls: deque[dict[str, Any]] = deque(maxlen=CALLS_LIMIT)

    @property
    def providers(self) -> list[str]:
        return list(self._stores)

    def add_provider(self, provider: str) -> BatchStore:
        """Registers a simulated provider and returns its batch store."""
        store = self._stores.setdefault(
            provider, BatchStore(provider, auto_create=self.auto_create, cancel_delay_s=self.cancel_delay_s)
        )
        self._faults.setdefault(provider, deque())
        return store

    def store(self, provider: str) -> BatchStore:
        try:
            return self._stores[provider]
        except KeyError:
            raise KeyError(f"no simulated provider {provider!r}; known: {self.providers}") from None

    def seed(self, provider: str, id: str, **fields: Any) -> SimBatch:
        """Creates or replaces a batch, e.g. `seed("openai", "b1", status="completed")`."""
        return self.store(provider).seed(id, **fields)

    def seed_many(self, provider: str, batches: Iterable[Mapping[str, Any]]) -> list[SimBatch]:
        """Creates or replaces many batches at once (each a mapping of SimBatch fields with `id`)."""
        return self.store(provider).seed_many(batches)

    def batch(self, provider: str, batch_id: str) -> SimBatch | None:
        """A batch's current state (never auto-created)."""
        return self.store(provider).peek(batch_id)

    def set_cancel_rate(self, provider: str, per_second: int | None) -> None:
        """Lets the provider accept at most `per_second` cancel calls in any second; beyond that a
        cancel is answered 429 with the provider's own body and a Retry-After header. None lifts
        the limit."""
        self.store(provider)  # unknown provider -> KeyError
        if per_second is None:
            self._cancel_limits.pop(provider, None)
        else:
            self._cancel_limits[provider] = RateLimit(per_second)

    def cancel_rate(self, provider: str) -> int | None:
        limit = self._cancel_limits.get(provider)
        return None if limit is None else limit.per_second

    def admit_cancel(self, provider: str) -> float | None:
        """None when a cancel call may proceed now, else the seconds until one may."""
        limit = self._cancel_limits.get(provider)
        return None if limit is None else limit.admit(self.clock())

    def add_fault(self, provider: str, fault: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> int:
        """Queues one fault or a list of them (all validated first); returns how many calls are
        now pending a fault."""
        self.store(provider)  # unknown provider -> KeyError
        queue = self._faults[provider]
        parsed = [Fault.parse(item) for item in ([fault] if isinstance(fault, Mapping) else fault)]
        for item, count in parsed:
            queue.extend(repeat(item, count))
        return len(queue)

    def next_fault(self, provider: str) -> Fault | None:
        queue = self._faults[provider]
        return queue.popleft() if queue else None

    def key_ok(self, provider: str, key: str | None) -> bool:
        return bool(key) and key in self.keys.get(provider, ())

    def record(self, provider: str, request: web.Request, body: str) -> None:
        self._calls.append(
            {
                "provider": provider,
                "method": request.method,
                "path": request.raw_path.partition("?")[0],
                "query": dict(request.query),
                "headers": {str(name): value for name, value in request.headers.items()},
                "body": body,
                "at": time(),
            }
        )

    def calls(self, provider: str | None = None) -> list[dict[str, Any]]:
        """Recorded provider calls, oldest first (the last CALLS_LIMIT)."""
        return [call for call in self._calls if provider is None or call["provider"] == provider]

    def clear_calls(self) -> None:
        self._calls.clear()

    def reset(self) -> None:
        """Forgets all batches, pending faults, cancel rate limits and recorded calls."""
        for store in self._stores.values():
            store.clear()
        for queue in self._faults.values():
            queue.clear()
        self._cancel_limits.clear()
        self._calls.clear()
        self.peak_in_flight = self.in_flight


SIMULATOR_KEY = web.AppKey("sandbox_simulator", Simulator)


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def bearer_token(request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def mask_key(key: str) -> str:
    """A key as providers echo it: first 3 and last 4 characters; short keys are not shown at all."""
    return f"{key[:3]}...{key[-4:]}" if len(key) >= 12 else "***"


def reason(status: int) -> str:
    """The HTTP reason phrase for a status ('HTTP 599' for unregistered ones)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def int_query(request: web.Request, name: str) -> int | None:
    """An integer query parameter (None when absent); ValueError when it is not an integer."""
    text = request.query.get(name)
    if text is None or text == "":
        return None
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"{name} is not an integer: {text!r}")
    return int(text)


def coerced_page_size(request: web.Request, name: str, default: int, maximum: int) -> int:
    """A page size as Google-style APIs take it (AIP-158): absent or 0 is `default`, above
    `maximum` is `maximum`; ValueError for a negative or non-integer one."""
    size = int_query(request, name)
    if size is not None and size < 0:
        raise ValueError(f"{name} must not be negative")
    return min(size or default, maximum)


def token_query(request: web.Request, name: str) -> Position | None:
    """The cursor in a page token parameter (None when absent or empty); ValueError for a token
    this simulator did not make."""
    token = request.query.get(name)
    if not token:
        return None
    cursor = parse_page_token(token)
    if cursor is None:
        raise ValueError(f"invalid {name}")
    return cursor


def retry_after_header(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


class ProviderSim:
    """One provider's simulated API, mounted under a URL prefix. Subclasses set `name`, list their
    routes in `routes()`, and implement the provider's error envelope (`status_error`,
    `not_found_route`). Every call is recorded and may be replaced by a queued fault before the
    route handler runs."""

    name: ClassVar[str]
    # URL prefix the sandbox mounts the provider under, and the key the sandbox accepts by default.
    prefix: ClassVar[str]
    default_key: ClassVar[str]
    # Where providers differ in what batchgate answers for them (unified HTTP status), for the tests
    # every provider must pass (tests/integration/test_provider_contract.py): a cancel of a batch
    # that already ended, and a call with a key the provider does not know.
    finished_cancel_status: ClassVar[int] = 409
    unknown_key_status: ClassVar[int] = 401

    @classmethod
    def new_batch_id(cls) -> str:
        """A fresh batch id in the provider's own format."""
        return f"batch_{uuid.uuid4().hex[:24]}"

    @classmethod
    def unknown_key(cls) -> str:
        """A key of the right shape that this provider refuses."""
        return f"unknown-{cls.default_key}"

    @classmethod
    def gateway_config(cls, base_url: str, key: str) -> dict[str, Any]:
        """The config.json provider block that points batchgate at this simulator (served at
        `base_url`, which ends in the prefix) with `key`."""
        return {
            "keys": [{"name": "sandbox", "value": key, "use_for_batch_api": True}],
            "network_config": {"base_url": base_url},
        }

    def __init__(self, sim: Simulator, prefix: str) -> None:
        self.sim = sim
        self.prefix = prefix.rstrip("/")
        self.store = sim.add_provider(self.name)
        self.store.new_id = self.new_batch_id

    def account(self, request: web.Request) -> str | None:
        """The accepted key an authenticated request came with (batches owned by another key are
        invisible to it). Called only after the request passed the provider's authentication."""
        return bearer_token(request)

    def cursor_of(self, batch_id: str, account: str | None) -> Position | None:
        """The list position of a listed batch that `account` sees (an id used as a cursor)."""
        batch = self.store.peek(batch_id)
        if batch is None or not batch.visible_to(account):
            return None
        return self.store.position(batch_id)

    def routes(self) -> list[tuple[str, str, Handler]]:
        """(method, path below the prefix, handler) for each provider endpoint."""
        raise NotImplementedError

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        """The cancel endpoint, for a provider whose cancel and read answer alike (see `answer`)."""
        return self.answer(request, cancel=True)

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        """The read endpoint, for a provider whose cancel and read answer alike (see `answer`)."""
        return self.answer(request, cancel=False)

    def answer(self, request: web.Request, *, cancel: bool) -> web.StreamResponse:
        """Authenticates, finds the batch, cancels it when `cancel` and answers in the provider's shape."""
        raise NotImplementedError

    def status_error(self, status: int) -> web.Response:
        """The provider's answer for an injected error status without a body."""
        raise NotImplementedError

    async def not_found_route(self, request: web.Request) -> web.StreamResponse:
        """The provider's answer for a path below the prefix that matches no endpoint."""
        raise NotImplementedError

    def response_headers(self) -> dict[str, str]:
        """Headers the provider sends on every answer (request ids)."""
        return {}

    def route_table(self) -> list[web.RouteDef]:
        """The provider's routes under its prefix plus a catch-all for unknown paths, all recorded
        and subject to faults. Every POST route of a provider is its cancel, which the cancel rate
        limit (`Simulator.set_cancel_rate`) applies to."""
        table = [
            web.route(method, self.prefix + path, self._wrap(handler, cancel=method == "POST"))
            for method, path, handler in self.routes()
        ]
        table.append(web.route("*", self.prefix + "/{tail:.*}", self._wrap(self.not_found_route)))
        return table

    def _wrap(self, handler: Handler, *, cancel: bool = False) -> Handler:
        async def dispatch(request: web.Request) -> web.StreamResponse:
            sim = self.sim
            sim.record(self.name, request, await request.text())
            sim.in_flight += 1
            sim.peak_in_flight = max(sim.peak_in_flight, sim.in_flight)
            try:
                fault = sim.next_fault(self.name)
                if fault is not None:
                    response = await self._inject(fault, request)
                    if response is not None:
                        return response
                wait = sim.admit_cancel(self.name) if cancel else None
                if wait is not None:
                    response = self.status_error(429)
                    response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
                    return response
                return await handler(request)
            finally:
                sim.in_flight -= 1

        return dispatch

    async def _inject(self, fault: Fault, request: web.Request) -> web.StreamResponse | None:
        """The fault's answer, or None when the call should be answered normally after its latency."""
        if fault.latency_ms:
            await asyncio.sleep(fault.latency_ms / 1000)
        if fault.reset:
            if request.transport is not None:
                request.transport.abort()
            return web.Response()  # never sent: the connection is gone
        if fault.malformed:
            return web.Response(body=MALFORMED_JSON, content_type="application/json", headers=self.response_headers())
        if fault.html:
            return web.Response(status=502, text=BAD_GATEWAY_HTML, content_type="text/html")
        if fault.status is None:
            return None
        if fault.body is not None:
            headers = {**self.response_headers(), "Content-Type": fault.content_type or "application/json"}
            response = web.Response(status=fault.status, body=fault.body.encode(), headers=headers)
        else:
            response = self.status_error(fault.status)
        if fault.retry_after is not None:
            response.headers["Retry-After"] = retry_after_header(fault.retry_after)
        return response
