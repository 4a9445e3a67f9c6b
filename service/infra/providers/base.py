"""What every provider adapter provides, and the parsing helpers they share."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, ClassVar, TypedDict, Unpack
from urllib.parse import quote, urlencode

import orjson

from service.config.file import Key, ProviderConfig
from service.config.reader import ConfigReader
from service.domain.errors import InvalidRequest, ProviderError, UpstreamUnavailable
from service.domain.model import STATUSES, BatchState, ListedBatch, ListQuery, RequestCounts

log = logging.getLogger(__name__)

# Unified states of a batch that has not finished. Right after an accepted cancel such a batch is
# reported as `cancelling`: several providers still answer the running state for a moment (Together's
# own cancel example says IN_PROGRESS; Bedrock's and Cohere's reads lag; Gemini has no interim state).
RUNNING_STATUSES = frozenset({"validating", "in_progress", "finalizing"})


def after_accepted_cancel(status: str) -> str:
    """The status to report for a batch read right after the provider accepted its cancel."""
    return "cancelling" if status in RUNNING_STATUSES else status


# Header names that carry credentials or that the HTTP layer and request signing own. A configured
# extra header never sends any of them: the only credential upstream is the gateway's chosen one.
RESERVED_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie", "host",
     "content-length", "transfer-encoding", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256"}
)  # fmt: skip


_EMPTY: Mapping[str, str] = MappingProxyType({})


def merge_headers(*layers: Mapping[str, str]) -> dict[str, str]:
    """Merges header layers, later ones winning; names compare case-insensitively (HTTP header names
    are), so `authorization` in one layer and `Authorization` in a later one send one header."""
    merged: dict[str, tuple[str, str]] = {}
    for layer in layers:
        for name, value in layer.items():
            merged[name.lower()] = (name, value)
    return dict(merged.values())


def extra_headers(configured: Mapping[str, str], provider: str) -> dict[str, str]:
    """A provider's `network_config.extra_headers` without the reserved ones (logged once, at start)."""
    dropped = sorted(name for name in configured if name.lower() in RESERVED_HEADERS)
    if dropped:
        log.warning("%s: extra_headers %s are not sent (the gateway sets them itself)", provider, ", ".join(dropped))
    return merge_headers({name: value for name, value in configured.items() if name.lower() not in RESERVED_HEADERS})


@dataclass(slots=True)
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None
    # `cancel`, `read` for a read of the batch, `list` for a page of a listing (metrics and logs
    # tell them apart).
    operation: str = "cancel"


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes


# An id may not change the upstream path: no separators, dot segments, query or fragment marks,
# percent-escapes (an encoded separator), backslashes, spaces or control characters.
_UNSAFE_ID = re.compile(r"[/?#%\\\s\x00-\x1f\x7f]|^\.{1,2}$|\.\.")
MAX_ID_LENGTH = 512


def path_segment(batch_id: str) -> str:
    """Checks a batch id and escapes it as exactly one URL path segment."""
    if not batch_id:
        raise InvalidRequest("batch_id is required", param="batch_id")
    if len(batch_id) > MAX_ID_LENGTH or _UNSAFE_ID.search(batch_id) or not batch_id.isprintable():
        raise InvalidRequest("batch_id contains characters that are not allowed in a batch id", param="batch_id")
    return quote(batch_id, safe="")


class ProviderSaid(TypedDict, total=False):
    """What a provider's error answer said besides its message, as read from its body (any JSON
    value: `Adapter.error` keeps only what fits), and how the gateway reads its status."""

    type: object
    code: object
    param: object
    status: int | None
    precondition: bool


class Adapter:
    """A provider's batch-cancel wire format. Subclasses set the class attributes and override the
    request builders and parsers (service/infra/providers/README.md is the checklist for a new one); the
    use case (`service.usecases.cancel`) drives them in this order:

    1. `parse_id(batch_id)` once, before any upstream call: validates the caller's id (in any form
       the provider accepts) and returns the reference the request builders take.
    2. per key: `cancel_request(key, ref)`, then `prepare(key, request)` (signing, tokens), sent;
    3. when `status_request(key, ref)` returns a request (the cancel answer does not carry the
       batch), it is prepared and sent too, within the same deadline; when the caller waits,
       `retrieve_request(key, ref)` reads the batch back until its status is terminal;
    4. `parse_batch(batch_id, data)` on the answer that carries the batch, `parse_error(response)`
       on a non-2xx answer.

    Finding batches (`service.usecases.listing`) drives `list_request(key, query, page_token)`
    (prepared and sent like a cancel) and `parse_list(data)` page after page, from no token until
    `parse_list` answers no next token.
    """

    name: ClassVar[str]
    default_base_url: ClassVar[str] = ""
    # Provider status (lowercased) -> unified status. Unknown ones pass through lowercased.
    statuses: ClassVar[Mapping[str, str]] = {}
    # Whether a caller's own key (client.allow_direct_keys) can stand in for a configured key's
    # value. Only adapters that authenticate with `key.value` alone say yes; the others (signed or
    # token-minted requests) refuse a direct key rather than use the gateway's own credentials.
    accepts_direct_keys: ClassVar[bool] = False
    # Header the provider takes a client request id in (logged on its side), if any.
    request_id_header: ClassVar[str | None] = None
    # How config reads this provider's keys (the adapter class is a `service.config.file.KeySchema`):
    # the name of its provider-specific block, and whether the secret `value` is required.
    key_settings_block: ClassVar[str | None] = None
    key_value_required: ClassVar[bool] = True
    # Listing: whether the provider documents its list as newest first (a listing may then stop at
    # the first batch created before the query's created_after), whether its batches carry
    # metadata or labels (a provider that keeps none never matches a metadata selector), and the
    # page size asked for (the provider's largest, or its documented example where it has none).
    lists_newest_first: ClassVar[bool] = False
    keeps_metadata: ClassVar[bool] = False
    list_page_size: ClassVar[int] = 100

    @classmethod
    def can_list(cls) -> bool:
        """Whether this provider's batches can be listed (the adapter builds a list request)."""
        return cls.list_request is not Adapter.list_request

    @classmethod
    def key_settings(cls, reader: ConfigReader) -> Any:
        """The typed settings of the key's `key_settings_block` (stored as `Key.settings`); raises
        ConfigError naming the field. Only adapters that set `key_settings_block` override it."""
        return None

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.extra_headers = extra_headers(config.network.extra_headers, self.name)
        self._unknown_statuses: set[str] = set()

    def base_url(self, key: Key) -> str:
        return self.config.network.base_url or self.default_base_url

    def headers(
        self, auth: Mapping[str, str], *, defaults: Mapping[str, str] = _EMPTY, fixed: Mapping[str, str] = _EMPTY
    ) -> dict[str, str]:
        """The request headers: the adapter's `defaults`, then the configured extra headers, then JSON
        accept and the adapter's `fixed` ones, then auth. Names compare case-insensitively, so the
        gateway's credential always wins."""
        return merge_headers(defaults, self.extra_headers, {"Accept": "application/json"}, fixed, auth)

    def auth_headers(self, key: Key) -> dict[str, str]:
        """The key's credential headers. Default: `Authorization: Bearer KEY`."""
        return {"Authorization": f"Bearer {key.value}"}

    def request(self, method: str, url: str, key: Key) -> UpstreamRequest:
        """A bodiless request to `url` with the usual headers and the key's credentials."""
        return UpstreamRequest(method, url, self.headers(self.auth_headers(key)))

    def caller_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Headers of the caller's own SDK to send upstream on the provider's drop-in route (checked
        here; raise InvalidRequest for a bad value). Default: none."""
        return {}

    def parse_id(self, batch_id: str) -> Any:
        path_segment(batch_id)  # raises InvalidRequest for an unsafe id
        return batch_id

    def cancel_request(self, key: Key, ref: Any) -> UpstreamRequest:
        raise NotImplementedError

    def status_request(self, key: Key, ref: Any) -> UpstreamRequest | None:
        """The follow-up read for providers whose cancel answers without the batch, else None."""
        return None

    def retrieve_request(self, key: Key, ref: Any) -> UpstreamRequest | None:
        """The provider's documented read of one batch (waiting for a cancel to take effect reads
        it until terminal); its answer is parsed by `parse_batch`. Default: the follow-up read."""
        return self.status_request(key, ref)

    def list_request(self, key: Key, query: ListQuery, page_token: str | None) -> UpstreamRequest | None:
        """The request for one page of the key's batches (`page_token` None: the first page), with
        the provider's own server-side filters for `query` where it has them; None when the
        provider cannot list. Its `operation` is `list`."""
        return None

    def parse_list(
        self, data: Any, *, page_token: str | None = None, query: ListQuery | None = None
    ) -> tuple[list[ListedBatch], str | None]:
        """The batches of one page answer and the token of the next page (None after the last).
        `page_token` and `query` are those the page was asked with: providers paged by number
        (Mistral) or listed once per status (Bedrock) continue from them."""
        raise NotImplementedError

    def listed(
        self, data: Any, field: str | None, *, id_field: str = "id", created_field: str = "created_at",
        metadata_field: str | None = None,
    ) -> list[ListedBatch]:  # fmt: skip
        """Each batch of a page answer (`data[field]`, or the answer itself for None) as `parse_batch`
        reads it, with its id (`id_field`), creation time and metadata; a batch without an id is the
        provider's failure (502)."""
        batches = []
        for item in page_items(data, field, self.name):
            batch_id = item.get(id_field) if isinstance(item, dict) else None
            if not isinstance(batch_id, str) or not batch_id:
                raise UpstreamUnavailable(f"{self.name} listed a batch without its {id_field}", provider=self.name)
            state = self.parse_batch(batch_id, item)
            state.created_at = unix_seconds(item.get(created_field))
            batches.append(ListedBatch(state, listed_metadata(item.get(metadata_field)) if metadata_field else {}))
        return batches

    def list_get(self, url: str, key: Key, params: Mapping[str, Any] | list[tuple[str, Any]]) -> UpstreamRequest:
        """A `list` GET of `url` with the query parameters (None values left out), the usual headers
        and the key's credentials (`request`)."""
        request = self.request("GET", with_query(url, params), key)
        request.operation = "list"
        return request

    async def prepare(self, key: Key, request: UpstreamRequest) -> UpstreamRequest:
        """Last step before sending: request signing or token minting. Default: nothing to do."""
        return request

    def parse_batch(self, batch_id: str, data: Any) -> BatchState:
        raise NotImplementedError

    def parse_error(self, response: UpstreamResponse) -> ProviderError:
        """Turns a non-2xx answer into a ProviderError that keeps the provider's HTTP status. Default:
        OpenAI's envelope `{"error": {"message", "type", "code", "param"}}` (or those fields at the
        top level, `detail` for the message, Google-style `status` for the code)."""
        data = decode_json(response, self.name, allow_error=True)
        err = data.get("error") if isinstance(data, dict) else None
        if not isinstance(err, dict):
            err = data if isinstance(data, dict) else {}
        message = err.get("message") or err.get("detail")
        return self.error(
            response,
            str(message) if message else None,
            type=err.get("type"),
            code=_str_or(err.get("code"), None) or err.get("status"),
            param=err.get("param"),
        )

    def error(self, response: UpstreamResponse, message: object, **said: Unpack[ProviderSaid]) -> ProviderError:
        """A ProviderError with the fallbacks every adapter shares: a message, type, code or param
        that is not a non-empty string is left out (a generic message, `provider_error`, none, none;
        `param` may be empty). `status` replaces the HTTP status; `precondition` (the batch is not in
        a state that allows a cancel, e.g. it already ended) is answered as 409, as OpenAI does, so
        a finished batch means the same on every provider."""
        http_status = 409 if said.get("precondition") else said.get("status") or response.status
        param = said.get("param")
        return ProviderError(
            _str_or(message, None) or f"{self.name} answered HTTP {response.status}",
            status_code=http_status,
            type=_str_or(said.get("type"), None) or "provider_error",
            code=_str_or(said.get("code"), None),
            param=param if isinstance(param, str) else None,
            provider=self.name,
        )

    def status(self, raw: Any) -> str:
        """Maps a provider status to the unified vocabulary; unknown ones pass through lowercased
        and are logged once per adapter."""
        if raw is not None and not isinstance(raw, str):
            raise TypeError(f"{self.name} sent a status that is not a string")  # 502 via the use case
        value = (raw or "").strip().lower()
        mapped = self.statuses.get(value)
        if mapped is not None:
            return mapped
        if value in STATUSES:
            return value
        if value not in self._unknown_statuses:
            self._unknown_statuses.add(value)
            log.warning("unknown %s batch status %r passed through", self.name, value)
        return value


def with_query(url: str, params: Mapping[str, Any] | list[tuple[str, Any]], safe: str = "") -> str:
    """`url` with the query parameters appended, percent-encoded as RFC 3986 (`%20`, never `+`);
    None values are left out, a list of pairs may repeat a name."""
    pairs = params.items() if isinstance(params, Mapping) else params
    kept = [(name, str(value)) for name, value in pairs if value is not None]
    if not kept:
        return url
    return f"{url}{'&' if '?' in url else '?'}{urlencode(kept, quote_via=quote, safe=safe)}"


def listed_metadata(value: Any) -> dict[str, str]:
    """A batch's metadata or labels as strings: string values as they are, numbers and booleans as
    JSON writes them, anything else (nested objects, lists, null) left out."""
    if not isinstance(value, Mapping):
        return {}
    out: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(name, str):
            continue
        if isinstance(item, str):
            out[name] = item
        elif isinstance(item, bool):
            out[name] = "true" if item else "false"
        elif isinstance(item, (int, float)) and math.isfinite(item):
            out[name] = str(item)
    return out


def rfc3339(seconds: int) -> str:
    """Unix seconds as an RFC 3339 UTC time (`2026-01-02T03:04:05Z`)."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def next_token(data: Any, name: str) -> str | None:
    """A page answer's next-page token (`data[name]`), None when absent or empty."""
    token = data.get(name) if isinstance(data, dict) else None
    return token if isinstance(token, str) and token else None


def page_items(data: Any, field: str | None, provider: str) -> list[Any]:
    """The list of batches in a page answer (`data[field]`, or the answer itself for `None`); a
    missing list is an empty page (proto3 JSON leaves empty lists out), anything else is the
    provider's failure (502)."""
    if field is None:
        items = data
    elif isinstance(data, dict):
        items = data.get(field, [])
        items = [] if items is None else items
    else:
        items = None
    if not isinstance(items, list):
        raise UpstreamUnavailable(f"{provider} answered a list of an unexpected shape", provider=provider)
    return items


def _str_or(value: Any, default: str | None) -> str | None:
    return value if isinstance(value, str) and value else default


def decode_json(response: UpstreamResponse, provider: str, *, allow_error: bool = False) -> Any:
    """Parses a JSON answer. An HTML page or broken JSON is an upstream failure (502), never parsed
    as data; on error answers (allow_error) it yields {} so the caller falls back to the status."""
    ctype = response.headers.get("Content-Type", "")
    body = response.body
    if "html" in ctype or body[:1] == b"<":
        if allow_error:
            return {}
        raise UpstreamUnavailable(f"{provider} answered with an HTML page instead of JSON", provider=provider)
    if not body.strip():
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        if allow_error:
            return {}
        raise UpstreamUnavailable(f"{provider} answered with malformed JSON", provider=provider) from None


# Values above this are milliseconds, not seconds (1e11 s is the year 5138).
_MILLIS_THRESHOLD = 100_000_000_000
_UINT32_MAX = 2**32 - 1


def unix_seconds(value: Any) -> int | None:
    """Unix seconds from an int, a float, a numeric string (milliseconds are recognised) or an
    RFC 3339 / ISO 8601 string; None for anything else, for times at or before 1970, and for times
    past 2106 (the response carries uint32)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not _NUMBER.match(text):
            seconds = _parse_iso(text)
            return _in_range(int(seconds)) if seconds is not None else None
        value = float(text)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return _in_range(int(value / 1000 if value > _MILLIS_THRESHOLD else value))


def _in_range(seconds: int) -> int | None:
    return seconds if 0 < seconds <= _UINT32_MAX else None


_NUMBER = re.compile(r"^[0-9]+(\.[0-9]+)?$")


def _parse_iso(text: str) -> float | None:
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # datetime keeps microseconds at most; Google sends up to nanoseconds.
    match = re.match(r"^(.*?\.\d{1,6})\d*(.*)$", text)
    if match:
        text = match.group(1) + match.group(2)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def known_counts(counts: RequestCounts) -> RequestCounts | None:
    """The counts, or None when the provider reported none of them (never invented zeros)."""
    return None if counts == RequestCounts() else counts


def count(value: Any) -> int | None:
    """A request count from an int or a numeric string (Google sends int64 as strings); None for
    anything else, negatives (Vertex's -1 means unknown) and values beyond uint32."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if not isinstance(value, int):
        return None
    return value if 0 <= value <= _UINT32_MAX else None
