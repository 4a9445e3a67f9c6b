"""The cost of the bounds of issue 21 on the single cancel: the same gateway with and without them.

    with     the gateway as it runs: Envoy reads each request whole before it goes upstream (buffer
             filter), 100 streams per connection, the overload manager, sized circuit breakers; the
             service takes each call's lease on its caller's share (client.limits) at its door
    twin     a second gateway with them (same config, same simulator): `with` against `twin` is
             the noise floor, what two gateway processes with the same code differ by
    without  a third gateway started unbounded (gateway.stack.Stack `unbounded`: the edge of before
             issue 21, no per-caller leases)

Sequential runs cannot resolve a few microseconds on a shared machine whose load drifts, so the
verdict comes from interleaved rounds: each round measures the three in an order that rotates, at
c=1 (p50) and c=64 (req/s), for REST via Envoy and gRPC direct; the median over rounds of each
round's difference is reported.
"""

from __future__ import annotations

import copy
import statistics

from bench.common import percentile
from bench.load import LoadClient, Target
from bench.paths import targets
from bench.system import System

PATHS = ("rest_envoy", "grpc_direct")
HIGH_C = 64


def on_stack(target: Target, stack: object, suffix: str, system: System) -> Target:
    """The same path on another gateway."""
    other = copy.copy(target)
    other.name = f"{target.name}{suffix}"
    main = system.stack
    other.url = target.url.replace(f":{main.http_port}/", f":{stack.http_port}/").replace(
        f":{main.grpc_port}/", f":{stack.grpc_port}/"
    )
    return other


def bounds_cost(client: LoadClient, system: System, rounds: int, n1: int, n64: int) -> list[str]:
    """Lines on what the bounds cost the single cancel (see the module docstring)."""
    if system.unbounded_stack is None:
        return ["n/a   bounds (issue 21): not measured (no unbounded gateway)"]
    by_name = {t.name: t for t in targets(system)}
    lines = []
    for path in PATHS:
        variants = {
            "with": by_name[path],
            "twin": on_stack(by_name[path], system.twin_stack, "_twin", system),
            "without": on_stack(by_name[path], system.unbounded_stack, "_unbounded", system),
        }
        p50: dict[str, list[float]] = {name: [] for name in variants}
        rps: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        for i in range(rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                target = variants[name]
                client.run(target, 1, max(20, n1 // 10))  # warm the connections of this gateway
                p50[name].append(percentile(client.run(target, 1, n1).latencies_ms, 50))
                result = client.run(target, HIGH_C, n64)
                rps[name].append(n64 / result.elapsed_s)

        c1 = {name: _median_difference(p50["with"], p50[name]) for name in names}
        c64 = {name: _median_difference(rps["with"], rps[name], relative=True) for name in names}
        lines.append(
            f"      bounds (issue 21), {by_name[path].label}: c=1 p50 {c1['without']:+.3f} ms, c={HIGH_C} "
            f"{c64['without']:+.1f} % req/s with them over without (median of {rounds} interleaved rounds; "
            f"noise floor, another gateway with them: {c1['twin']:+.3f} ms, {c64['twin']:+.1f} %)"
        )
        for name in names:
            lines.append(
                f"        {name:<10} p50 per round (ms): {', '.join(f'{v:.2f}' for v in p50[name])}; "
                f"c={HIGH_C} req/s: {', '.join(f'{v:.0f}' for v in rps[name])}"
            )
    door, redaction = _in_process(system)
    lines.append(
        f"      in-process: the door (header bytes, the caller, its lease) {door:.1f} us per call; masking "
        f"the config's secrets in one answer {redaction:.1f} us (p50 of 20,000)"
    )
    return lines


def _in_process(system: System, n: int = 20_000) -> tuple[float, float]:
    """p50 microseconds of what every call now does in the service: passing the door (an anonymous
    REST call through Envoy: its metadata as the service sees it), and masking one answer."""
    import asyncio
    import json
    import time

    from service.edge.server import admission
    from service.edge.wire import unprintable_header
    from service.infra.providers.catalog import parse_config
    from service.infra.redaction import request_credentials
    from service.runtime.live import LiveConfig

    config = parse_config(json.loads((system.workdir / "config.json").read_text()), env={})
    live = LiveConfig(config)
    admit = admission(live)
    metadata = (
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-request-id", "2f1c0e8a-5d7b-4f7e-9a43-6f0d2b9c1e77"),
        ("x-envoy-original-path", "/v1/batches/bench1/cancel?provider=openai"),
        ("x-envoy-expected-rq-timeout-ms", "60000"),
        ("user-agent", "h2load nghttp2/1.52.0"),
    )
    body = json.dumps({"id": "bench1", "object": "batch", "status": "cancelling", "metadata": {}}).encode()
    answer_headers = {"content-type": "application/json", "x-request-id": "req_123", "content-length": "80"}
    request_headers = {"Authorization": "Bearer sk-sandbox-openai", "X-Client-Request-Id": "abc"}
    redactor = live.current.canceller.redactor

    def door() -> None:
        unprintable_header(metadata)
        admit("/batchgate.v1.BatchService/Cancel", dict(metadata), "unix:").release()

    def mask() -> None:
        masking = redactor.with_secrets(request_credentials(request_headers))
        masking.data(body)
        masking.headers(answer_headers)

    timings = []
    for step in (door, mask):
        samples = []
        for _ in range(n):
            started = time.perf_counter_ns()
            step()
            samples.append(time.perf_counter_ns() - started)
        timings.append(sorted(samples)[n // 2] / 1000)
    asyncio.run(live.limiter.close())
    return timings[0], timings[1]


def _median_difference(values: list[float], reference: list[float], relative: bool = False) -> float:
    """The median over rounds of value - reference (in % of the reference when `relative`)."""
    pairs = zip(values, reference, strict=True)
    return statistics.median((a - b) / b * 100 if relative else a - b for a, b in pairs)
