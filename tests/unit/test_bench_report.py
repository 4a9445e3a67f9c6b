"""bench/report.py: the overhead split that says how much of the gateway's cost is its own code."""

from bench.load import LoadResult, Run
from bench.report import breakdown_lines, floor_ratio_lines


def run(target: str, c: int, p50_ms: float, service_s: float = 0.0, envoy_s: float = 0.0) -> Run:
    return Run(target, c, 10, LoadResult([p50_ms] * 10, 0, 0.01, 0.0), {"service": service_s, "envoy": envoy_s})


def test_overheads_split_into_stack_upstream_call_and_own_code() -> None:
    runs = [
        run("baseline", 1, 0.1),
        run("rest_floor", 1, 1.1),
        run("rest_floor_upstream", 1, 1.6),
        run("rest_envoy", 1, 2.1),
        run("grpc_floor", 1, 0.3),
        run("grpc_floor_upstream", 1, 0.7),
        run("grpc_direct", 1, 1.5),
    ]
    rest, grpc = breakdown_lines(runs, 64)
    assert rest == (
        "- REST via Envoy c=1 p50 overhead 2.00 ms: the Envoy edge and grpc.aio alone (no upstream call, no "
        "batchgate code) +1.00 ms (50%); one aiohttp call to the provider +0.50 ms (25%); batchgate's own code "
        "+0.50 ms (25%)"
    )
    assert grpc.startswith("- gRPC direct c=1 p50 overhead 1.40 ms: grpc.aio alone") and grpc.endswith("+0.80 ms (57%)")


def test_the_high_concurrency_line_gives_throughput_and_cpu_per_call() -> None:
    runs = [run(name, 64, 5.0, service_s=0.004, envoy_s=0.002) for name in ("rest_floor", "rest_floor_upstream")]
    runs.append(run("rest_envoy", 64, 9.0, service_s=0.01, envoy_s=0.003))
    (line,) = breakdown_lines(runs, 64)
    assert line == (
        "- REST via Envoy c=64, req/s (service + Envoy CPU per call): the Envoy edge and grpc.aio alone 1000 "
        "(400 + 200 us); with one aiohttp call 1000 (400 + 200 us); the gateway 1000 (1000 + 300 us)"
    )


def test_no_line_without_the_reference_rows() -> None:
    assert breakdown_lines([run("baseline", 1, 0.1), run("rest_envoy", 1, 2.0)], 64) == []


def test_issue_25s_ratios_are_reported_against_their_targets() -> None:
    runs = [
        run("baseline", 1, 0.1),
        run("rest_floor_upstream", 1, 1.6),
        run("rest_envoy", 1, 1.8),
        run("rest_floor_upstream", 64, 5.0, service_s=0.004),
        run("rest_envoy", 64, 5.0, service_s=0.006),
        run("grpc_floor_upstream", 64, 5.0, service_s=0.004),
        run("grpc_direct", 64, 5.0, service_s=0.0048),
    ]
    runs[3].n, runs[4].n = 100, 90  # in the same 10 ms: 10,000 and 9,000 req/s
    assert floor_ratio_lines(runs, 64) == [
        "MISS  service CPU per call, REST via Envoy c=64, over the reference servicer with one aiohttp call: "
        "67 / 40 us = 1.67x (target <= 1.25x)",
        "PASS  service CPU per call, gRPC direct c=64, over the reference servicer with one aiohttp call: "
        "480 / 400 us = 1.20x (target <= 1.25x)",
        "PASS  batchgate's own share of the REST via Envoy c=1 p50 overhead: 12% (target <= 15%)",
        "PASS  REST via Envoy c=64 req/s over the reference Envoy + servicer + aiohttp row: 9000 / 10000 = 0.90x "
        "(target >= 0.85x)",
    ]
    assert floor_ratio_lines([run("rest_envoy", 64, 5.0, service_s=0.006)], 64) == []
