"""Fixtures shared by all test levels. The sandbox runs in-process on an ephemeral loopback port
(real HTTP); each test starts from a reset simulator."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import pytest_asyncio

from sandbox import DEFAULT_KEYS, SIMULATOR_KEY, Simulator, build_app, start
from tests.support import SANDBOX_KEYS


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
