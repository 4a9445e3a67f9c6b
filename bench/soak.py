"""Soak under mixed upstream faults: `python -m bench.soak --seconds 60 --concurrency 16`.

Starts the gateway in sandbox mode (`gateway.stack.Stack`: provider simulators + gRPC service + Envoy,
loopback only) and drives REST cancels through Envoy at steady concurrency from an asyncio aiohttp
client, while a background task injects faults into the simulators through their admin API at a
fixed rate. Bounded by time (--seconds) AND by a request count (--max-requests).

Each fault type goes to its own provider, so its effect can be read off that provider's calls (the
simulators' fault queues are per provider; a fault is consumed by the next call to it):

    openai     5xx         500/502/503/504/529 in turn       retried
    azure      429         429 + Retry-After 0.2 s           retried after the Retry-After
    groq       reset       connection dropped                retried
    together   malformed   200 with truncated JSON           not retried: 502
    xai        slow        +400 ms latency                   answered, slower
    mistral    stall       +5 s latency (deadline is 2 s)    504 at the deadline, not retried
    anthropic  none        control                           no retries at all

The sandbox-mode config is the one `make run` uses, with the network settings tightened for a soak
(deadline 2 s, backoff 50-500 ms, max_retries 2): the stall must hit a deadline well inside the
client's own per-request timeout (10 s), which counts a request as lost when it expires.

Recorded: requests sent / answered / lost (timeouts and connection errors: must be 0), the status
histogram (with the error code of every non-200), service process crashes (polled: must be 0),
service RSS (all worker processes) at start (after a warm-up), middle and end plus samples, and per
fault type the faults injected and consumed, the upstream attempts the simulators recorded per
client request (every request uses a fresh batch id, so attempts are grouped exactly) and the
retries that makes.
Prints a markdown report (bench/soak_report.py) and writes bench/results/soak-faults.md. Exit status
0 when lost == 0, crashes == 0 and RSS growth is under 10 %; 1 otherwise. The fault plan and the
network settings are in bench/soak_plan.py.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import aiohttp
import orjson

import gateway.stack as stack_module
from bench.procs import rss_kib, service_pids
from bench.soak_plan import CLIENT_TIMEOUT_S, NETWORK, PLANS, PROVIDERS, FaultPlan, Tally, batch_id
from bench.soak_report import report
from bench.system import sandbox_stack
from gateway.stack import Stack

RESULTS = Path(__file__).resolve().parent / "results" / "soak-faults.md"


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tally = Tally()
        self.faults_injected: Counter = Counter()
        self.calls: dict[str, list] = defaultdict(list)  # batch id -> [call]
        self.calls_seen_at = 0.0
        self.calls_gap = False
        self.rss: list[tuple[float, int]] = []
        self.crashes: list[str] = []
        self.stop_at = 0.0

    # --- the system -------------------------------------------------------------------------------

    def start_stack(self, log_dir: Path) -> Stack:
        original = stack_module.gateway_config

        def tuned(url: str) -> dict:
            config = original(url)
            for provider in config["providers"].values():
                provider.setdefault("network_config", {}).update(NETWORK)
            return config

        stack_module.gateway_config = tuned  # only for this process's Stack; nothing on disk changes
        try:
            return sandbox_stack(log_dir)
        finally:
            stack_module.gateway_config = original

    # --- load -------------------------------------------------------------------------------------

    async def worker(self, session: aiohttp.ClientSession, url: str, turn: itertools.count) -> None:
        tally = self.tally
        while time.monotonic() < self.stop_at and tally.sent < self.args.max_requests:
            provider = PROVIDERS[next(turn) % len(PROVIDERS)]
            bid = batch_id(provider)
            tally.ids[bid] = provider
            tally.sent += 1
            started = time.monotonic()
            try:
                async with session.post(f"{url}/v1/batches/{bid}/cancel?provider={provider}") as resp:
                    body = await resp.read()
                    status = resp.status
            except TimeoutError:
                tally.timeouts += 1
                continue
            except aiohttp.ClientError as exc:
                tally.conn_errors[type(exc).__name__] += 1
                continue
            tally.answered += 1
            tally.latencies.append(time.monotonic() - started)
            code = ""
            if status != 200:
                try:
                    error = orjson.loads(body).get("error") or {}
                    code = str(error.get("code") or error.get("type") or "?")
                except (orjson.JSONDecodeError, AttributeError):
                    code = "not-json"
            tally.statuses[(status, code)] += 1
            tally.per_provider[provider][(status, code)] += 1

    # --- background tasks -------------------------------------------------------------------------

    async def inject(self, session: aiohttp.ClientSession, sandbox: str, plan: FaultPlan) -> None:
        faults = itertools.cycle(plan.faults)
        next_at = time.monotonic()
        while time.monotonic() < self.stop_at:
            async with session.post(f"{sandbox}/_sim/{plan.provider}/faults", json=next(faults)) as resp:
                assert resp.status == 200, await resp.text()
            self.faults_injected[plan.provider] += 1
            next_at += plan.every_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def pending_faults(self, session: aiohttp.ClientSession, sandbox: str, provider: str) -> int:
        async with session.post(f"{sandbox}/_sim/{provider}/faults", json=[]) as resp:
            return (await resp.json())["pending"]

    async def collect_calls(self, session: aiohttp.ClientSession, sandbox: str) -> None:
        """Reads the simulators' recorded calls (the last 10,000) and keeps the new ones."""
        async with session.get(f"{sandbox}/_sim/calls") as resp:
            calls = orjson.loads(await resp.read())
        if calls and self.calls_seen_at and calls[0]["at"] > self.calls_seen_at and len(calls) >= 10_000:
            self.calls_gap = True  # calls were evicted before we read them
        for call in calls:
            if call["at"] > self.calls_seen_at:
                parts = call["path"].split("/")
                key = next((p.split(":")[0] for p in parts if p.startswith("soak_") or _is_uuid(p.split(":")[0])), None)
                if key is not None:
                    self.calls[key].append((call["provider"], call["method"], call["at"]))
        if calls:
            self.calls_seen_at = max(self.calls_seen_at, calls[-1]["at"])

    async def watch(self, session: aiohttp.ClientSession, stack: Stack, service_pids: list[int]) -> None:
        started = time.monotonic()
        next_rss = started
        while time.monotonic() < self.stop_at:
            for proc in stack.procs:
                if proc.poll() is not None and not any(proc.pid == pid for pid, _ in self.crashes):
                    self.crashes.append((proc.pid, f"{' '.join(map(str, proc.args[1:3]))} exited {proc.returncode}"))
            if time.monotonic() >= next_rss:
                self.rss.append((time.monotonic() - started, rss_kib(service_pids)))
                next_rss += self.args.rss_every
            await self.collect_calls(session, stack.sandbox_url)
            await asyncio.sleep(1.0)

    # --- the run ----------------------------------------------------------------------------------

    async def run(self, stack: Stack, service_pids: list[int]) -> float:
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
        connector = aiohttp.TCPConnector(limit=self.args.concurrency, force_close=False)
        async with (
            aiohttp.ClientSession(timeout=timeout, connector=connector) as load,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as admin,
        ):
            # Warm-up without faults, then the start RSS.
            self.stop_at = time.monotonic() + min(3.0, self.args.seconds / 10)
            turn = itertools.count()
            await asyncio.gather(*(self.worker(load, stack.http_url, turn) for _ in range(self.args.concurrency)))
            async with admin.post(f"{stack.sandbox_url}/_sim/reset") as resp:
                assert resp.status == 204
            self.tally = Tally()
            self.warm_rss = rss_kib(service_pids)

            started = time.monotonic()
            self.stop_at = started + self.args.seconds
            background = [asyncio.create_task(self.inject(admin, stack.sandbox_url, plan)) for plan in PLANS]
            background.append(asyncio.create_task(self.watch(admin, stack, service_pids)))
            await asyncio.gather(*(self.worker(load, stack.http_url, turn) for _ in range(self.args.concurrency)))
            elapsed = time.monotonic() - started
            await asyncio.gather(*background)
            await asyncio.sleep(0.5)  # let the last upstream calls land
            await self.collect_calls(admin, stack.sandbox_url)
            self.pending = {p.provider: await self.pending_faults(admin, stack.sandbox_url, p.provider) for p in PLANS}
            self.rss.append((elapsed, rss_kib(service_pids)))
            return elapsed


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) == 36


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-requests", type=int, default=500_000)
    parser.add_argument("--rss-every", type=float, default=5.0, help="seconds between service RSS samples")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    soak = Soak(args)
    with tempfile.TemporaryDirectory(prefix="batchgate-soak-") as tmp:
        stack = soak.start_stack(Path(tmp))
        try:
            services = service_pids(stack)
            elapsed = asyncio.run(soak.run(stack, services))
        finally:
            stack.stop()
    text, ok = report(soak, elapsed)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
