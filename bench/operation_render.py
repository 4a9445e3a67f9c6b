"""What reading and rendering a large operation costs the event loop: `python -m bench.operation_render`
(`make bench-render`; `make bench` runs it too).

A done operation of `--batches` (100,000, the cap) batches is stored in a SQLite operation store;
then, for each way of doing the work, a probe task on the same event loop asks for a turn every
millisecond while the work runs, and the longest it waited beyond that is the loop's worst stall:
every other call of the worker waits that long. The ways:

- read back: decoding the stored batches all at once on the loop (the Redis engine before), all at
  once on the store's thread (the SQLite engine before), or a part at a time on the loop
  (`decode_items`, what both engines do now);
- GetOperation's answer and the webhook's JSON: rendered at once on the loop (as before), at once
  in a worker thread (`asyncio.to_thread`: Python code holding the GIL, so the loop still waits for
  it), or a part at a time with a turn of the loop in between (`render_operation`,
  `operation_json`: what the service does).

What is left is the garbage collector: while 100,000 batches' objects are made, its full collections
stop every thread for 0.1-0.3 s each, whichever way the work is done. Prints a markdown table and
writes bench/results/operation_render.md. No network; about 20 seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from google.protobuf import json_format

from bench.common import RESULTS, log
from service.domain.model import BatchState, RequestCounts
from service.domain.operations import (
    CANCELLED,
    DONE,
    FAILED,
    BatchItem,
    CancelMatchingCommand,
    Counts,
    Failure,
    Operation,
    Selector,
)
from service.edge.operation_proto import JSON_OPTIONS, operation_json, operation_to_proto, render_operation
from service.infra.operation_store import SqliteOperationStore

PROBE_EVERY_S = 0.001


def batches(count: int) -> list[BatchItem]:
    """A realistic mix: nine in ten cancelled with their state, one in ten failed with an error."""
    items = []
    for i in range(count):
        batch_id = f"batch_{i:024d}"
        if i % 10 == 0:
            error = Failure("No batch found with id.", 404, "invalid_request_error", None, None, "openai", False)
            items.append(BatchItem("openai", batch_id, key_id="main", outcome=FAILED, error=error))
        else:
            counts = RequestCounts(total=10, completed=2)
            state = BatchState(batch_id, "cancelling", counts, cancelling_at=1_800_000_000)
            items.append(BatchItem("openai", batch_id, key_id="main", outcome=CANCELLED, state=state, latency_ms=40))
    return items


async def _probe(stop: asyncio.Event) -> float:
    loop = asyncio.get_running_loop()
    worst, last = 0.0, loop.time()
    while not stop.is_set():
        await asyncio.sleep(PROBE_EVERY_S)
        now = loop.time()
        worst, last = max(worst, now - last - PROBE_EVERY_S), now
    return worst


async def measure(work: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """(seconds the work took, the loop's worst stall meanwhile in seconds)."""
    stop = asyncio.Event()
    probe = asyncio.create_task(_probe(stop))
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    await work()
    took = time.perf_counter() - started
    stop.set()
    return took, await probe


async def run(count: int) -> list[tuple[str, str, float, float]]:
    items = batches(count)
    op = Operation("operations/bench", "admin", CancelMatchingCommand(Selector(providers=("openai",))), 1.8e9, 1.8e9)
    op.state, op.done, op.counts = DONE, True, Counts.of(items)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        store = SqliteOperationStore(Path(directory) / "operations.sqlite3")
        try:
            await store.create(op, [], "bench", 1e12)
            await store.save("bench", 1.8e9, op, items)
            docs = [orjson.dumps(item.to_dict()) for item in items]

            def decode() -> list[BatchItem]:
                return [BatchItem.from_dict(orjson.loads(doc)) for doc in docs]

            async def decode_on_the_loop() -> None:
                decode()

            async def decode_in_thread() -> None:
                await asyncio.to_thread(decode)

            async def items_as_the_store_reads_them() -> None:
                await store.items(op.name)

            async def proto_at_once() -> None:
                operation_to_proto(op, items).SerializeToString()

            async def proto_in_thread() -> None:
                await asyncio.to_thread(lambda: operation_to_proto(op, items).SerializeToString())

            async def proto_in_parts() -> None:
                (await render_operation(op, items)).SerializeToString()

            def json_at_once_sync() -> bytes:
                return json_format.MessageToJson(operation_to_proto(op, items), indent=None, **JSON_OPTIONS).encode()

            async def json_at_once() -> None:
                json_at_once_sync()

            async def json_in_thread() -> None:
                await asyncio.to_thread(json_at_once_sync)

            async def json_in_parts() -> None:
                await operation_json(op, items)

            for what, how, work in [
                ("read back", "at once on the loop (Redis before)", decode_on_the_loop),
                ("read back", "at once on the store's thread (SQLite before)", decode_in_thread),
                ("read back", "a part at a time on the loop (now)", items_as_the_store_reads_them),
                ("GetOperation answer", "at once on the loop (before)", proto_at_once),
                ("GetOperation answer", "at once in a worker thread", proto_in_thread),
                ("GetOperation answer", "a part at a time on the loop (now)", proto_in_parts),
                ("webhook JSON", "at once on the loop (before)", json_at_once),
                ("webhook JSON", "at once in a worker thread", json_in_thread),
                ("webhook JSON", "a part at a time on the loop (now)", json_in_parts),
            ]:
                took, stall = await measure(work)
                log(f"{what}, {how}: {took:.2f} s, worst stall {stall * 1000:.0f} ms")
                rows.append((what, how, took, stall))
        finally:
            await store.close()
    return rows


def report(count: int, rows: list[tuple[str, str, float, float]]) -> str:
    lines = [
        f"Reading and rendering a done operation of {count:,} batches (`python -m bench.operation_render`):",
        "",
        "| work | how | took | the event loop's worst stall |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {what} | {how} | {took:.2f} s | {stall * 1000:,.0f} ms |" for what, how, took, stall in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100_000, help="batches of the operation (at most 100,000)")
    args = parser.parse_args()
    count = max(1, min(args.batches, 100_000))
    text = report(count, asyncio.run(run(count)))
    print(text)
    (RESULTS / "operation_render.md").write_text(text)


if __name__ == "__main__":
    main()
