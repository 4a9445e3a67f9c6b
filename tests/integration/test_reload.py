"""Config reloads under a running service, over real gRPC against the sandbox over real HTTP: a call
keeps the config it started with to its end, and every call that starts after the reload gets the
new one (README, Changing configuration at runtime)."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from tests.support import OPENAI_KEYS, cancel, eventually, running_service

FIRST, SECOND = OPENAI_KEYS  # the old config's two keys (the sandbox accepts both)
ROTATED = "sk-test-openai-rotated-3333"  # the new config's one key
HOLD_MS = 3000  # how long the simulator holds the first attempt: the rotation happens meanwhile


def config(sandbox_url: str, *keys: str, timeout_s: int = 30) -> dict:
    """OpenAI with `keys` (tried in order) and one retry 1 ms later, against the sandbox."""
    network = {"base_url": f"{sandbox_url}/openai", "max_retries": 1, "retry_backoff_initial_ms": 1}
    network.update(retry_backoff_max_ms=1, default_request_timeout_in_seconds=timeout_s)
    batch_keys = [{"name": f"k{i}", "value": key, "use_for_batch_api": True} for i, key in enumerate(keys)]
    return {"providers": {"openai": {"keys": batch_keys, "network_config": network}}}


def authorizations(sim, batch_id: str) -> list[str]:
    return [c["headers"]["Authorization"].removeprefix("Bearer ") for c in sim.calls("openai") if batch_id in c["path"]]


@pytest.fixture
def rotated_key_accepted(sim):
    saved = sim.keys["openai"]
    sim.keys["openai"] = saved | {ROTATED}
    yield
    sim.keys["openai"] = saved


# What answers the held first attempt, and then the keys the call sends, first attempt first: a 503
# is retried with the same key; a 401 moves on to the next key of the call's (old) config.
HELD = {"retry": (503, [FIRST, FIRST]), "key failover": (401, [FIRST, SECOND])}


@pytest.mark.parametrize("held_status, sent", list(HELD.values()), ids=list(HELD))
async def test_a_call_in_flight_keeps_the_old_keys_across_a_rotation_and_the_next_call_gets_the_new(
    sandbox, sim, rotated_key_accepted, held_status, sent
):
    """The first attempt of a cancel is held at the provider, then refused; while it is held the
    keys are rotated (and a network setting changed, so the new config gets a pool of its own) and
    another cancel runs. What the held call sends after the rotation (its retry or its next key) is
    still the old config's, over the old pool, kept open for it; the other call sends the new key."""
    held = sim.seed("openai", f"batch_{uuid.uuid4().hex[:16]}").id
    after = sim.seed("openai", f"batch_{uuid.uuid4().hex[:16]}").id
    sim.add_fault("openai", {"status": held_status, "latency_ms": HOLD_MS})
    async with running_service(config(sandbox.url, FIRST, SECOND)) as (app, stub):
        in_flight = asyncio.create_task(cancel(stub, held))
        await eventually(lambda: sim.in_flight == 1)  # its first attempt is at the provider
        assert app.live.apply(json.dumps(config(sandbox.url, ROTATED, timeout_s=29)).encode(), "test")
        assert (await cancel(stub, after)).status == "cancelling"
        # Both happened while the first call was still in flight (else this test proved nothing).
        assert sim.in_flight == 1 and not in_flight.done(), f"the {HOLD_MS} ms hold ended before the rotation"
        assert (await in_flight).status == "cancelling"
    assert authorizations(sim, held) == sent
    assert authorizations(sim, after) == [ROTATED]
