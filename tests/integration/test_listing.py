"""Finding batches on every provider through the real adapters and the real HTTP executor against the
simulators over real HTTP: pages followed to the end, the providers' own filters on the server and
the gateway's exact one, early stop on newest-first lists, per-key accounts, errors and outages,
and that a listing sends nothing but GETs."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import pytest_asyncio

from sandbox import SIMULATOR_KEY, build_app, start
from sandbox.core import ProviderSim
from sandbox.server import SIMULATORS
from service.domain.errors import ProviderError
from service.domain.model import ListQuery
from service.infra.providers.catalog import ADAPTERS, parse_config
from service.infra.providers.http import HttpExecutor
from service.usecases.context import CallContext
from service.usecases.listing import list_batches

SIMS: dict[str, type[ProviderSim]] = {sim.name: sim for sim in SIMULATORS}
SECOND_KEYS = {
    "bedrock": "AKIASANDBOXBEDROCK02:second/Secret0Key000000000000000000000000",
    "vertex": "second@batchgate-sandbox.iam.gserviceaccount.com",
}
KEYS = {name: [sim.default_key, SECOND_KEYS.get(name, f"second-{sim.default_key}")] for name, sim in SIMS.items()}
RUNNING = frozenset({"validating", "in_progress", "finalizing"})
NOW = int(time.time())


@pytest_asyncio.fixture(scope="module")
async def world():
    """A sandbox of its own whose providers each accept two keys (two accounts)."""
    app = build_app(keys=KEYS)
    runner, port = await start(app)
    yield app[SIMULATOR_KEY], f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
def sim(world):
    world[0].reset()
    return world[0]


class Lister:
    """A provider's adapter and executor configured with both keys (key 0 and key 1)."""

    def __init__(self, url: str, provider: str, keys: list[str] | None = None, page_size: int = 2) -> None:
        sim = SIMS[provider]
        blocks = [sim.gateway_config(f"{url}{sim.prefix}", key) for key in keys or KEYS[provider]]
        block = blocks[0]
        block["keys"] = [{**b["keys"][0], "name": f"key{i}"} for i, b in enumerate(blocks)]
        block.setdefault("network_config", {}).update({"max_retries": 2, "retry_backoff_initial_ms": 1})
        config = parse_config({"providers": {provider: block}}, env={}).providers[provider]
        self.adapter = ADAPTERS[provider](config)
        self.adapter.list_page_size = page_size  # several pages from a few batches
        self.executor = HttpExecutor(config)
        self.keys = config.batch_keys

    async def ids(self, query: ListQuery, key: int = 0) -> list[str]:
        """The seeded ids of the batches found (a listed id may be an ARN or a resource name)."""
        call = CallContext(deadline=asyncio.get_running_loop().time() + 30)
        found = list_batches(self.adapter, self.executor, self.keys[key], query, call)
        return [batch.state.id.rsplit("/", 1)[-1] async for batch in found]

    async def close(self) -> None:
        await self.executor.close()


@pytest_asyncio.fixture(params=sorted(ADAPTERS))
async def lister(request, world, sim):
    lister = Lister(world[1], request.param)
    yield lister
    await lister.close()


def seed(sim, provider: str) -> dict[str, str]:
    """Batches of two accounts: running, finished, old, with and without metadata."""
    new_id = SIMS[provider].new_batch_id
    ids = {name: new_id() for name in ("r1", "r2", "r3", "done", "gone", "mine", "theirs")}
    sim.seed(provider, ids["r1"], created_at=NOW - 100, metadata={"team": "search", "job": "nightly"})
    sim.seed(provider, ids["r2"], created_at=NOW - 200, status="validating", metadata={"team": "ads"})
    sim.seed(provider, ids["r3"], created_at=NOW - 5000)
    sim.seed(provider, ids["done"], created_at=NOW - 50, status="completed", metadata={"team": "search"})
    sim.seed(provider, ids["gone"], created_at=NOW - 60, status="cancelled")
    sim.seed(provider, ids["mine"], created_at=NOW - 300, owner=KEYS[provider][0])
    sim.seed(provider, ids["theirs"], created_at=NOW - 400, owner=KEYS[provider][1])
    return ids


def names(ids: dict[str, str], found: list[str]) -> list[str]:
    by_id = {batch_id: name for name, batch_id in ids.items()}
    return sorted(by_id[batch_id] for batch_id in found)


def list_calls(sim, provider: str) -> list[dict]:
    return [call for call in sim.calls(provider) if not call["path"].endswith("/token")]


async def test_every_provider_lists_its_running_batches_page_by_page_with_gets_only(lister, sim):
    provider = lister.adapter.name
    ids = seed(sim, provider)
    found = await lister.ids(ListQuery(RUNNING))
    assert len(found) == len(set(found))
    assert names(ids, found) == ["mine", "r1", "r2", "r3"]
    assert names(ids, await lister.ids(ListQuery(RUNNING), key=1)) == ["r1", "r2", "r3", "theirs"]
    calls = list_calls(sim, provider)
    assert calls and all(call["method"] == "GET" for call in calls)
    if provider != "together":  # one plain array, no pages
        assert len(calls) > 2


async def test_every_provider_applies_the_time_bounds_exactly(lister, sim):
    ids = seed(sim, lister.adapter.name)
    assert names(ids, await lister.ids(ListQuery(RUNNING, created_after=NOW - 300))) == ["mine", "r1", "r2"]
    assert names(ids, await lister.ids(ListQuery(RUNNING, created_before=NOW - 200))) == ["mine", "r3"]
    finished = frozenset({"completed", "cancelled", "ended"})  # Anthropic says `ended`
    assert names(ids, await lister.ids(ListQuery(finished, created_after=NOW - 60))) == ["done", "gone"]


async def test_metadata_matches_only_where_the_provider_keeps_it(lister, sim):
    ids = seed(sim, lister.adapter.name)
    found = await lister.ids(ListQuery(RUNNING | {"completed"}, metadata={"team": "search"}))
    if lister.adapter.keeps_metadata:
        assert names(ids, found) == ["done", "r1"]
        assert names(ids, await lister.ids(ListQuery(RUNNING, metadata={"team": "search", "job": "x"}))) == []
    else:
        assert found == []


async def test_bedrock_lists_once_per_status_with_submit_times_on_the_server(world, sim):
    lister = Lister(world[1], "bedrock")
    try:
        ids = seed(sim, "bedrock")
        found = await lister.ids(ListQuery(RUNNING, created_after=NOW - 1000))
        assert names(ids, found) == ["mine", "r1", "r2"]
        queries = [call["query"] for call in list_calls(sim, "bedrock")]
        assert [q["statusEquals"] for q in queries if "nextToken" not in q] == [
            "InProgress", "Scheduled", "Submitted", "Validating"
        ]  # fmt: skip
        assert all(q["submitTimeAfter"] and q["sortOrder"] == "Descending" for q in queries)
    finally:
        await lister.close()


async def test_vertex_sends_the_query_as_its_filter(world, sim):
    lister = Lister(world[1], "vertex")
    try:
        ids = seed(sim, "vertex")
        query = ListQuery(RUNNING, created_after=NOW - 1000, metadata={"team": "search"})
        assert names(ids, await lister.ids(query)) == ["r1"]
        (call,) = list_calls(sim, "vertex")  # the server did the work: one page
        assert call["query"]["filter"] == lister.adapter.list_filter(query)
    finally:
        await lister.close()


async def test_mistral_sends_status_and_created_after(world, sim):
    lister = Lister(world[1], "mistral", page_size=100)
    try:
        ids = seed(sim, "mistral")
        assert names(ids, await lister.ids(ListQuery(RUNNING, created_after=NOW - 1000))) == ["mine", "r1", "r2"]
        (call,) = list_calls(sim, "mistral")
        assert call["query"]["order_by"] == "-created" and "created_after" in call["query"]
    finally:
        await lister.close()


async def test_a_newest_first_listing_stops_once_past_created_after(world, sim):
    lister = Lister(world[1], "openai")
    try:
        ids = seed(sim, "openai")
        for i in range(10):
            sim.seed("openai", f"old{i}", created_at=NOW - 10_000 - i)
        found = await lister.ids(ListQuery(RUNNING, created_after=NOW - 250))
        assert names(ids, found) == ["r1", "r2"]
        # Newest first, two a page: [done, gone] [r1, r2] [mine, r3] and stop (r3 is older).
        assert len(list_calls(sim, "openai")) == 3
    finally:
        await lister.close()


async def test_a_refused_key_raises_the_providers_error(world, sim):
    lister = Lister(world[1], "openai", keys=["sk-not-a-sandbox-key"])
    try:
        with pytest.raises(ProviderError) as raised:
            await lister.ids(ListQuery(RUNNING))
        assert raised.value.status_code == 401 and raised.value.provider == "openai"
    finally:
        await lister.close()


async def test_an_outage_during_the_listing_is_ridden_out(world, sim):
    lister = Lister(world[1], "anthropic")
    try:
        ids = seed(sim, "anthropic")
        sim.add_fault("anthropic", {"status": 529})
        assert names(ids, await lister.ids(ListQuery(RUNNING))) == ["mine", "r1", "r2", "r3"]
        assert len(list_calls(sim, "anthropic")) == 4  # the 529, then three pages
    finally:
        await lister.close()


async def test_ten_thousand_batches_are_each_found_once(world, sim):
    from sandbox.seeding import generate

    lister = Lister(world[1], "openai", page_size=100)
    try:
        store = sim.store("openai")
        statuses = {"in_progress": 9, "completed": 1}
        seeded = generate(store.new_id, 10_000, statuses=statuses, random_seed=5)
        sim.seed_many("openai", seeded)
        found = await lister.ids(ListQuery(RUNNING))
        expected = {batch["id"] for batch in seeded if batch["status"] == "in_progress"}
        assert 8500 < len(expected) < 9500
        assert len(found) == len(set(found)) and set(found) == expected
        assert len(list_calls(sim, "openai")) == 100
    finally:
        await lister.close()


async def test_a_list_answer_may_be_larger_than_a_cancel_answer(world, sim):
    """Together answers every batch in one array: 3,000 of them are well over the 1 MiB a cancel
    answer may have."""
    lister = Lister(world[1], "together")
    try:
        sim.seed_many("together", [{"id": f"job-{i:05}", "created_at": NOW - i} for i in range(3000)])
        assert len(await lister.ids(ListQuery(RUNNING))) == 3000
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": f"Bearer {KEYS['together'][0]}"}
            async with session.get(f"{world[1]}/together/v1/batches", headers=headers) as response:
                assert len(await response.read()) > 1 << 20
    finally:
        await lister.close()
