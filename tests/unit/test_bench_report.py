"""bench/report.py: the overhead split that says how much of the gateway's cost is its own code."""

from bench.load import LoadResult, Run
from bench.report import breakdown_lines


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
