"""service.runtime.live: swapping the running config, draining the old one, and noticing file changes.
The watcher is driven by calling `poll()` (what its loop does every interval), so nothing sleeps."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from service.config.governance import RateLimit
from service.config.reader import ConfigError
from service.domain.errors import Overloaded, Unauthenticated
from service.infra.limits import EmbeddedStore, RateLimiter
from service.infra.providers.catalog import parse_config
from service.runtime.build import Collaborators, RuntimeFactory
from service.runtime.live import ConfigSource, FileWatcher, LiveConfig, RunDir, describe_changes
from tests.support import OPENAI_KEYS, config_dict, documented_version

SIM = "http://127.0.0.1:9"  # nothing is sent: executors open their pools on first use
VK = "sk-bf-unit-live-team-a"


def document(**changes) -> dict:
    """A config with OpenAI and Azure, a rate-limited virtual key, then `changes` laid over it."""
    data = config_dict(SIM)
    data["governance"] = {
        "rate_limits": [{"id": "two", "request_max_limit": 2, "request_reset_duration": "1m"}],
        "virtual_keys": [
            {
                "id": "team-a",
                "value": "env.TEAM_A_VK",
                "rate_limit_id": "two",
                "provider_configs": [{"provider": "openai"}],
            }
        ],
    }
    data["client"] = {"enforce_auth_on_inference": True}
    for path, value in changes.items():
        node = data
        *parents, last = path.split("__")
        for name in parents:
            node = node[name]
        node[last] = value
    return data


def raw(data: dict) -> bytes:
    return json.dumps(data).encode()


ENV = {"TEAM_A_VK": VK}


def live_from(
    data: dict,
    *,
    check=None,
    restart_only=None,
    limiter: RateLimiter | None = None,
    clock=None,
    run_dir: RunDir | None = None,
) -> LiveConfig:
    """A LiveConfig of `data` as if loaded from config.json, with the given parts."""
    config = parse_config(data, ENV)
    factory = RuntimeFactory(limiter or RateLimiter.for_config(config.store), clock=clock or time.time)
    source = ConfigSource("config.json", env=dict(ENV), check=check, restart_only=restart_only)
    return LiveConfig(config, raw(data), source=source, factory=factory, run_dir=run_dir)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Closes:
    """Records which executors were closed."""

    def __init__(self, live: LiveConfig) -> None:
        self.closed: list = []
        for provider in live.current.canceller.providers.values():
            self.watch(provider.executor)

    def watch(self, executor) -> None:
        async def close() -> None:
            self.closed.append(executor)

        executor.close = close


async def _yield() -> None:
    await asyncio.sleep(0)


def provider(live: LiveConfig, name: str = "openai"):
    return live.current.canceller.providers[name]


def openai_executor(live: LiveConfig):
    return provider(live).executor


async def test_a_call_keeps_the_config_it_started_with_and_the_old_pool_closes_after_it() -> None:
    live = live_from(document())
    closes = Closes(live)
    old_openai = openai_executor(live)
    old_azure = provider(live, "azure").executor
    with live.current as started:
        assert live.apply(raw(document(providers__openai__network_config={"base_url": "http://127.0.0.1:8"})), "test")
        assert live.current is not started and started.retired
        assert started.canceller.config.providers["openai"].network.base_url == SIM + "/openai"
        assert live.current.canceller.config.providers["openai"].network.base_url == "http://127.0.0.1:8"
        for _ in range(3):
            await _yield()
        assert closes.closed == []  # the call is still running on the old pool
    for _ in range(3):
        await _yield()
    # Only the pool whose network settings changed is closed; Azure's was taken over as it was.
    assert closes.closed == [old_openai]
    assert provider(live, "azure").executor is old_azure
    assert openai_executor(live) is not old_openai


async def test_unchanged_providers_keep_breaker_state_adapter_and_admission() -> None:
    live = live_from(document())
    executor = openai_executor(live)
    for _ in range(executor.breaker.threshold):
        executor.breaker.record(False)
    assert executor.breaker.state == "open"
    adapter = provider(live).adapter
    admission = provider(live).admission
    assert live.apply(raw(document(client={"enforce_auth_on_inference": True, "allow_direct_keys": True})), "test")
    assert openai_executor(live) is executor and executor.breaker.state == "open"
    assert provider(live).adapter is adapter
    assert provider(live).admission is admission


async def test_a_rotated_key_is_used_by_the_next_call_but_the_pool_is_kept() -> None:
    live = live_from(document())
    executor = openai_executor(live)
    rotated = document(providers__openai__keys=[{"name": "main", "value": OPENAI_KEYS[1], "use_for_batch_api": True}])
    assert live.apply(raw(rotated), "test")
    adapter = provider(live).adapter
    assert [k.value for k in adapter.config.batch_keys] == [OPENAI_KEYS[1]]
    assert openai_executor(live) is executor


async def test_rate_limit_counts_carry_over_a_reload() -> None:
    live = live_from(document())
    headers = {"x-bf-vk": VK}
    for _ in range(2):
        auth = live.current.canceller.auth
        await auth.authorize(auth.authenticate(headers), "openai")
        assert live.apply(raw(document(client={"enforce_auth_on_inference": True, "allow_direct_keys": True})), "t")
    auth = live.current.canceller.auth
    with pytest.raises(Overloaded):
        await auth.authorize(auth.authenticate(headers), "openai")


async def test_the_limiter_is_created_once_per_process_and_given_to_each_runtime() -> None:
    limiter = RateLimiter(EmbeddedStore(":memory:"))
    live = live_from(document(), limiter=limiter)
    assert live.current.canceller.auth.limiter is limiter
    live.apply(raw(document(client={})), "test")
    assert live.current.canceller.auth.limiter is limiter
    await limiter.check("x", RateLimit("l", 1, 60))
    with pytest.raises(Overloaded):
        await live.current.canceller.auth.limiter.check("x", RateLimit("l", 1, 60))


def test_a_reload_keeps_the_cancellers_collaborators() -> None:
    """Parts given to the first canceller (here: fake executors and a stepped breaker clock) build
    the next config's canceller too; unchanged providers keep their executor."""
    built: list[str] = []

    class FakeExecutor:
        def __init__(self, name, provider_config, breaker):
            self.breaker = breaker
            built.append(name)

        async def send(self, request, deadline, record=None):
            raise AssertionError("no upstream call expected")

        async def close(self):
            pass

    parts = Collaborators(executor=FakeExecutor, clock=lambda: 5.0)
    data = document()
    config = parse_config(data, ENV)
    factory = RuntimeFactory.for_config(config, parts)
    live = LiveConfig(config, raw(data), source=ConfigSource("config.json", env=dict(ENV)), factory=factory)
    first = live.current.canceller
    assert sorted(built) == ["azure", "openai"]
    changed = document()
    changed["providers"]["azure"]["network_config"]["max_retries"] = 1
    assert live.apply(raw(changed), "test")
    second = live.current.canceller
    assert second is not first and live.factory.parts is parts
    assert sorted(built) == ["azure", "azure", "openai"]  # only the changed provider got a new one
    before, after = first.providers, second.providers
    assert after["openai"].executor is before["openai"].executor
    assert after["azure"].executor is not before["azure"].executor
    assert all(isinstance(p.executor, FakeExecutor) for p in after.values())


def test_a_revoked_virtual_key_is_refused_after_the_reload() -> None:
    live = live_from(document())
    live.current.canceller.auth.authenticate({"x-bf-vk": VK})
    revoked = document()
    revoked["governance"]["virtual_keys"][0]["is_active"] = False
    assert live.apply(raw(revoked), "test")
    with pytest.raises(Unauthenticated) as info:
        live.current.canceller.auth.authenticate({"x-bf-vk": VK})
    assert info.value.code == "virtual_key_not_found"


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"providers": ', "config.json: not valid JSON (line 1 column 15: Expecting value)"),
        (
            raw(document(providers__openai__network_config={"max_retries": -1})),
            "providers.openai.network_config.max_retries: must not be negative",
        ),
        (
            raw(document(providers__openai__keys=[{"value": "env.ROTATED_KEY", "use_for_batch_api": True}])),
            "providers.openai.keys[0].value: environment variable ROTATED_KEY is not set",
        ),
    ],
)
def test_an_invalid_config_changes_nothing_and_says_which_field(content: bytes, message: str, caplog) -> None:
    caplog.set_level(logging.INFO, logger="service.runtime.live")
    live = live_from(document())
    running = live.current
    failures = sample("batchgate_config_reloads_total", result="failure")
    assert not live.apply(content, "test")
    assert live.current is running and not running.retired
    assert [r.getMessage() for r in caplog.records] == [f"config reload failed: {message}"]
    assert sample("batchgate_config_reloads_total", result="failure") == failures + 1
    assert sample("batchgate_config_last_reload_successful") == 0
    assert live.state()["last_reload_successful"] is False
    # The next good config is taken as usual.
    assert live.apply(raw(document(client={})), "test")
    assert sample("batchgate_config_last_reload_successful") == 1
    assert live.state()["last_reload_successful"] is True


def test_env_values_are_read_again_on_each_reload(tmp_path: Path) -> None:
    env = dict(ENV)
    path = tmp_path / "config.json"
    path.write_bytes(raw(document()))
    live = LiveConfig.from_file(ConfigSource(path, env=env))
    env["TEAM_A_VK"] = "sk-bf-unit-live-rotated"
    assert live.reload()  # same bytes: a signal reloads anyway
    live.current.canceller.auth.authenticate({"x-bf-vk": "sk-bf-unit-live-rotated"})
    with pytest.raises(Unauthenticated):
        live.current.canceller.auth.authenticate({"x-bf-vk": VK})
    del env["TEAM_A_VK"]
    assert not live.reload()


def test_success_metrics_version_and_log_line(caplog) -> None:
    caplog.set_level(logging.INFO, logger="service.runtime.live")
    clock = iter([1000.0, 2000.0]).__next__
    live = live_from(document(), clock=clock)
    before = sample("batchgate_config_reloads_total", result="success")
    new = raw(document(client={}))
    assert live.apply(new, "SIGHUP")
    assert live.current.version == documented_version(new) and len(live.current.version) == 12
    assert sample("batchgate_config_reloads_total", result="success") == before + 1
    assert sample("batchgate_config_last_reload_success_timestamp_seconds") == 2000.0
    assert sample("batchgate_config_info", version=live.current.version) == 1
    (line,) = [r.getMessage() for r in caplog.records]
    was = documented_version(raw(document()))
    assert line == f"config reloaded (SIGHUP): version {documented_version(new)} (was {was}), changed: client"
    assert VK not in line


def test_a_reload_that_would_open_a_public_listener_is_refused(caplog) -> None:
    def exposure(config) -> str | None:
        return None if config.auth_required else "refusing to listen on 0.0.0.0: the gateway is open"

    live = live_from(document(), check=exposure)
    assert not live.apply(raw(document(client={})), "test")
    assert live.current.config.auth_required
    assert "config reload failed: refusing to listen on 0.0.0.0" in caplog.text


def test_restart_only_settings_are_named_when_they_changed(caplog) -> None:
    caplog.set_level(logging.INFO, logger="service.runtime.live")
    cert = {"digest": "a"}
    live = live_from(document(), restart_only={"TLS_CERT_FILE": lambda: cert["digest"]})
    live.apply(raw(document(client={})), "test")
    assert "cannot change at runtime" not in caplog.text
    cert["digest"] = "b"
    live.apply(raw(document()), "test")
    assert (
        "config reload: TLS_CERT_FILE changed but cannot change at runtime; the running value stays until a restart"
    ) in caplog.text


def test_a_reload_that_changes_the_rate_limit_store_says_it_needs_a_restart(caplog) -> None:
    caplog.set_level(logging.INFO, logger="service.runtime.live")
    live = live_from(document())
    limiter = live.limiter
    moved = document()
    moved["governance"]["store"] = {"type": "embedded", "on_error": "deny"}
    assert live.apply(raw(moved), "test")
    assert live.limiter is limiter and live.limiter.on_error == "allow"  # the running store stays
    assert "changed: governance" in caplog.text
    assert (
        "config reload: governance.store changed but cannot change at runtime; the running value stays until a restart"
    ) in caplog.text


async def test_a_reload_wakes_sleeping_waits_so_they_check_their_caller() -> None:
    live = live_from(document())
    waiting = live.current.canceller.waiting
    sleeper = asyncio.create_task(waiting._pause(3600))  # what a wait does between reads (real time)
    await _yield()
    assert live.apply(raw(document(client={"enforce_auth_on_inference": True, "bulk_concurrency": 4})), "test")
    await asyncio.wait_for(sleeper, 1)  # woken at once, not after an hour
    assert live.current.canceller.waiting is waiting  # shared by every config of the process


def test_describe_changes_names_parts_never_values() -> None:
    old = parse_config(document(), ENV)
    new = parse_config(document(providers__openai__send_back_raw_response=True, auth_config={}), ENV)
    assert describe_changes(old, new) == ["providers.openai"]
    gone = dict(document())
    gone["providers"] = {"openai": gone["providers"]["openai"]}
    assert describe_changes(old, parse_config(gone, ENV)) == ["providers.azure"]
    assert describe_changes(old, parse_config(document(governance={}, client={}), ENV)) == ["governance", "client"]


# --- the run directory behind /health ---------------------------------------------------------


def test_workers_publish_their_version_and_dead_ones_are_skipped(tmp_path: Path) -> None:
    first = live_from(document(), run_dir=RunDir(tmp_path, 0))
    second = live_from(document(client={}), run_dir=RunDir(tmp_path, 1))
    (tmp_path / "worker-7.json").write_text(json.dumps({"worker": 7, "version": "x", "pid": 2**22 + 12345}))
    (tmp_path / "worker-8.json").write_text("{not json")
    states = first.workers()
    assert [s["worker"] for s in states] == [0, 1]
    assert states[1]["version"] == second.current.version != states[0]["version"]
    assert second.apply(raw(document()), "test")
    assert {s["version"] for s in first.workers()} == {first.current.version}
    assert "pid" not in states[0]


def test_without_a_run_directory_a_worker_reports_itself() -> None:
    live = live_from(document())
    assert live.workers() == [live.state()]


# --- the file watcher ----------------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_bytes(raw(document()))
    return path


def watched(path: Path) -> tuple[LiveConfig, FileWatcher]:
    live = LiveConfig.from_file(ConfigSource(path, env=dict(ENV)))
    return live, FileWatcher(live)


def atomic_write(path: Path, content: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def test_nothing_happens_while_the_file_does_not_change(config_file: Path) -> None:
    live, watcher = watched(config_file)
    running = live.current
    watcher.poll()
    os.utime(config_file)  # touched, same bytes
    watcher.poll()
    assert live.current is running


def test_an_atomic_rename_over_the_file_is_picked_up(config_file: Path) -> None:
    live, watcher = watched(config_file)
    atomic_write(config_file, raw(document(client={})))
    watcher.poll()
    assert not live.current.config.auth_required


def test_an_in_place_rewrite_is_picked_up(config_file: Path) -> None:
    live, watcher = watched(config_file)
    config_file.write_bytes(raw(document(client={"enforce_auth_on_inference": False})))
    watcher.poll()
    assert not live.current.config.auth_required


def test_a_kubernetes_style_symlink_swap_is_picked_up(tmp_path: Path) -> None:
    # What the kubelet does for a mounted ConfigMap/Secret: config.json -> ..data/config.json,
    # ..data -> ..<timestamp>/, and an update swaps ..data to a new directory atomically.
    mount = tmp_path / "mount"
    first = mount / "..2026_11_28_08_00_00.1"
    first.mkdir(parents=True)
    (first / "config.json").write_bytes(raw(document()))
    (mount / "..data").symlink_to(first.name)
    (mount / "config.json").symlink_to("..data/config.json")
    live, watcher = watched(mount / "config.json")
    second = mount / "..2026_11_28_08_01_00.2"
    second.mkdir()
    (second / "config.json").write_bytes(raw(document(client={})))
    (mount / "..data_tmp").symlink_to(second.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    watcher.poll()
    assert not live.current.config.auth_required
    assert live.current.version == documented_version(raw(document(client={})))


def test_a_half_written_file_is_not_reported_if_the_write_completes(config_file: Path, caplog) -> None:
    live, watcher = watched(config_file)
    failures = sample("batchgate_config_reloads_total", result="failure")
    whole = raw(document(client={}))
    config_file.write_bytes(whole[: len(whole) // 2])
    watcher.poll()  # seen mid-write
    assert "config reload failed" not in caplog.text
    config_file.write_bytes(whole)
    watcher.poll()
    assert not live.current.config.auth_required
    assert sample("batchgate_config_reloads_total", result="failure") == failures
    assert live.last_reload_successful


def test_a_broken_file_is_reported_once_it_stays_and_the_next_good_one_is_taken(config_file: Path, caplog) -> None:
    live, watcher = watched(config_file)
    running = live.current
    failures = sample("batchgate_config_reloads_total", result="failure")
    config_file.write_bytes(raw(document(providers__openai__network_config={"max_retries": "two"})))
    watcher.poll()
    watcher.poll()  # unchanged for an interval: now it counts
    watcher.poll()  # and only once
    assert live.current is running
    assert (
        caplog.text.count("config reload failed: providers.openai.network_config.max_retries: expected an integer") == 1
    )
    assert sample("batchgate_config_reloads_total", result="failure") == failures + 1
    atomic_write(config_file, raw(document(client={})))
    watcher.poll()
    assert live.current is not running and live.last_reload_successful


def test_a_missing_file_keeps_the_running_config(config_file: Path, caplog) -> None:
    live, watcher = watched(config_file)
    running = live.current
    config_file.unlink()
    watcher.poll()
    watcher.poll()
    assert live.current is running
    assert caplog.text.count("cannot be read (it is gone); the running config stays") == 1
    config_file.write_bytes(raw(document(client={})))
    watcher.poll()
    assert live.current is not running


def test_a_signal_reload_is_not_repeated_by_the_watcher(config_file: Path) -> None:
    live, watcher = watched(config_file)
    atomic_write(config_file, raw(document(client={})))
    assert live.reload()
    reloaded = live.current
    watcher.poll()
    assert live.current is reloaded


def test_from_file_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        LiveConfig.from_file(ConfigSource(tmp_path / "absent.json"))


def test_putting_back_the_running_file_after_a_failure_clears_the_failure(config_file: Path) -> None:
    live, watcher = watched(config_file)
    good = config_file.read_bytes()
    running = live.current
    atomic_write(config_file, b"{broken")
    watcher.poll()
    watcher.poll()
    assert not live.last_reload_successful
    atomic_write(config_file, good)
    watcher.poll()
    assert live.last_reload_successful and live.current.version == running.version


def test_a_change_between_loading_and_watching_is_not_missed(config_file: Path) -> None:
    live = LiveConfig.from_file(ConfigSource(config_file, env=dict(ENV)))
    atomic_write(config_file, raw(document(client={})))
    watcher = FileWatcher(live)
    watcher.poll()
    assert not live.current.config.auth_required


def test_an_unexpected_error_while_loading_is_a_failed_reload_not_a_crash(caplog) -> None:
    live = live_from(document())
    running = live.current
    deep = b"[" * 100_000 + b"]" * 100_000  # json.loads gives up with RecursionError
    assert not live.apply(deep, "test")
    assert live.current is running
    assert "config reload failed: config[0][0][0]" in caplog.text and "nested more than 32 levels deep" in caplog.text


def test_an_unreadable_file_is_reported_once_and_the_running_config_stays(config_file: Path, caplog) -> None:
    live, watcher = watched(config_file)
    running = live.current
    config_file.unlink()
    config_file.mkdir()  # something that stats but cannot be read as a file
    watcher.poll()
    watcher.poll()
    assert live.current is running
    assert caplog.text.count("cannot be read (Is a directory); the running config stays") == 1
    config_file.rmdir()
    config_file.write_bytes(raw(document(client={})))
    watcher.poll()
    assert live.current is not running


def test_the_readme_quotes_a_failed_reload_as_the_log_says_it(caplog) -> None:
    import re

    from gateway.paths import ROOT

    readme = (ROOT / "README.md").read_text()
    quoted = re.search(r"`(config reload failed: providers\.openai\.network_config\.max_retries: [^`]*)`", readme)
    live = live_from(document())
    assert not live.apply(raw(document(providers__openai__network_config={"max_retries": "two"})), "test")
    assert quoted is not None and quoted.group(1) in caplog.messages
