"""Live configuration: the config a worker runs changes under it, without a restart.

A `Runtime` is one loaded config and everything built from it (the Canceller: authenticator,
adapters, pooled HTTP executors, circuit breakers, admission queues). `LiveConfig` holds the current
one and swaps it in one step on reload. Every call enters the runtime that is current at its start,
once (`with live.current as runtime:`), so it finishes with the config it started with; a replaced
runtime counts its calls and releases its connection pools only after the last one ended. What did
not change is carried over (see `Canceller`), and the rate limiter lives outside every runtime, so
counts survive a reload.

A reload that fails (unreadable file, bad JSON, a field error, a missing `env.VAR`, a config that
would open a public listener) changes nothing: one line `config reload failed: <field>: <why>`, in
the wording of the start-time `config error`.

Triggers: `reload()` (SIGHUP), and `FileWatcher`, which polls the file's stat through symlinks, so
an atomic rename over the file and the `..data` symlink swap of a Kubernetes-mounted ConfigMap or
Secret are both seen, and reloads when the content changed. The secret files the config names
(`file./path` values) are watched the same way: a rotated secret is a reload.

Fields the config does not know are ignored with one warning line each, at start and at every
reload (`batchgate config check` refuses them).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from service.config.file import Config, config_version, read_config
from service.config.reader import ConfigError
from service.infra.limits import RateLimiter
from service.infra.observability import (
    CONFIG_INFO,
    CONFIG_LAST_RELOAD_SUCCESS_SECONDS,
    CONFIG_LAST_RELOAD_SUCCESSFUL,
    CONFIG_RELOADS,
)
from service.infra.providers.catalog import parse_config_bytes
from service.runtime.check import unknown_field_warnings
from service.usecases.cancel import Canceller, Executor

log = logging.getLogger(__name__)

WATCH_INTERVAL_SECONDS = 0.5


class Runtime:
    """One loaded config and what is built from it. A call holds it (`with runtime:`) from start to
    end; once retired and left by its last call it tells its owner, which frees what no other
    runtime uses."""

    __slots__ = ("config", "canceller", "version", "loaded_at", "in_flight", "retired", "_on_drained")

    def __init__(
        self,
        config: Config,
        canceller: Canceller,
        version: str,
        loaded_at: float,
        on_drained: Callable[[Runtime], None],
    ) -> None:
        self.config, self.canceller, self.version, self.loaded_at = config, canceller, version, loaded_at
        self.in_flight = 0
        self.retired = False
        self._on_drained = on_drained

    def __enter__(self) -> Runtime:
        self.in_flight += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.in_flight -= 1
        if self.retired and not self.in_flight:
            self._on_drained(self)


def describe_changes(old: Config, new: Config) -> list[str]:
    """The parts of the config that differ, by name only (never a value): for the reload log line."""
    changed = [
        f"providers.{name}"
        for name in sorted(old.providers.keys() | new.providers.keys())
        if old.providers.get(name) != new.providers.get(name)
    ]
    if old.virtual_keys != new.virtual_keys:
        changed.append("governance")
    if old.auth != new.auth:
        changed.append("auth_config")
    if old.client != new.client:
        changed.append("client")
    if old.operations != new.operations:
        changed.append("operations")
    return changed


class RunDir:
    """Where the workers of one gateway run publish the config they run, so that whichever worker
    answers REST /health can show all of them (`--run-dir`: a directory of the run, not state that
    outlives it). One small JSON file per worker, replaced atomically (write, then rename); files of
    workers that are gone are skipped."""

    def __init__(self, directory: str | Path, worker: int) -> None:
        self.directory, self.worker = Path(directory), worker
        self._file = self.directory / f"worker-{worker}.json"

    def publish(self, state: Mapping[str, Any]) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = self._file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(orjson.dumps({**state, "pid": os.getpid()}))
            tmp.replace(self._file)
        except OSError as exc:
            log.warning("cannot publish this worker's config state in %s: %s", self.directory, exc.strerror)

    def read(self) -> list[dict[str, Any]]:
        states = []
        for path in sorted(self.directory.glob("worker-*.json")):
            try:
                state = orjson.loads(path.read_bytes())
                os.kill(int(state.pop("pid")), 0)
            except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
                continue  # unreadable, or its worker is gone
            states.append(state)
        return sorted(states, key=lambda s: s.get("worker", 0))

    def remove(self) -> None:
        self._file.unlink(missing_ok=True)


class LiveConfig:
    """The current runtime of this worker, and reloading it.

    `check` may refuse a config that parses (returns a reason); `restart_only` maps the names of
    settings a reload cannot change (TLS files, say) to a function giving their current fingerprint:
    when one differs from its value at start a reload says so in one line. `env` (default: the
    process environment, read again at each reload) resolves `env.VAR` values. `canceller`, when
    given, serves the first config (built from `config` otherwise)."""

    def __init__(
        self,
        config: Config,
        raw: bytes | None = None,
        *,
        path: str | Path | None = None,
        limiter: RateLimiter | None = None,
        check: Callable[[Config], str | None] | None = None,
        restart_only: Mapping[str, Callable[[], Any]] | None = None,
        run_dir: RunDir | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        canceller: Canceller | None = None,
    ) -> None:
        self.path = path
        # One per process, outside every runtime: counts of a virtual key carry over a reload.
        self.limiter = limiter if limiter is not None else RateLimiter.for_config(config.store)
        self._check, self._env, self._clock, self._run_dir = check, env, clock, run_dir
        self._restart_only = dict(restart_only or {})
        self._pinned = {name: fingerprint() for name, fingerprint in self._restart_only.items()}
        # Executors (pools, breakers) shared by the current and the draining runtimes, by use count.
        self._uses: collections.Counter[Executor] = collections.Counter()
        self._closing: set[asyncio.Task] = set()
        self.digest = fingerprint(raw, config.report.secret_files) if raw is not None else None
        self.failed_digest: bytes | None = None
        self.last_reload_successful = True
        self.current = self._build(config, raw, None, canceller)
        _warn_unknown_fields(config)
        CONFIG_LAST_RELOAD_SUCCESSFUL.set(1)
        CONFIG_LAST_RELOAD_SUCCESS_SECONDS.set(self.current.loaded_at)
        CONFIG_INFO.labels(self.current.version).set(1)
        self._publish()

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> LiveConfig:
        """Loads `path` (raises ConfigError) and keeps it as the file to reload."""
        raw = read_config(path)
        return cls(parse_config_bytes(raw, path, kwargs.get("env")), raw, path=path, **kwargs)

    def _build(
        self, config: Config, raw: bytes | None, previous: Runtime | None, canceller: Canceller | None = None
    ) -> Runtime:
        if canceller is None:
            canceller = Canceller(config, self.limiter, previous.canceller if previous is not None else None)
        self._uses.update(canceller.executors())
        version = config_version(raw) if raw is not None else ""
        return Runtime(config, canceller, version, self._clock(), self._drained)

    # --- reloading ---------------------------------------------------------------------------

    def reload(self, trigger: str = "SIGHUP") -> bool:
        """Reads the file again and applies it, even when its bytes did not change (`env.VAR`
        values may have). Returns whether the new config is now current."""
        if self.path is None:
            log.warning("config reload asked for, but this worker's config does not come from a file")
            return False
        try:
            raw = read_config(self.path)
        except ConfigError as exc:
            self._failed(exc, None)
            return False
        return self.apply(raw, trigger)

    def secret_files(self) -> tuple[tuple[str, str], ...]:
        """The secret files the running config was read with: (path, SHA-256 of the content)."""
        return self.current.config.report.secret_files

    def fingerprint(self, raw: bytes) -> bytes:
        """What `raw` would load as, with the running config's secret files as they are now."""
        return fingerprint(raw, tuple((path, _file_digest(path)) for path, _ in self.secret_files()))

    def apply(self, raw: bytes, trigger: str, *, report: bool = True) -> bool:
        """Makes `raw` the running config if it is valid. A failure is logged and counted only with
        `report` (the file watcher first waits to see whether a write was still in progress)."""
        previous = self.current
        try:
            config = parse_config_bytes(raw, self.path or "config", self._env)
            problem = self._check(config) if self._check is not None else None
            if problem:
                raise ConfigError(problem)
            runtime = self._build(config, raw, previous)
        except ConfigError as exc:
            if report:
                self._failed(exc, self.fingerprint(raw))
            return False
        except Exception as exc:  # never a traceback out of a signal handler: the running config stays
            if report:
                failure = ConfigError(f"{self.path or 'config'}: cannot be loaded ({type(exc).__name__})")
                self._failed(failure, self.fingerprint(raw))
            return False
        self.current = runtime
        digest = fingerprint(raw, config.report.secret_files)
        self.digest, self.failed_digest, self.last_reload_successful = digest, None, True
        self._retire(previous)
        CONFIG_RELOADS.labels("success").inc()
        CONFIG_LAST_RELOAD_SUCCESSFUL.set(1)
        CONFIG_LAST_RELOAD_SUCCESS_SECONDS.set(self.current.loaded_at)
        if previous.version != self.current.version:
            with contextlib.suppress(KeyError):  # another LiveConfig in this process (tests) removed it
                CONFIG_INFO.remove(previous.version)
            CONFIG_INFO.labels(self.current.version).set(1)
        changed = describe_changes(previous.config, config)
        log.info(
            "config reloaded (%s): version %s (was %s), changed: %s",
            trigger,
            self.current.version,
            previous.version,
            ", ".join(changed) or "nothing",
        )
        _warn_unknown_fields(config)
        stale = [name for name, current in self._restart_only.items() if current() != self._pinned[name]]
        if stale:
            log.warning(
                "config reload: %s changed but cannot change at runtime; the running value stays until a restart",
                ", ".join(stale),
            )
        self._publish()
        return True

    def _failed(self, exc: ConfigError, digest: bytes | None) -> None:
        self.failed_digest, self.last_reload_successful = digest, False
        CONFIG_RELOADS.labels("failure").inc()
        CONFIG_LAST_RELOAD_SUCCESSFUL.set(0)
        for problem in exc.problems or (str(exc),):
            log.error("config reload failed: %s", problem)
        self._publish()

    # --- draining replaced runtimes ----------------------------------------------------------

    def _retire(self, runtime: Runtime) -> None:
        runtime.retired = True
        if not runtime.in_flight:
            self._drained(runtime)

    def _drained(self, runtime: Runtime) -> None:
        """The last call of a replaced runtime ended: close the pools no other runtime uses."""
        for executor in runtime.canceller.executors():
            self._uses[executor] -= 1
            if self._uses[executor] <= 0:
                del self._uses[executor]
                self._close(executor)

    def _close(self, executor: Executor) -> None:
        try:
            task = asyncio.get_running_loop().create_task(executor.close())
        except RuntimeError:  # no loop: nothing was ever opened
            return
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """At shutdown, after the server stopped: closes every pool still open."""
        executors = list(self._uses)
        self._uses.clear()
        await asyncio.gather(*(executor.close() for executor in executors), *self._closing)
        if self._run_dir is not None:
            self._run_dir.remove()

    # --- what /health shows ------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """This worker's config: version, load time, whether the last reload worked."""
        return {
            "worker": self._run_dir.worker if self._run_dir is not None else 0,
            "version": self.current.version,
            "loaded_at": int(self.current.loaded_at),
            "last_reload_successful": self.last_reload_successful,
        }

    def workers(self) -> list[dict[str, Any]]:
        """Every worker's `state()` of this run (just this one without a run directory)."""
        if self._run_dir is None:
            return [self.state()]
        return self._run_dir.read() or [self.state()]

    def _publish(self) -> None:
        if self._run_dir is not None:
            self._run_dir.publish(self.state())


def fingerprint(raw: bytes, secret_files: tuple[tuple[str, str], ...]) -> bytes:
    """A config's identity: its bytes and the content of the secret files it names (kept in memory
    only, never shown: /health's version is the file's alone)."""
    digest = hashlib.sha256(raw)
    for path, content in secret_files:
        digest.update(f"\0{path}\0{content}".encode("utf-8", "surrogateescape"))
    return digest.digest()


def _file_digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


def _stat(path: str | Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _warn_unknown_fields(config: Config) -> None:
    for line in unknown_field_warnings(config):
        log.warning("%s", line)


class FileWatcher:
    """Notices a change of the config file, or of a secret file it names, without a signal: every
    `interval` seconds it stats the paths (following symlinks: an atomic rename and Kubernetes'
    `..data` swap both give a new inode) and, when anything changed, reads the config and applies it
    if what it would load (its bytes and the secret files' content) is new.

    A new content that does not load is applied again (and only then reported) once the file has
    stayed the same for one interval: a write seen half-way must not count as a failed reload."""

    def __init__(self, live: LiveConfig, interval: float = WATCH_INTERVAL_SECONDS) -> None:
        if live.path is None:
            raise ValueError("the config was not loaded from a file")
        self._live, self._path, self.interval = live, Path(live.path), interval
        # None: the first poll reads the file, in case it changed since it was loaded.
        self._signature: tuple | None = None
        self._suspect: bytes | None = None
        self._missing = False

    def _stat(self) -> tuple | None:
        config = _stat(self._path)
        if config is None:
            return None
        return config, tuple(_stat(path) for path, _ in self._live.secret_files())

    def poll(self) -> None:
        """One look at the files (the watcher's loop calls it; tests call it directly)."""
        signature = self._stat()
        if signature is None:
            self._unreadable("it is gone")
            return
        stable = signature == self._signature
        if stable and self._suspect is None:
            return
        self._signature = signature
        try:
            raw = self._path.read_bytes()
        except OSError as exc:
            self._unreadable(exc.strerror or type(exc).__name__)
            return
        self._missing = False
        digest = self._live.fingerprint(raw)
        if digest == self._live.digest and not self._live.last_reload_successful:
            # Put back to what runs after a failed reload: that is a successful reload.
            self._suspect = None
            self._live.apply(raw, "file change")
            return
        if digest in (self._live.digest, self._live.failed_digest):
            self._suspect = None
            return
        if digest == self._suspect:  # unchanged for an interval: that is what the file holds
            self._suspect = None
            self._live.apply(raw, "file change")
        elif not self._live.apply(raw, "file change", report=False):
            self._suspect = digest

    def _unreadable(self, why: str) -> None:
        """Logged once until the file can be read again; the running config stays meanwhile."""
        if not self._missing:
            log.warning("config file %s cannot be read (%s); the running config stays", self._path, why)
        self._missing = True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.poll()
            except Exception:  # keep watching whatever happened
                log.exception("config file watcher failed")
