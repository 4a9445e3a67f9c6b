"""Fixtures shared by all test levels. The sandbox runs in-process on an ephemeral loopback port
(real HTTP); each test starts from a reset simulator."""

from __future__ import annotations

import secrets
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from sandbox import DEFAULT_KEYS, SIMULATOR_KEY, Simulator, build_app, start
from tests.support import SANDBOX_KEYS, running_service, sim_config


@dataclass
class Sandbox:
    sim: Simulator
    url: str


@pytest_asyncio.fixture(scope="session")
async def sandbox() -> Sandbox:
    app = build_app(keys={**DEFAULT_KEYS, **SANDBOX_KEYS})
    runner, port = await start(app)
    yield Sandbox(app[SIMULATOR_KEY], f"http://127.0.0.1:{port}")
    await runner.cleanup()


@pytest.fixture
def sim(sandbox: Sandbox) -> Simulator:
    sandbox.sim.reset()
    return sandbox.sim


@pytest.fixture
async def service(request: pytest.FixtureRequest, sandbox: Sandbox, sim: Simulator):
    """A gRPC stub of a running service configured with the test module's `SIM` simulator alone
    (its own config block, no retries). Modules that need another setup define their own."""
    async with running_service(sim_config(request.module.SIM, sandbox.url)) as (_, stub):
        yield stub


class RedisServer:
    """A real redis-server (Debian's package, installed by `make test`) on a free loopback port with
    its own directory and a password; `stop()` and `start()` again (same port) simulate an outage."""

    def __init__(self, directory: Path, password: str | None = None, tls: tuple[Path, Path] | None = None) -> None:
        from gateway.stack import free_port

        self.directory = directory
        self.tls = tls  # (certificate, key) PEM files: TLS only, the certificate is its own CA
        self.password = password if password is not None else f"redis-pw-{secrets.token_hex(12)}"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.tls:
            return f"rediss://:{self.password}@127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls[0]}"
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: `make test` installs it (apt-get install redis-server)")
        ports = ["--port", str(self.port)]
        if self.tls:
            cert, key = map(str, self.tls)
            ports = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                cert,
                "--tls-auth-clients",
                "no",
            ]
        self.proc = subprocess.Popen(
            [
                binary,
                *ports,
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                self.password,
                "--daemonize",
                "no",
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping():
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        pytest.fail(f"redis-server did not start: {(self.directory / 'redis.log').read_text(errors='replace')[-500:]}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                sock = raw
                if self.tls:
                    context = ssl.create_default_context(cafile=str(self.tls[0]))
                    sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
                sock.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                return b"+PONG" in _read_until(sock, b"PONG", 0.5)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _read_until(sock: socket.socket, marker: bytes, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data and b"-ERR" not in data and b"-WRONGPASS" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()
