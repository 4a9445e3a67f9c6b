"""Test seams for code that uses the client: its retries' sleeping, clock and jitter, replaced so a
test steps time instead of waiting for it.

    from batchgate_client.testing import retry_hooks

    pauses = []
    client = retry_hooks(BatchgateClient(target), sleep=pauses.append)
    # ... a call that the service refuses with a Retry-After: `pauses` holds the waits, none slept
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, TypeVar

from batchgate_client.client import AsyncBatchgateClient, BatchgateClient

Client = TypeVar("Client", BatchgateClient, AsyncBatchgateClient)


def retry_hooks(
    client: Client,
    *,
    sleep: Callable[[float], Any] | None = None,
    clock: Callable[[], float] | None = None,
    rand: random.Random | None = None,
) -> Client:
    """`client`, its retries from now on pausing with `sleep` (a coroutine function for the asyncio
    client; default `time.sleep` / `asyncio.sleep`), measuring their deadline with `clock`
    (monotonic seconds) and drawing jitter from `rand`. Hooks left out stay as they were."""
    return client._use_hooks(sleep=sleep, clock=clock, rand=rand)
