"""bench/profiling.py: busy samples go to the right owner (what the native profile's verdict rests on)."""

from bench.profiling import summarize_profile

MAIN = "_run_module_as_main (<frozen runpy>:198);main (service/__main__.py:103);Handle._run (asyncio/events.py:80)"
COLLAPSED = "\n".join(
    [
        # grpc's Cython coroutine running our servicer, which calls back into grpc: grpc's.
        f"{MAIN};0x1 (grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so);wrapper (service/api.py:260);"
        "0x2 (grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so);sendmsg (libc.so.6) 6",
        # aiohttp writing through the asyncio transport: aiohttp's, not asyncio's.
        f"{MAIN};_send_once (service/providers/http.py:140);send (aiohttp/client_reqrep.py:700);"
        "write (asyncio/selector_events.py:1057);send (libc.so.6) 3",
        f"{MAIN};record_request (service/observability.py:116);JsonFormatter.format (service/observability.py:230) 1",
        f"{MAIN};cancel (service/cancel.py:90) 2",
        f"{MAIN};BaseEventLoop._run_once (asyncio/base_events.py:1900);epoll_wait (libc.so.6) 8",
        # An idle thread-pool worker: blocked on its queue's lock, under unnamed libc frames.
        "Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:81);_queue_SimpleQueue_get_impl "
        "(_queuemodule.c:1);PyThread_acquire_lock_timed (libpython3.11.so.1.0);0x7f180caa3f16 (libc.so.6) 4",
    ]
)


def test_busy_samples_are_counted_by_owner_and_idle_ones_left_out() -> None:
    lines = summarize_profile(COLLAPSED)
    assert lines[0] == "24 samples, 50% of them idle (waiting in epoll/select or on a lock)."
    table = lines[lines.index("Busy samples by owner:") + 4 : lines.index("Top self time (leaf frame):") - 1]
    owners = {owner: float(share) for share, owner in (row.strip("| ").split(" | ") for row in table)}
    assert owners["grpc (Cython layer and C core, incl. its poller thread)"] == 50.0
    assert owners["aiohttp (the upstream HTTP client)"] == 25.0
    assert owners["batchgate's own code (service/)"] == 16.7
    assert owners["logging (access + audit lines)"] == 8.3
