"""batchgate's benchmark harness. Entry points (each `python -m bench.X --help`):

    run         gateway overhead over a direct provider call (make bench, bench-smoke, bench-soak)
    soak        mixed upstream faults at steady concurrency (make soak)
    bulk        one bulk cancel of 1,000 sandbox batches, timed, with peak RSS (make bench-bulk)
    floor       the trivial grpc.aio servicer bench.run measures as a reference

Shared pieces, by job:

    common      paths, the seeded batch, log line, HarnessError, percentile
    install     h2load, pip requirements and generated code, installed on demand
    procs       /proc readings: CPU seconds and RSS of process trees, the gateway's pids
    system      the simulator, the gateway (and a Redis one) under test; a sandbox-mode stack
    paths       the paths under test and the checks that they answer before timing
    load        load generators (h2load, Python fallback) and one measured run
    limit_cost  the rate-limit check's cost from interleaved rounds
    report      results table, targets, markdown; plot draws latency.png; profiling runs py-spy
    soak_plan, soak_report   the fault soak's plan and its report
"""
