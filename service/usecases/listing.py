"""Finding batches: one provider's batches under one key, page after page, that match a query.

`list_batches` sends each page's request (from the adapter's `list_request`, prepared like a
cancel: signed, token minted) through the provider's executor (its retries, breaker and timeout),
follows the provider's pagination to the end and yields the batches that `matches` the query,
whatever the provider filtered on its side. On a list the provider documents as newest first it
stops after the first page that reaches a batch created before `created_after`. A listing never
sends anything but GETs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from service.config.file import Key
from service.domain.errors import GatewayError, UnsupportedOperation, UpstreamUnavailable
from service.domain.model import ListedBatch, ListQuery, matches
from service.infra.providers.base import Adapter, decode_json, merge_headers
from service.infra.providers.http import keep_retry_after
from service.usecases.context import CallContext
from service.usecases.target import Sender

log = logging.getLogger(__name__)


def providers_that_can_list(adapters: Mapping[str, Adapter], allowed: Iterable[str] | None = None) -> list[str]:
    """The providers (sorted) among the configured `adapters` whose batches can be listed, within
    `allowed` (the providers the caller may use; None: all of them). What an empty `providers`
    selector means."""
    names = adapters if allowed is None else [name for name in allowed if name in adapters]
    return sorted(name for name in names if adapters[name].can_list())


async def list_batches(
    adapter: Adapter, executor: Sender, key: Key, query: ListQuery, call: CallContext
) -> AsyncIterator[ListedBatch]:
    """The key's batches on the adapter's provider that match `query`, each once. The call's
    deadline (`call.deadline`, loop time) bounds the whole listing; each page also gets at most the
    provider's timeout; its record (`call.record`) counts the pages and names the request id. A
    provider's error answer raises the adapter's parsed error (with the provider's Retry-After of a
    429 or 503, as a cancel's); a page of an unexpected shape
    raises UpstreamUnavailable (502); a provider that cannot list raises UnsupportedOperation."""
    loop = asyncio.get_running_loop()
    token: str | None = None
    asked: set[str] = set()
    seen: set[str] = set()
    while True:
        request = adapter.list_request(key, query, token)
        if request is None:
            raise UnsupportedOperation(f"listing batches is not supported by provider: {adapter.name}")
        record = call.record
        if adapter.request_id_header and record is not None:
            request.headers = merge_headers(request.headers, {adapter.request_id_header: record.request_id})
        page_deadline = loop.time() + adapter.config.network.timeout_s
        if call.deadline is not None:
            page_deadline = min(page_deadline, call.deadline)
        response = await executor.send(await adapter.prepare(key, request), page_deadline, record)
        if response.status >= 300:
            raise keep_retry_after(adapter.parse_error(response), response)
        batches, next_token = _parse_page(adapter, decode_json(response, adapter.name), token, query)
        passed = False
        for batch in batches:
            batch_id = batch.state.id
            if batch_id in seen or not _cancellable_id(adapter, batch_id):
                continue
            seen.add(batch_id)
            created = batch.state.created_at
            if query.created_after and created is not None and created < query.created_after:
                passed = True
            if matches(batch, query):
                yield batch
        if next_token is None or (passed and adapter.lists_newest_first):
            return
        if next_token in asked:
            log.warning("%s answered a page token it answered before; the listing ends there", adapter.name)
            return
        asked.add(next_token)
        token = next_token


def _parse_page(
    adapter: Adapter, data: Any, token: str | None, query: ListQuery
) -> tuple[list[ListedBatch], str | None]:
    """The adapter's reading of a page; a page of the wrong shape is the provider's failure (502)."""
    try:
        return adapter.parse_list(data, page_token=token, query=query)
    except GatewayError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError):
        log.warning("%s answered a list page of an unexpected shape", adapter.name, exc_info=True)
        raise UpstreamUnavailable(
            f"{adapter.name} answered a list of an unexpected shape", provider=adapter.name
        ) from None


def _cancellable_id(adapter: Adapter, batch_id: str) -> bool:
    """Whether a listed id is one a cancel of this provider takes (a hostile or broken answer could
    list anything); one that is not is left out, and logged."""
    try:
        adapter.parse_id(batch_id)
    except GatewayError:
        log.warning("%s listed a batch id a cancel would refuse; left out", adapter.name)
        return False
    return True
