"""A simulator of LLM providers' batch-cancel APIs, for tests, benchmarks and a no-account demo.

`build_app(keys=...)` returns an aiohttp application serving each simulated provider under its own
prefix (`/openai`, `/azure`) plus an admin API under `/_sim/`; `start(app)` serves it. Tests in the
same process drive it through `app[SIMULATOR_KEY]`, a `Simulator`.
"""

from sandbox.core import (
    SIMULATOR_KEY,
    BatchStore,
    Fault,
    NotCancellable,
    ProviderSim,
    SimBatch,
    Simulator,
)
from sandbox.openai import AzureSim, OpenAISim
from sandbox.server import DEFAULT_KEYS, PROVIDERS, build_app, start

__all__ = [
    "DEFAULT_KEYS",
    "PROVIDERS",
    "SIMULATOR_KEY",
    "AzureSim",
    "BatchStore",
    "Fault",
    "NotCancellable",
    "OpenAISim",
    "ProviderSim",
    "SimBatch",
    "Simulator",
    "build_app",
    "start",
]
