"""Reading a batch back with the key that cancelled it: the follow-up read after an accepted cancel
(for providers whose cancel answers without the batch), and the provider's retrieve call that a wait
repeats until the batch is terminal. Either way a batch that has not finished reads as `cancelling`
(`after_accepted_cancel`), whatever the provider's answer still says."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from service.domain.errors import GatewayError, UnsupportedOperation
from service.domain.model import BatchState
from service.infra.providers.base import UpstreamRequest, after_accepted_cancel, decode_json
from service.infra.providers.http import keep_retry_after
from service.usecases.context import CallContext
from service.usecases.failover import Accepted
from service.usecases.target import Target, outgoing, parse_batch

log = logging.getLogger(__name__)


@dataclass(slots=True)
class StateAfterCancel:
    """The batch after an accepted cancel, the provider's answers (`{"cancel", "retrieve"}` when a
    follow-up read was made) and a warning when that read failed."""

    batch: BatchState
    raw: Any
    warning: str | None = None


async def _read(target: Target, request: UpstreamRequest, call: CallContext, deadline: float) -> Any:
    """Sends a read of the target's batch with its (one) key; the provider's JSON answer, or its
    error raised."""
    adapter = target.provider.adapter
    request = outgoing(target, request, call.record)
    request.operation = "read"
    provider = target.provider
    answer = await provider.send(await provider.prepare(target.key, request), deadline, call.record)
    if answer.status >= 300:
        raise keep_retry_after(adapter.parse_error(answer), answer)
    return decode_json(answer, adapter.name)


async def state_after_cancel(accepted: Accepted, batch_id: str, call: CallContext, deadline: float) -> StateAfterCancel:
    """The batch from the cancel answer itself, or from a follow-up read. A failed follow-up read
    still reports the cancel (status `cancelling`) with a warning: the cancel did happen."""
    target = accepted.target
    adapter = target.provider.adapter
    cancel_data = decode_json(accepted.response, adapter.name)
    follow_up = adapter.status_request(target.key, target.ref)
    if follow_up is None:
        state = StateAfterCancel(parse_batch(adapter, batch_id, cancel_data), cancel_data)
    else:
        try:
            data = await _read(target, follow_up, call, deadline)
            state = StateAfterCancel(parse_batch(adapter, batch_id, data), {"cancel": cancel_data, "retrieve": data})
        except GatewayError as err:
            log.warning("%s: cancel accepted but the follow-up read failed: %s", adapter.name, err.message)
            warning = f"cancel accepted; reading the batch state afterwards failed: {err.message}"
            state = StateAfterCancel(BatchState(id=batch_id, status="cancelling"), {"cancel": cancel_data}, warning)
    state.batch.id = batch_id  # answer with the id in the form the caller sent it
    state.batch.status = after_accepted_cancel(state.batch.status)
    return state


async def read_back(target: Target, batch_id: str, call: CallContext, deadline: float) -> tuple[BatchState, Any]:
    """The batch now, read with the provider's retrieve call and the target's (one) key, and the
    provider's answer. Raises the provider's error."""
    adapter = target.provider.adapter
    request = adapter.retrieve_request(target.key, target.ref)
    if request is None:
        raise UnsupportedOperation(f"reading a batch back is not supported by provider: {adapter.name}")
    data = await _read(target, request, call, deadline)
    state = parse_batch(adapter, batch_id, data)
    state.id = batch_id
    state.status = after_accepted_cancel(state.status)
    return state, data
