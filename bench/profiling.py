"""`python -m bench.run --profile`: py-spy on the service (all its processes) during an extra REST
c=64 run. A summary goes to bench/results/profile.md (the busy samples by owner: grpc, aiohttp,
batchgate's own code, logging, metrics, the asyncio loop; then self and inclusive time per frame),
the collapsed stacks to bench/results/profile.txt (not committed: to search, or to draw as a flame
graph). With `--profile-native` the owners are exact: grpc's Cython layer and C core have no Python
frames and show up only there.

Named profiling, not profile: a bench/profile.py would shadow the standard library's `profile`
(which cProfile imports) wherever bench/ itself is on the path.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, log
from bench.install import ensure_pip_requirements
from bench.load import LoadClient, Target
from bench.procs import Groups


def profile(args: argparse.Namespace, client: LoadClient, groups: Groups, target: Target) -> None:
    """py-spy on the service while `client` sends `args.profile_requests` to `target`."""
    if not ensure_pip_requirements(ROOT / "bench" / "requirements-profile.txt", "py_spy") and not shutil.which(
        "py-spy", path=str(Path(sys.executable).parent)
    ):
        log("py-spy not installable: no profile")
        return
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        log("py-spy not found after install: no profile")
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = RESULTS / "profile.txt"
    raw.unlink(missing_ok=True)
    pid = groups.roots["service"][0]
    cmd = [spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--output", str(raw), "--subprocesses"]
    # --native pauses the process for each sample (it cannot be combined with --nonblocking).
    cmd.append("--native" if args.profile_native else "--nonblocking")
    log(f"profiling the service (pid {pid}) under {target.label} c={args.concurrency}: {' '.join(cmd[1:])}")
    spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    result = client.run(target, args.concurrency, args.profile_requests)
    spy_proc.send_signal(signal.SIGINT)
    try:
        _, err = spy_proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        spy_proc.kill()
        _, err = spy_proc.communicate()
    if not raw.exists():
        log(f"py-spy wrote nothing: {err.decode(errors='replace')[-400:]}")
        return
    summary = summarize_profile(raw.read_text())
    text = [
        "# batchgate service profile",
        "",
        f"py-spy ({' '.join(cmd[1:])}) on the service while h2load sent {args.profile_requests:,} requests "
        f"({target.label}) at c={args.concurrency} ({args.profile_requests / result.elapsed_s:.0f} req/s under the "
        "profiler; py-spy slows the service, most with --native, which pauses it for every sample).",
        "",
        *summary,
        "",
    ]
    (RESULTS / "profile.md").write_text("\n".join(text))
    print("\n".join(text))


def summarize_profile(collapsed: str, top: int = 25) -> list[str]:
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    idle = total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        total += count
        if frames and _idle(frames):
            idle += count
        if frames:
            self_counts[_short(frames[-1])] = self_counts.get(_short(frames[-1]), 0) + count
        for name in {_short(f) for f in frames}:
            incl_counts[name] = incl_counts.get(name, 0) + count
    if not total:
        return ["(no samples)"]
    lines = [
        f"{total} samples, {idle * 100 / total:.0f}% of them idle (waiting in epoll/select or on a lock).",
        "",
        *_owners(collapsed),
        "",
        "Top self time (leaf frame):",
        "",
        "| % samples | frame |",
        "|--:|---|",
    ]
    for name, count in sorted(self_counts.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {count * 100 / total:.1f} | `{name}` |")
    lines += ["", "Top inclusive time:", "", "| % samples | frame |", "|--:|---|"]
    for name, count in sorted(incl_counts.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {count * 100 / total:.1f} | `{name}` |")
    return lines


# Who a busy sample belongs to: the first frame, from the leaf up, that one of these names (asyncio
# and libc frames are skipped: a send() belongs to whoever wrote). Order matters: grpc's Cython
# coroutines run our servicer, so a sample inside grpc called from our code is grpc's.
_OWNERS = (
    ("grpc (Cython layer and C core, incl. its poller thread)", ("cygrpc", "libgrpc", "grpc/_")),
    ("aiohttp (the upstream HTTP client)", ("aiohttp/", "yarl/", "multidict/")),
    ("logging (access + audit lines)", ("logging/", "JsonFormatter", "orjson")),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("batchgate's own code (service/)", ("service/",)),
)


def _owner(frames: list[str]) -> str:
    for frame in reversed(frames):
        for owner, marks in _OWNERS:
            if any(mark in frame for mark in marks) and "service/__main__" not in frame:
                return owner
    if any("asyncio" in f for f in frames):
        return "asyncio event loop (scheduling, selector)"
    return "other (interpreter, other threads)"


def _owners(collapsed: str) -> list[str]:
    """The busy (non-idle) samples by owner."""
    counts: dict[str, int] = {}
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames or not count_text.isdigit() or _idle(frames):
            continue
        owner = _owner(frames)
        counts[owner] = counts.get(owner, 0) + int(count_text)
    busy = sum(counts.values())
    if not busy:
        return []
    lines = ["Busy samples by owner:", "", "| % of busy samples | owner |", "|--:|---|"]
    for owner, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {count * 100 / busy:.1f} | {owner} |")
    return lines


def _short(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"; keep function and file name.
    match = re.match(r"^(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    func, path = match.groups()
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{func} ({short})"


def _idle(frames: list[str]) -> bool:
    """A thread waiting: in epoll/select/poll (the loop, grpc's poller), or blocked on a lock or queue
    (an idle thread-pool worker). Unnamed libc frames (`0x7f.. (libc.so.6)`) are skipped to reach
    the call that waits."""
    for frame in reversed(frames):
        if frame.startswith("0x"):
            continue
        return bool(_IDLE.match(frame))
    return False


_IDLE = re.compile(
    r"^(epoll_wait|EpollSelector\.select|select|poll|PyThread_acquire_lock_timed|_queue_SimpleQueue_get_impl"
    r"|pthread_cond_(timed)?wait|sem_(timed)?wait) "
)
