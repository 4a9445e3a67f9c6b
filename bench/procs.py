"""Process accounting from /proc: CPU seconds and resident memory of process trees.

Readings take root pids and add their descendants at each reading, because the gateway's processes
(service workers, Envoy) are found by their parents. Used by every bench entry point: `bench.run`
(CPU per request, RSS), `bench.soak` (RSS over a soak) and `bench.bulk` (peak RSS during a call).
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from gateway.stack import Stack

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def with_descendants(pids: list[int]) -> list[int]:
    children = _children_map()
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLK_TCK


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


@dataclass
class Groups:
    """Root pids of what we measure; descendants are looked up at each reading (worker processes)."""

    roots: dict[str, list[int]]

    def pids(self, name: str) -> list[int]:
        return with_descendants(self.roots.get(name, []))

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(self.pids(name)) for name in self.roots}

    def rss(self, name: str) -> int:
        return rss_kib(self.pids(name))


class RssSampler:
    """Samples the RSS of some processes on a thread until stopped; keeps the peak."""

    def __init__(self, pids: list[int], interval_s: float = 0.005) -> None:
        self._pids, self._interval = pids, interval_s
        self._stop = threading.Event()
        self.peak_kib = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, rss_kib(self._pids))
            self._stop.wait(self._interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, rss_kib(self._pids))


def service_pids(stack: Stack) -> list[int]:
    """The gateway's service worker processes."""
    return [proc.pid for proc in stack.service_workers()]


def envoy_pids(stack: Stack) -> list[int]:
    return [proc.pid for proc in stack.procs if "envoy" in Path(str(proc.args[0])).name]


def die_with_parent() -> None:
    """preexec_fn for the harness's own children: SIGKILL when the harness dies (PR_SET_PDEATHSIG)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
