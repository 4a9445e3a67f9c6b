"""Live configuration end to end (issue 13): a real gateway (two service workers behind Envoy) whose
config.json changes while it runs, against its own sandbox (which accepts a second OpenAI key, so
a rotation can be followed in its call record).

The config lives in a directory laid out like a Kubernetes ConfigMap/Secret volume (`config.json ->
..data/config.json`, `..data -> ..<version>/`), and every change is made the way the kubelet makes
it: a new version directory, then an atomic swap of the `..data` symlink. (Atomic renames and
in-place writes of a plain file are covered by tests/unit/test_live.py.)

Measured here and printed (`pytest -s`): the time from a file write to a revoked virtual key being
refused by each worker, and the calls made (and failed: none) under load while the config reloads.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

from gateway.paths import ROOT
from gateway.stack import Stack, free_port, free_ports
from sandbox.openai import OpenAISim
from sandbox.server import DEFAULT_KEYS, gateway_config
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.gen.batchgate.v1 import batchgate_pb2_grpc as pb_grpc
from tests.e2e.conftest import SimAdmin
from tests.e2e.test_launcher import launcher_env, read_until_curl_line, spawn_launcher
from tests.support import documented_version

VK_LOAD = f"sk-bf-reload-load-{secrets.token_hex(8)}"
VK_REVOKED = f"sk-bf-reload-revoked-{secrets.token_hex(8)}"
OPENAI_KEY = OpenAISim.default_key
ROTATED_KEY = f"sk-rotated-openai-{secrets.token_hex(8)}"
REVOCATION_LIMIT_S = 3.0
LOAD_CONCURRENCY = 16
RELOADS = 10
LOAD_MAX_S = 60.0  # the bound on the load should the reloads stall
MAX_CALLS = 50_000
SLOW_MS = 1000
SLOW_CALLS = 8  # half the clients: the others keep the load going meanwhile


def config_for(
    sandbox_url: str, *, revoked: bool = False, openai_key: str = OPENAI_KEY, timeout: float = 30, broken: bool = False
) -> dict:
    """Every simulated provider, auth enforced, a virtual key for the load and one to revoke."""
    config = gateway_config(sandbox_url)
    config["client"]["enforce_auth_on_inference"] = True
    openai = config["providers"]["openai"]
    openai["keys"][0]["value"] = openai_key
    openai["network_config"]["default_request_timeout_in_seconds"] = timeout
    openai["network_config"]["max_retries"] = 0  # a call cut off by a reload would fail, not be retried
    if broken:
        openai["network_config"]["max_retries"] = "two"
    every = [{"provider": name} for name in config["providers"]]
    config["governance"] = {
        "virtual_keys": [
            {"id": "load", "value": VK_LOAD, "provider_configs": every},
            {"id": "to-revoke", "value": VK_REVOKED, "is_active": not revoked, "provider_configs": every},
        ]
    }
    return config


def encode(config: dict) -> bytes:
    return json.dumps(config, indent=2).encode()


class Mount:
    """A directory as the kubelet lays out a mounted ConfigMap or Secret, updated as it does."""

    def __init__(self, root: Path, name: str = "config.json") -> None:
        self.root, self.name, self.versions = root, name, itertools.count()
        self.path = root / name
        root.mkdir(parents=True)
        self.current: Path | None = None

    def write(self, content: bytes) -> None:
        version = self.root / f"..2026_11_28_{next(self.versions):06d}"
        version.mkdir()
        (version / self.name).write_bytes(content)
        staged = self.root / "..data_tmp"
        staged.symlink_to(version.name)
        os.replace(staged, self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to(f"..data/{self.name}")
        if self.current is not None:
            shutil.rmtree(self.current)  # the kubelet removes the old version after the swap
        self.current = version


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Our own sandbox: the default keys, plus the rotated OpenAI key."""
    keys_file = tmp_path_factory.mktemp("reload-sandbox") / "keys.json"
    keys_file.write_text(json.dumps({**DEFAULT_KEYS, "openai": [OPENAI_KEY, ROTATED_KEY]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", "0", "--auto-create", "--keys-file", str(keys_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        line = proc.stdout.readline().decode().strip()
        assert line.startswith("SANDBOX_PORT="), line
        yield f"http://127.0.0.1:{line.split('=', 1)[1]}"
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


@pytest.fixture(scope="module")
def mount(tmp_path_factory: pytest.TempPathFactory, sandbox: str) -> Mount:
    mount = Mount(tmp_path_factory.mktemp("reload") / "etc-batchgate")
    mount.write(encode(config_for(sandbox)))
    return mount


@pytest.fixture(scope="module")
def gateway(mount: Mount, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        config=mount.path,
        http_port=free_port(),
        grpc_port=free_port(),
        admin_port=free_port(),
        workers=2,
        metrics_port=free_ports(2),
        log_dir=tmp_path_factory.mktemp("reload-logs"),
        env={"DRAIN_DELAY_SECONDS": "0"},
    )
    stack.start(timeout=30)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def restore(gateway: Stack, mount: Mount, sandbox: str) -> Iterator[None]:
    """Puts the initial config back after the test, and waits until every worker runs it."""
    yield
    content = encode(config_for(sandbox))
    mount.write(content)
    wait_for_version(gateway, documented_version(content))


def health(stack: Stack) -> dict:
    resp = requests.get(f"{stack.http_url}/health", timeout=5)
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait_for_version(stack: Stack, version: str, timeout: float = 5.0) -> float:
    """Seconds until /health shows every worker running `version`."""
    started = time.monotonic()
    while True:
        workers = health(stack)["workers"]
        if len(workers) == stack.workers and {w["version"] for w in workers} == {version}:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, workers
        time.sleep(0.05)


def scrape(port: int) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in text.splitlines() if line and not line.startswith("#"))
    }


def worker_metric(stack: Stack, name: str) -> list[float]:
    return [scrape(stack.metrics_port + i).get(name, 0.0) for i in range(stack.workers)]


def increase(after: list[float], before: list[float]) -> list[float]:
    return [a - b for a, b in zip(after, before, strict=True)]


SUCCESSES = 'batchgate_config_reloads_total{result="success"}'
FAILURES = 'batchgate_config_reloads_total{result="failure"}'


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def native(stack: Stack, session: requests.Session, vk: str, batch_id: str | None = None) -> requests.Response:
    batch_id = batch_id or f"b{uuid.uuid4().hex[:12]}"
    return session.post(
        f"{stack.http_url}/v1/batches/{batch_id}/cancel?provider=openai", headers={"x-bf-vk": vk}, timeout=10
    )


def grpc_code(target: str, vk: str) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        try:
            pb_grpc.BatchServiceStub(channel).Cancel(
                pb.CancelBatchRequest(batch_id=f"b{uuid.uuid4().hex[:12]}", provider="openai"),
                metadata=(("x-bf-vk", vk),),
                timeout=5,
            )
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


# --- zero failed calls while the config reloads ten times ---------------------------------------


def test_ten_reloads_under_load_fail_no_call(gateway: Stack, mount: Mount, sandbox: str, restore: None) -> None:
    """c=16 (12 REST clients through Envoy, 4 gRPC clients on the service port) while the config
    changes five times by file (each change gives OpenAI a new timeout, so its connection pool is
    replaced under load) and is reloaded five times by SIGHUP. Before each file change the
    simulator is told to hold the next 8 calls for a second: they are in flight on the old pool
    when it is replaced, and without retries they would fail if it were closed under them."""
    sim = SimAdmin(sandbox)
    before = worker_metric(gateway, SUCCESSES)
    failures_before = worker_metric(gateway, FAILURES)
    numbers = itertools.count()
    results: list[tuple[str, Any]] = []
    lock = threading.Lock()
    done = threading.Event()

    def rest_client() -> None:
        with requests.Session() as session:
            while not done.is_set() and next(numbers) < MAX_CALLS:
                try:
                    resp = native(gateway, session, VK_LOAD)
                    outcome = resp.status_code if resp.status_code != 200 else "ok"
                except requests.RequestException as exc:
                    outcome = repr(exc)
                with lock:
                    results.append(("rest", outcome))

    def grpc_client() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
            stub = pb_grpc.BatchServiceStub(channel)
            while not done.is_set() and next(numbers) < MAX_CALLS:
                try:
                    stub.Cancel(
                        pb.CancelBatchRequest(batch_id=f"b{uuid.uuid4().hex[:12]}", provider="openai"),
                        metadata=(("x-bf-vk", VK_LOAD),),
                        timeout=10,
                    )
                    outcome = "ok"
                except grpc.RpcError as err:
                    outcome = err.code().name
                with lock:
                    results.append(("grpc", outcome))

    started = time.monotonic()
    with ThreadPoolExecutor(LOAD_CONCURRENCY) as pool:
        clients = [pool.submit(rest_client) for _ in range(12)] + [pool.submit(grpc_client) for _ in range(4)]
        try:
            wait_for(lambda: len(results) >= 200, 30, "the load did not get going")
            for i in range(RELOADS):
                if i % 2 == 0:  # a file change: a new version on every worker
                    sim.add_faults("openai", {"latency_ms": SLOW_MS, "count": SLOW_CALLS})
                    time.sleep(0.1)
                    content = encode(config_for(sandbox, timeout=20 + i))
                    mount.write(content)
                    wait_for_version(gateway, documented_version(content))
                else:  # SIGHUP, as `make run` passes it on: the same file, read again
                    gateway.reload()
                    reloaded = [i + 1] * 2
                    wait_for(
                        lambda want=reloaded: increase(worker_metric(gateway, SUCCESSES), before) == want,
                        5,
                        "SIGHUP reload",
                    )
                time.sleep(0.2)  # calls in flight across the swap, on both sides of it
            assert time.monotonic() - started < LOAD_MAX_S
        finally:
            done.set()
            for client in clients:
                client.result(timeout=30)
    elapsed = time.monotonic() - started
    failed = [r for r in results if r[1] != "ok"]
    print(
        f"\nunder reload: {len(results)} calls in {elapsed:.1f} s at c={LOAD_CONCURRENCY}, {RELOADS} reloads, "
        f"{len(failed)} failed"
    )
    assert failed == []
    assert len(results) >= 500
    # Each worker reloaded exactly ten times (five file changes, five signals), and none failed.
    assert increase(worker_metric(gateway, SUCCESSES), before) == [RELOADS] * 2
    assert worker_metric(gateway, FAILURES) == failures_before
    assert worker_metric(gateway, "batchgate_config_last_reload_successful") == [1.0, 1.0]


# --- a revoked virtual key ----------------------------------------------------------------------

ROUTES = {
    "native": ("/v1/batches/{id}/cancel?provider=openai", {"x-bf-vk": "{vk}"}),
    "openai sdk": ("/openai/v1/batches/{id}/cancel", {"Authorization": "Bearer {vk}"}),
    "anthropic sdk": ("/anthropic/v1/messages/batches/{id}/cancel", {"x-api-key": "{vk}"}),
    "genai sdk": ("/genai/v1beta/batches/{id}:cancel", {"x-goog-api-key": "{vk}"}),
    "bedrock sdk": ("/bedrock/model-invocation-job/{id}/stop", {"x-bf-vk": "{vk}"}),
}


def route_status(stack: Stack, route: str, vk: str) -> int:
    path, headers = ROUTES[route]
    resp = requests.post(
        stack.http_url + path.format(id=f"b{uuid.uuid4().hex[:12]}"),
        headers={k: v.format(vk=vk) for k, v in headers.items()},
        timeout=10,
    )
    return resp.status_code


def test_a_revoked_key_is_refused_on_both_workers_and_every_route_within_3_s(
    gateway: Stack, mount: Mount, sandbox: str, restore: None
) -> None:
    workers = gateway.worker_targets
    assert [grpc_code(target, VK_REVOKED) for target in workers] == [grpc.StatusCode.OK] * 2
    assert {route: route_status(gateway, route, VK_REVOKED) for route in ROUTES} == dict.fromkeys(ROUTES, 200)

    written = time.monotonic()
    mount.write(encode(config_for(sandbox, revoked=True)))
    refused_after: dict[str, float] = {}
    while len(refused_after) < len(workers):
        for target in workers:
            if target not in refused_after and grpc_code(target, VK_REVOKED) == grpc.StatusCode.UNAUTHENTICATED:
                refused_after[target] = time.monotonic() - written
        assert time.monotonic() - written < 10, refused_after
        time.sleep(0.02)

    delays = [refused_after[target] for target in workers]
    print(f"\nrevocation: refused by worker 0 after {delays[0]:.2f} s, worker 1 after {delays[1]:.2f} s")
    assert max(delays) <= REVOCATION_LIMIT_S
    # Every route, through Envoy (whichever worker answers), and gRPC through Envoy too.
    assert {route: route_status(gateway, route, VK_REVOKED) for route in ROUTES} == dict.fromkeys(ROUTES, 401)
    assert grpc_code(f"127.0.0.1:{gateway.http_port}", VK_REVOKED) == grpc.StatusCode.UNAUTHENTICATED
    assert grpc_code(f"127.0.0.1:{gateway.http_port}", VK_LOAD) == grpc.StatusCode.OK


# --- a rotated provider key ---------------------------------------------------------------------


def test_a_rotated_provider_key_is_sent_by_the_next_call(
    gateway: Stack, mount: Mount, sandbox: str, restore: None
) -> None:
    sim = SimAdmin(sandbox)
    session = requests.Session()
    before = [f"b{uuid.uuid4().hex[:12]}" for _ in range(4)]
    after = [f"b{uuid.uuid4().hex[:12]}" for _ in range(4)]
    assert all(native(gateway, session, VK_LOAD, batch_id).status_code == 200 for batch_id in before)

    content = encode(config_for(sandbox, openai_key=ROTATED_KEY))
    mount.write(content)
    gateway.reload()  # and SIGHUP: whichever comes first, the other finds nothing new
    wait_for_version(gateway, documented_version(content))
    assert all(native(gateway, session, VK_LOAD, batch_id).status_code == 200 for batch_id in after)

    def carried(batch_id: str) -> list[str]:
        return [call["headers"]["Authorization"] for call in sim.calls("openai", batch_id=batch_id)]

    assert [carried(b) for b in before] == [[f"Bearer {OPENAI_KEY}"]] * 4
    assert [carried(b) for b in after] == [[f"Bearer {ROTATED_KEY}"]] * 4


def test_a_provider_key_in_a_secret_file_rotates_without_a_config_change_or_a_signal(
    gateway: Stack, mount: Mount, sandbox: str, restore: None, tmp_path: Path
) -> None:
    """`"value": "file./.../openai-key"` on a Secret volume: the kubelet's `..data` swap, then an in-place
    write, each reach both workers' next calls (issue 23: `env.VAR` cannot change in a running pod)."""
    sim = SimAdmin(sandbox)
    session = requests.Session()
    secret = Mount(tmp_path / "secret-volume", "openai-key")
    secret.write(f"{OPENAI_KEY}\n".encode())
    content = encode(config_for(sandbox, openai_key=f"file.{secret.path}"))
    mount.write(content)
    wait_for_version(gateway, documented_version(content))

    def sent_by_both_workers(key: str) -> bool:
        batch_ids = [f"b{uuid.uuid4().hex[:12]}" for _ in range(6)]  # Envoy spreads them over both workers
        assert all(native(gateway, session, VK_LOAD, batch_id).status_code == 200 for batch_id in batch_ids)
        sent = {call["headers"]["Authorization"] for b in batch_ids for call in sim.calls("openai", batch_id=b)}
        return sent == {f"Bearer {key}"}

    assert sent_by_both_workers(OPENAI_KEY)
    secret.write(f"{ROTATED_KEY}\n".encode())  # the kubelet's swap; the config file is untouched
    wait_for(lambda: sent_by_both_workers(ROTATED_KEY), REVOCATION_LIMIT_S, "the rotated key sent")
    secret.path.write_text(OPENAI_KEY)  # in place
    wait_for(lambda: sent_by_both_workers(OPENAI_KEY), REVOCATION_LIMIT_S, "the key written in place sent")
    assert OPENAI_KEY not in (gateway.log_dir / "service.log").read_text()


# --- a broken file ------------------------------------------------------------------------------


def test_a_broken_file_changes_nothing_and_the_log_names_the_field(
    gateway: Stack, mount: Mount, sandbox: str, restore: None
) -> None:
    running = {w["version"] for w in health(gateway)["workers"]}
    failures = worker_metric(gateway, FAILURES)
    log = gateway.log_dir / "service.log"
    expected = "config reload failed: providers.openai.network_config.max_retries: expected an integer, got str"
    seen = log.read_text().count(expected)

    mount.write(encode(config_for(sandbox, broken=True)))
    wait_for(lambda: log.read_text().count(expected) == seen + 2, 5, "one failure line per worker")

    workers = health(gateway)["workers"]
    assert {w["version"] for w in workers} == running
    assert [w["last_reload_successful"] for w in workers] == [False, False]
    assert increase(worker_metric(gateway, FAILURES), failures) == [1, 1]
    assert worker_metric(gateway, "batchgate_config_last_reload_successful") == [0.0, 0.0]
    # The old config still serves, on both workers.
    assert [grpc_code(target, VK_LOAD) for target in gateway.worker_targets] == [grpc.StatusCode.OK] * 2
    lines = [json.loads(line) for line in log.read_text().splitlines() if expected in line]
    assert {line["level"] for line in lines} == {"error"} and all(line["msg"] == expected for line in lines)


# --- /health across workers -----------------------------------------------------------------------


def test_health_shows_every_workers_version_and_load_time(
    gateway: Stack, mount: Mount, sandbox: str, restore: None
) -> None:
    content = encode(config_for(sandbox, timeout=29))
    written = time.time()
    mount.write(content)
    took = wait_for_version(gateway, documented_version(content))
    body = health(gateway)
    assert took < 2.0  # noticed without a signal
    assert [w["worker"] for w in body["workers"]] == [0, 1]
    for state in (body["config"], *body["workers"]):
        assert state["version"] == documented_version(content)
        assert int(written) <= state["loaded_at"] <= time.time() + 1
        assert state["last_reload_successful"] is True
    assert VK_LOAD not in json.dumps(body) and OPENAI_KEY not in json.dumps(body)


# --- SIGHUP to the launcher ------------------------------------------------------------------------


def test_sighup_to_the_launcher_reloads_every_worker(tmp_path: Path, sandbox: str) -> None:
    """`make run` as users run it: SIGHUP to that one process reaches both workers."""
    path = tmp_path / "config.json"
    path.write_bytes(encode(config_for(sandbox)))
    metrics = free_ports(2)
    env = launcher_env(CONFIG=str(path), METRICS_PORT=str(metrics), DRAIN_DELAY_SECONDS="0")
    stderr_path = tmp_path / "stderr.log"
    proc = spawn_launcher(env, stderr_path)
    try:
        try:
            read_until_curl_line(proc)
        except AssertionError as exc:
            raise AssertionError(stderr_path.read_text()[-3000:]) from exc
        ports = [metrics, metrics + 1]
        assert [scrape(port)[SUCCESSES] for port in ports] == [0, 0]
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: [scrape(port)[SUCCESSES] for port in ports] == [1, 1], 5, "both workers reloaded")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_the_launcher_follows_a_kubernetes_style_swap_of_a_symlinked_config(tmp_path: Path, sandbox: str) -> None:
    """`make run` with CONFIG a symlink (`config.json -> ..data/config.json`): after the kubelet's
    swap of `..data` and the removal of the old version directory, the new file is the one that
    runs (issue 23: the launcher used to hand the workers the symlink's old target)."""
    mount = Mount(tmp_path / "etc-batchgate")
    mount.write(encode(config_for(sandbox)))
    env = launcher_env(CONFIG=str(mount.path), WORKERS="1", DRAIN_DELAY_SECONDS="0")
    stderr_path = tmp_path / "stderr.log"
    proc = spawn_launcher(env, stderr_path)
    try:
        try:
            _, lines = read_until_curl_line(proc)
        except AssertionError as exc:
            raise AssertionError(stderr_path.read_text()[-3000:]) from exc
        assert any(f"config {mount.path}" in line for line in lines), lines  # the path as given
        url = f"http://127.0.0.1:{env['HTTP_PORT']}/v1/batches/b{uuid.uuid4().hex[:12]}/cancel?provider=openai"
        with requests.Session() as session:
            assert session.post(url, headers={"x-bf-vk": VK_REVOKED}, timeout=10).status_code == 200

            mount.write(encode(config_for(sandbox, revoked=True)))  # swaps ..data, removes the old version

            def refused() -> bool:
                return session.post(url, headers={"x-bf-vk": VK_REVOKED}, timeout=10).status_code == 401

            wait_for(refused, REVOCATION_LIMIT_S, "the revoked key refused after the swap")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert "cannot be read" not in stderr_path.read_text()
