"""Live configuration: the config a worker runs changes under it, without a restart.

`LiveConfig` holds the current `Runtime` (one loaded config and what is built from it, see
service.runtime.build) and swaps it in one step on reload. Every call enters the runtime that is
current at its start, once (`with live.current as runtime:`), so it finishes with the config it
started with; a replaced runtime counts its calls and releases its connection pools only after the
last one ended. What did not change is carried over, and the rate limiter lives outside every
runtime, so counts survive a reload.

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
import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from service.config.file import Config, config_version, read_config
from service.config.reader import ConfigError
from service.infra.concurrency import CallLimiter
from service.infra.limits import RateLimiter
from service.infra.observability import (
    CONFIG_INFO,
    CONFIG_LAST_RELOAD_SUCCESS_SECONDS,
    CONFIG_LAST_RELOAD_SUCCESSFUL,
    CONFIG_RELOADS,
    redact_logs,
)
from service.infra.providers.catalog import parse_config_bytes
from service.runtime.build import Runtime, RuntimeFactory
from service.runtime.check import unknown_field_warnings

log = logging.getLogger(__name__)

WATCH_INTERVAL_SECONDS = 0.5


def describe_changes(old: Config, new: Config) -> list[str]:
    """The parts of the config that differ, by name only (never a value): for the reload log line."""
    changed = [
        f"providers.{name}"
        for name in sorted(old.providers.keys() | new.providers.keys())
        if old.providers.get(name) != new.providers.get(name)
    ]
    if old.virtual_keys != new.virtual_keys or old.store != new.store:
        changed.append("governance")
    if old.auth != new.auth:
        changed.append("auth_config")
    if old.client != new.client:
        changed.append("client")
    if old.operations != new.operations:
        changed.append("operations")
    return changed


class RunDir:
    """Where the workers of one gateway publish the config they run, so that whichever worker
    answers REST /health can show all of them. One small JSON file per worker, replaced atomically
    (write, then rename); files of workers that are gone are skipped."""

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


class ConfigSource:
    """Where a worker's config comes from and what it must pass: the file (`path`, None when the
    config was given in memory), `env` resolving `env.VAR` values (default: the process environment,
    read again at each reload), `check` that may refuse a config that parses (returns a reason),
    and `restart_only`: the settings a reload cannot change (TLS files, say), each with a function
    giving its current fingerprint, so that a reload can say when one changed since the start."""

    def __init__(
        self,
        path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        check: Callable[[Config], str | None] | None = None,
        restart_only: Mapping[str, Callable[[], Any]] | None = None,
    ) -> None:
        self.path, self._env, self._check = path, env, check
        self._restart_only = dict(restart_only or {})
        self._pinned = {name: fingerprint() for name, fingerprint in self._restart_only.items()}

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "config"

    def read(self) -> bytes:
        """The file's bytes (ConfigError when it cannot be read)."""
        if self.path is None:
            raise ConfigError("this worker's config does not come from a file")
        return read_config(self.path)

    def parse(self, raw: bytes) -> Config:
        """The config in `raw`, checked (ConfigError naming the field, or the check's reason)."""
        config = parse_config_bytes(raw, self.path or "config", self._env)
        problem = self._check(config) if self._check is not None else None
        if problem:
            raise ConfigError(problem)
        return config

    def stale(self) -> list[str]:
        """The restart-only settings whose value changed since the start."""
        return [name for name, fingerprint in self._restart_only.items() if fingerprint() != self._pinned[name]]


def _report_success(previous: Runtime, current: Runtime, trigger: str, stale: list[str]) -> None:
    """A reload's metrics and log lines (the changed parts by name, never a value)."""
    CONFIG_RELOADS.labels("success").inc()
    CONFIG_LAST_RELOAD_SUCCESSFUL.set(1)
    CONFIG_LAST_RELOAD_SUCCESS_SECONDS.set(current.loaded_at)
    if previous.version != current.version:
        with contextlib.suppress(KeyError):  # another LiveConfig in this process (tests) removed it
            CONFIG_INFO.remove(previous.version)
        CONFIG_INFO.labels(current.version).set(1)
    changed = describe_changes(previous.config, current.config)
    log.info(
        "config reloaded (%s): version %s (was %s), changed: %s",
        trigger,
        current.version,
        previous.version,
        ", ".join(changed) or "nothing",
    )
    if stale:
        log.warning(
            "config reload: %s changed but cannot change at runtime; the running value stays until a restart",
            ", ".join(stale),
        )


def _report_failure(exc: ConfigError) -> None:
    CONFIG_RELOADS.labels("failure").inc()
    CONFIG_LAST_RELOAD_SUCCESSFUL.set(0)
    for problem in exc.problems or (str(exc),):
        log.error("config reload failed: %s", problem)


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


def _stat(path: str | Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _warn_unknown_fields(config: Config) -> None:
    for line in unknown_field_warnings(config):
        log.warning("%s", line)


class LiveConfig:
    """The current runtime of this worker, and reloading it: `config` (with its bytes `raw`, which
    give its version) is the first; `source` says where later ones come from and what they must
    pass; `factory` builds each one's runtime (default: one with the rate limiter `config.store`
    names); `run_dir` is where this worker publishes which config it runs."""

    def __init__(
        self,
        config: Config,
        raw: bytes | None = None,
        *,
        source: ConfigSource | None = None,
        factory: RuntimeFactory | None = None,
        run_dir: RunDir | None = None,
    ) -> None:
        self.source = source if source is not None else ConfigSource()
        self.factory = factory if factory is not None else RuntimeFactory.for_config(config)
        self._run_dir = run_dir
        self.digest = fingerprint(raw, config.report.secret_files) if raw is not None else None
        self.failed_digest: bytes | None = None
        self.last_reload_successful = True
        self.current = self.factory.build(config, config_version(raw) if raw is not None else "")
        self._store = config.store
        # What each caller holds now (service.infra.concurrency): also per process, across reloads.
        self.calls = CallLimiter()
        redact_logs(self.current.canceller.redactor.text)
        _warn_unknown_fields(config)
        CONFIG_LAST_RELOAD_SUCCESSFUL.set(1)
        CONFIG_LAST_RELOAD_SUCCESS_SECONDS.set(self.current.loaded_at)
        CONFIG_INFO.labels(self.current.version).set(1)
        self._publish()

    @classmethod
    def from_file(
        cls, source: ConfigSource, factory: RuntimeFactory | None = None, run_dir: RunDir | None = None
    ) -> LiveConfig:
        """Loads `source.path` (raises ConfigError, as for a reload) and keeps it as the file to reload."""
        raw = source.read()
        return cls(source.parse(raw), raw, source=source, factory=factory, run_dir=run_dir)

    @property
    def path(self) -> str | Path | None:
        return self.source.path

    @property
    def limiter(self) -> RateLimiter:
        """The process's rate limiter (it outlives reloads)."""
        return self.factory.limiter

    def secret_files(self) -> tuple[tuple[str, str], ...]:
        """The secret files the running config was read with: (path, SHA-256 of the content)."""
        return self.current.config.report.secret_files

    def fingerprint(self, raw: bytes) -> bytes:
        """What `raw` would load as, with the running config's secret files as they are now."""
        return fingerprint(raw, tuple((path, _file_digest(path)) for path, _ in self.secret_files()))

    # --- reloading ---------------------------------------------------------------------------

    def reload(self, trigger: str = "SIGHUP") -> bool:
        """Reads the file again and applies it, even when its bytes did not change (`env.VAR`
        values may have). Returns whether the new config is now current."""
        if self.path is None:
            log.warning("config reload asked for, but this worker's config does not come from a file")
            return False
        try:
            raw = self.source.read()
        except ConfigError as exc:
            self._failed(exc, None)
            return False
        return self.apply(raw, trigger)

    def apply(self, raw: bytes, trigger: str, *, report: bool = True) -> bool:
        """Makes `raw` the running config if it is valid. A failure is logged and counted only with
        `report` (the file watcher first waits to see whether a write was still in progress)."""
        previous = self.current
        try:
            config = self.source.parse(raw)
            runtime = self.factory.build(config, config_version(raw), previous)
        except ConfigError as exc:
            if report:
                self._failed(exc, self.fingerprint(raw))
            return False
        except Exception as exc:  # never a traceback out of a signal handler: the running config stays
            if report:
                failure = ConfigError(f"{self.source.name}: cannot be loaded ({type(exc).__name__})")
                self._failed(failure, self.fingerprint(raw))
            return False
        self.current = runtime
        digest = fingerprint(raw, config.report.secret_files)
        self.digest, self.failed_digest, self.last_reload_successful = digest, None, True
        previous.retire()
        # Running waits check their caller against the new config now (a key may be revoked).
        runtime.canceller.waiting.pulse()
        redact_logs(runtime.canceller.redactor.text)
        stale = self.source.stale()
        if runtime.config.store != self._store:  # the limiter and its store were opened at start
            stale.insert(0, "governance.store")
        _report_success(previous, runtime, trigger, stale)
        _warn_unknown_fields(config)
        self._publish()
        return True

    def _failed(self, exc: ConfigError, digest: bytes | None) -> None:
        self.failed_digest, self.last_reload_successful = digest, False
        _report_failure(exc)
        self._publish()

    async def close(self) -> None:
        """At shutdown, after the server stopped: closes every pool still open."""
        await self.factory.close()
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
        self._signature: tuple[Any, ...] | None = None
        self._suspect: bytes | None = None
        self._missing = False

    def _stat(self) -> tuple[Any, ...] | None:
        config = _stat(self._path)
        if config is None:
            return None
        return config, tuple(_stat(path) for path, _ in self._live.secret_files())

    def poll(self) -> None:
        """One look at the file (the watcher's loop calls it; tests call it directly)."""
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
