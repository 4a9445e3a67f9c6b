"""Key failover: one cancel attempt over one target, trying its keys in order until one is accepted.

Upstream answers that settle the matter for this batch (`FINAL_STATUSES`) end the attempt: another
key would not change them. Anything else (401/403 for this key, 404 because the batch lives in
another key's account, 429/5xx after the executor's retries, a key whose token could not be minted)
moves on to the next key; when none is left the last error is raised.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.domain.errors import DeadlineExceeded, GatewayError, InvalidRequest
from service.infra.observability import KEY_FAILOVERS
from service.infra.providers.base import UpstreamResponse
from service.infra.providers.http import keep_retry_after
from service.usecases.context import CallContext
from service.usecases.target import Target, outgoing

FINAL_STATUSES = frozenset({400, 409, 422})


@dataclass(frozen=True, slots=True)
class Accepted:
    """A cancel the provider accepted: the target narrowed to the key that did it, and the answer."""

    target: Target
    response: UpstreamResponse


async def cancel_with_failover(target: Target, call: CallContext, deadline: float) -> Accepted:
    """Sends the cancel with each of the target's keys in turn, every exchange ending by `deadline`
    (loop time); returns the first accepted (2xx) answer or raises the last error."""
    provider, record = target.provider, call.record
    adapter = provider.adapter
    error: GatewayError | None = None
    for index, key in enumerate(target.keys):
        if index and record is not None:
            record.key_failovers += 1
            KEY_FAILOVERS.labels(adapter.name).inc()
        try:
            request = outgoing(target, adapter.cancel_request(key, target.ref), record)
            request = await provider.prepare(key, request)
        except (DeadlineExceeded, InvalidRequest):
            raise
        except GatewayError as err:  # this key's credentials could not be used (token mint failed)
            error = err
            continue
        response = await provider.send(request, deadline, record)
        if response.status < 300:
            return Accepted(target.with_key(key), response)
        error = keep_retry_after(adapter.parse_error(response), response)
        if error.status_code in FINAL_STATUSES and error.type != "authentication_error":
            break  # about the batch, not the key (Gemini says a bad key with a 400)
    if error is None:  # a target always has at least one key
        raise GatewayError(f"no key to cancel with on {adapter.name}", provider=adapter.name)
    raise error
