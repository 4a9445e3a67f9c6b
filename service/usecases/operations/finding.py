"""The listing phase: the batches an operation touches, and the blast radius.

Every selected provider is listed under each configured batch key the caller may use (each key may
be another account); a batch found under two keys is kept under the first. A listing that fails in
a way retrying can fix (network, 408, 429, 5xx, an open circuit) is started again after a backoff,
never sooner than the provider's Retry-After, until the operation gives up; then, or on any other
error, the operation fails with the provider's error. Explicit batches are not listed. Nothing is
cancelled before the listing is complete: more matches than `max_batches` end the operation.
"""

from __future__ import annotations

import logging

from service.config.file import Key
from service.domain.errors import GatewayError
from service.domain.model import ListQuery
from service.domain.operations import BatchItem, Failure, Operation
from service.infra.providers.http import RETRYABLE_STATUSES, retry_after_seconds
from service.usecases.listing import list_batches
from service.usecases.operations.checks import check_access, default_statuses
from service.usecases.operations.run import Run
from service.usecases.target import Provider

log = logging.getLogger(__name__)

CAP_MESSAGE = "matches {matched} batches, more than max_batches {cap}; nothing was cancelled"

# Batches listed so far, by (provider, id).
Listed = dict[tuple[str, str], BatchItem]


async def find_batches(run: Run) -> list[BatchItem] | Failure:
    """The named batches (those stored already, after a restart), or every batch the selector
    matches; or the failure that ends the operation (a provider no longer usable, a listing that
    failed for good). Raises Stopped or Leaving."""
    selector = run.operation.command.selector
    if selector.explicit:
        return list(run.progress.items) or [BatchItem(provider, batch_id) for batch_id, provider in selector.batches]
    found: Listed = {}
    with run.owner() as owner:
        try:
            providers = check_access(owner.caller, run.operation.command, owner.canceller)
        except GatewayError as err:
            return Failure.of(err)
    for name in providers:
        with run.owner() as owner:
            try:
                provider = owner.canceller.provider(name)
                keys = owner.canceller.batch_keys(owner.caller, name)
            except GatewayError as err:
                return Failure.of(err)
            for key in keys:
                failure = await _list_under_key(run, provider, key, found)
                if failure is not None:
                    return failure
    return list(found.values())


def over_the_cap(operation: Operation, found: list[BatchItem]) -> Failure | None:
    """The refusal of more matches than `max_batches`, if there are."""
    cap = operation.command.max_batches
    if len(found) <= cap:
        return None
    return Failure(
        CAP_MESSAGE.format(matched=len(found), cap=cap),
        status_code=409,
        type="invalid_request_error",
        code="too_many_matches",
    )


def _query(operation: Operation) -> ListQuery:
    selector = operation.command.selector
    return ListQuery(
        statuses=default_statuses(operation.command),
        created_after=selector.created_after,
        created_before=selector.created_before,
        metadata=dict(selector.metadata),
    )


async def _list_under_key(run: Run, provider: Provider, key: Key, found: Listed) -> Failure | None:
    """Adds the key's matching batches to `found`, listing again after a failure retrying can fix;
    the failure that ends the operation, if the listing fails for good."""
    query = _query(run.operation)
    failures = 0
    while True:
        run.control.check()
        try:
            async for listed in list_batches(provider.adapter, provider, key, query, run.call()):  # masks answers
                run.control.check()
                batch_id = listed.state.id
                found.setdefault(
                    (provider.name, batch_id), BatchItem(provider.name, batch_id, key_id=key.id, state=listed.state)
                )
            return None
        except GatewayError as err:
            failures += 1
            delay = _delay(run, err, failures)
            if delay is None:
                return Failure.of(err)
            log.warning(
                "operation %s: listing %s failed (%s); again in %.1f s",
                run.operation.name,
                provider.name,
                err.message,
                delay,
            )
            await run.control.sleep(delay)


def _delay(run: Run, error: GatewayError, failures: int) -> float | None:
    """Seconds until listing again after `error` (the backoff, or the provider's Retry-After when
    longer); None when retrying cannot fix it or would not start before the operation gives up."""
    if error.status_code not in RETRYABLE_STATUSES:
        return None
    backoff = run.worker.policy.listing_retry.delay(failures, run.worker.timing.rand)
    delay = max(backoff, retry_after_seconds(error.headers.get("retry-after")) or 0.0)
    return delay if delay < run.remaining() else None
