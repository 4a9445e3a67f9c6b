"""Waiting for a cancel to take effect (service.usecases.waiting) with a stepped clock, and the bounds of a
bulk call (service.usecases.bulk)."""

from __future__ import annotations

import itertools
import re

import pytest

from service.domain.errors import InvalidRequest, Overloaded, ProviderError, Unauthenticated
from service.domain.model import MAX_BULK_ITEMS, MAX_WAIT_SECONDS, BatchState
from service.infra.timing import Timing
from service.usecases.bulk import check_items, check_wait
from service.usecases.waiting import PollPolicy, Waiting, wait_end
from tests.support import SteppedClock


def reader(clock: SteppedClock, answers: list):
    """A read that answers the given states (or raises the given errors) in turn, noting when."""
    reads: list[float] = []

    async def read():
        reads.append(clock.now)
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return BatchState(id="b", status=answer), {"status": answer}

    return read, reads


async def steps_of(read, clock: SteppedClock, until: float, status: str = "cancelling", rand=lambda: 0.0, policy=None):
    waiting = Waiting(policy or PollPolicy(), Timing(clock=clock, sleep=clock.sleep, rand=rand))
    return [step async for step in waiting.watch(read, BatchState(id="b", status=status), until)]


async def test_reads_start_after_one_second_and_back_off_to_thirty():
    clock = SteppedClock()
    read, reads = reader(clock, ["cancelling"])
    steps = await steps_of(read, clock, until=200.0)
    assert reads[:7] == [1.0, 3.0, 7.0, 15.0, 31.0, 61.0, 91.0]  # gaps 1, 2, 4, 8, 16, 30, 30
    assert max(b - a for a, b in itertools.pairwise(reads)) == 30.0
    assert len(steps) == 1 and steps[0].final and steps[0].state.status == "cancelling"
    assert "still cancelling" in steps[0].warning
    assert clock.now == 200.0  # the last sleep is cut to the end of the wait


async def test_a_caller_that_loses_its_access_ends_the_wait_before_the_next_read():
    clock = SteppedClock()
    read, reads = reader(clock, ["cancelling"])
    revoked = Unauthenticated("virtual key not found", code="virtual_key_not_found")
    checks: list[float] = []

    def check() -> float | None:
        checks.append(clock.now)
        if clock.now >= 5.0:
            raise revoked
        return None

    waiting = Waiting(PollPolicy(), Timing(clock=clock, sleep=clock.sleep, rand=lambda: 0.0))
    steps = waiting.watch(read, BatchState(id="b", status="cancelling"), 100.0, check)
    with pytest.raises(Unauthenticated) as info:
        async for _ in steps:
            pass
    assert info.value is revoked
    assert reads == [1.0, 3.0]  # the read due at 7 s never happens
    assert checks == [0.0, 1.0, 1.0, 3.0, 3.0, 7.0]  # before each sleep and before each read


async def test_a_wait_wakes_when_its_callers_key_expires_and_after_an_early_wake_sleeps_on():
    clock = SteppedClock()
    read, reads = reader(clock, ["cancelling"])
    expires_at = 12.5

    def check() -> float | None:
        if clock.now >= expires_at:
            raise Unauthenticated("virtual key not found", code="virtual_key_not_found")
        return expires_at - clock.now

    async def sleep(seconds: float) -> None:  # the first sleep is cut short (a reload's pulse)
        await clock.sleep(seconds / 2 if not clock.sleeps else seconds)

    waiting = Waiting(PollPolicy(), Timing(clock=clock, sleep=sleep, rand=lambda: 0.0))
    with pytest.raises(Unauthenticated):
        async for _ in waiting.watch(read, BatchState(id="b", status="cancelling"), 100.0, check):
            pass
    assert reads == [1.0, 3.0, 7.0]  # read on time despite the early wake; none after the expiry
    assert clock.now == pytest.approx(12.501)  # woke at the expiry (the next read was due at 15 s)


async def test_jitter_only_shortens_a_gap():
    policy = PollPolicy()
    assert policy.next_delay(1.0, lambda: 0.0) == 2.0
    assert policy.next_delay(1.0, lambda: 1.0) == pytest.approx(1.6)
    assert policy.next_delay(30.0, lambda: 0.5) == pytest.approx(27.0)
    assert all(0 < policy.next_delay(d, lambda: 0.999) <= 30 for d in (1, 16, 30))


async def test_a_line_per_status_change_and_the_terminal_one_is_final():
    clock = SteppedClock()
    read, reads = reader(clock, ["cancelling", "cancelling", "finalizing", "cancelled"])
    steps = await steps_of(read, clock, until=100.0, status="validating")
    assert [(s.state.status, s.final) for s in steps] == [
        ("cancelling", False),
        ("finalizing", False),
        ("cancelled", True),
    ]
    assert steps[-1].warning is None
    assert len(reads) == 4  # no read after the terminal status


async def test_an_already_terminal_batch_is_not_read():
    clock = SteppedClock()
    read, reads = reader(clock, ["cancelled"])
    steps = await steps_of(read, clock, until=100.0, status="cancelled")
    assert reads == [] and [(s.state.status, s.final) for s in steps] == [("cancelled", True)]


async def test_retry_after_on_a_failed_read_is_honoured_and_the_wait_goes_on():
    clock = SteppedClock()
    throttled = Overloaded("slow down", headers={"retry-after": "20"})
    read, reads = reader(clock, [throttled, "cancelled"])
    steps = await steps_of(read, clock, until=100.0)
    assert reads == [1.0, 21.0]  # not 3.0: the provider asked for 20 s
    assert steps[-1].state.status == "cancelled" and steps[-1].warning is None


async def test_a_read_failure_that_cannot_pass_ends_the_wait_with_the_last_state():
    clock = SteppedClock()
    gone = ProviderError("No batch found", status_code=404)
    read, reads = reader(clock, [gone])
    steps = await steps_of(read, clock, until=100.0)
    assert reads == [1.0]
    (step,) = steps
    assert step.final and step.state.status == "cancelling"
    assert "still cancelling" in step.warning and "No batch found" in step.warning


async def test_wait_ends_before_the_calls_deadline():
    assert wait_end(10, None, now=5.0) == 15.0
    assert wait_end(3600, deadline=65.0, now=5.0) == 64.0  # a margin to answer in
    assert wait_end(3600, deadline=7.0, now=5.0) == pytest.approx(6.8)


def test_bounds_of_a_bulk_call():
    check_items([("b", "openai")], 0)
    check_items([("b", "openai")] * MAX_BULK_ITEMS, MAX_WAIT_SECONDS)
    for items, wait, param in [
        ([], 0, "batches"),
        ([("b", "openai")] * (MAX_BULK_ITEMS + 1), 0, "batches"),
        ([("b", "openai")], MAX_WAIT_SECONDS + 1, "wait_seconds"),
        ([("b", "openai"), ("", "openai")], 0, "batches[1].id"),
        ([("b", " ")], 0, "batches[0].provider"),
    ]:
        with pytest.raises(InvalidRequest) as info:
            check_items(items, wait)
        assert info.value.param == param and info.value.status_code == 400
    with pytest.raises(InvalidRequest):
        check_wait(MAX_WAIT_SECONDS + 1)


def test_the_edge_lets_the_longest_wait_finish_and_streams_ndjson():
    from gateway.render import render

    config = render(http_port=8080, grpc_ports=[50051], route_timeout_s=60)
    # The route whose regex names Cancel: its lines up to the next route.
    start = config.index('regex: "^(/batchgate\\\\.v1\\\\.BatchService/Cancel')
    route = config[start : config.index("- match:", start)]
    regex = route.split('regex: "', 1)[1].split('"', 1)[0]
    settings = dict(re.findall(r"^\s+(timeout|idle_timeout): (\S+)$", route, re.MULTILINE))
    assert settings == {"timeout": f"{MAX_WAIT_SECONDS + 60}s", "idle_timeout": f"{MAX_WAIT_SECONDS + 60}s"}
    pattern = re.compile(regex.replace("\\\\", "\\"))
    assert [bool(pattern.match(f"/batchgate.v1.BatchService/{m}")) for m in ("Cancel", "CancelMany", "Health")] == [
        True,
        True,
        False,
    ]
    assert [bool(pattern.match(f"/google.longrunning.Operations/{m}")) for m in ("WaitOperation", "GetOperation")] == [
        True,
        False,
    ]
    assert "stream_newline_delimited: true" in config
    # Every other call keeps the normal route timeout (health, reflection, operations, everything else).
    assert config.count("timeout: 60s") == 4 and "idle_timeout: 60s" not in config


def test_sandbox_cancel_delay_is_a_simulator_setting():
    from sandbox import Simulator

    sim = Simulator(keys={}, auto_create=True, cancel_delay_s=3.0)
    store = sim.add_provider("openai")
    assert store.seed("b1").cancel_delay_s == 3.0
    assert store.seed("b2", cancel_delay_s=0).cancel_delay_s == 0
    assert store.get("b3").cancel_delay_s == 3.0
    assert Simulator(keys={}).add_provider("openai").seed("b4").cancel_delay_s == 0.2
    with pytest.raises(ValueError):
        Simulator(keys={}, cancel_delay_s=-1)


def test_the_per_route_transcoder_configs_differ_only_in_their_body_limits():
    """The per-route copies replace the filter's config on POST /v1/batches/cancel and
    /v1/batches:cancelMatching (a larger request) and on /v1/operations... (a larger answer): they
    must keep every other option (services, print options, validation) of the filter's own."""
    from gateway.render import BULK_MAX_REQUEST_BYTES, OPERATIONS_MAX_RESPONSE_BYTES, render

    config = render(http_port=8080, grpc_ports=[50051])
    marker = '"@type": type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder'
    blocks = []
    for start in [i for i in range(len(config)) if config.startswith(marker, i)]:
        line_start = config.rfind("\n", 0, start) + 1
        indent = start - line_start
        lines = []
        for line in config[line_start:].splitlines():
            if lines and (len(line) - len(line.lstrip()) < indent or not line.strip()):
                break
            text = line[indent:].split(" #")[0].rstrip()
            if text.strip() and not text.lstrip().startswith("#"):
                lines.append(text)
        blocks.append(lines)
    bulk, operations, filter_config = blocks

    def limits(block: list[str]) -> list[str]:
        return [line for line in block if "_body_size" in line]

    assert limits(filter_config) == ["max_request_body_size: 65536", "max_response_body_size: 4194304"]
    assert limits(bulk) == [f"max_request_body_size: {BULK_MAX_REQUEST_BYTES}", "max_response_body_size: 4194304"]
    assert limits(operations) == [
        "max_request_body_size: 65536",
        f"max_response_body_size: {OPERATIONS_MAX_RESPONSE_BYTES}",
    ]
    for copy in (bulk, operations):
        assert [line for line in copy if line not in limits(copy)] == [
            line for line in filter_config if line not in limits(filter_config)
        ]
    assert BULK_MAX_REQUEST_BYTES >= MAX_BULK_ITEMS * 600
