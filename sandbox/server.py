"""Builds and starts the sandbox application: every simulated provider under its own URL prefix on
one flat router, plus the admin API under `/_sim/`.

    OpenAI  base_url  http://HOST:PORT/openai  ->  /openai/v1/batches/{id}/cancel
    Azure   endpoint  http://HOST:PORT/azure   ->  /azure/openai/batches/{id}/cancel?api-version=V
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiohttp import web

from sandbox.admin import AdminAPI
from sandbox.anthropic import AnthropicSim
from sandbox.bedrock import BedrockSim
from sandbox.cohere import CohereSim
from sandbox.core import DEFAULT_CANCEL_DELAY_S, SIMULATOR_KEY, ProviderSim, Simulator
from sandbox.fireworks import FireworksSim
from sandbox.google import GeminiSim, VertexSim
from sandbox.groq import GroqSim
from sandbox.mistral import MistralSim
from sandbox.openai import AzureSim, OpenAISim
from sandbox.together import TogetherSim
from sandbox.xai import XAISim

# Every simulated provider. A new provider is one module plus one line here.
SIMULATORS: tuple[type[ProviderSim], ...] = (
    OpenAISim,
    AzureSim,
    AnthropicSim,
    BedrockSim,
    GeminiSim,
    VertexSim,
    MistralSim,
    GroqSim,
    TogetherSim,
    FireworksSim,
    XAISim,
    CohereSim,
)
# (provider simulator, URL prefix), kept for callers that mount them elsewhere.
PROVIDERS: tuple[tuple[type[ProviderSim], str], ...] = tuple((sim, sim.prefix) for sim in SIMULATORS)
DEFAULT_KEYS: Mapping[str, list[str]] = {sim.name: [sim.default_key] for sim in SIMULATORS}


# Sandbox mode's virtual key that may cancel by selector (CancelMatching); the gateway stays open
# for every other call, as before.
SANDBOX_OPERATOR_KEY = "sk-bf-sandbox-operator"


def gateway_config(sandbox_url: str) -> dict:
    """A batchgate config.json pointing every simulated provider at the sandbox at `sandbox_url`, with
    one virtual key (`SANDBOX_OPERATOR_KEY`) that may cancel by selector on all of them."""
    return {
        "client": {"allow_per_request_raw_override": True},
        "providers": {sim.name: sim.gateway_config(sandbox_url + sim.prefix, sim.default_key) for sim in SIMULATORS},
        "governance": {
            "virtual_keys": [
                {
                    "id": "sandbox-operator",
                    "value": SANDBOX_OPERATOR_KEY,
                    "allow_cancel_matching": True,
                    "provider_configs": [{"provider": sim.name} for sim in SIMULATORS],
                }
            ]
        },
    }


def build_app(
    *,
    keys: Mapping[str, Iterable[str]],
    auto_create: bool = False,
    azure_quirks: bool = False,
    cancel_delay_s: float = DEFAULT_CANCEL_DELAY_S,
) -> web.Application:
    """The sandbox app; its Simulator is `app[SIMULATOR_KEY]`. `keys[provider]` lists the keys that
    provider accepts; `cancel_delay_s` is how long a cancelled batch reads as `cancelling`."""
    sim = Simulator(keys=keys, auto_create=auto_create, azure_quirks=azure_quirks, cancel_delay_s=cancel_delay_s)
    app = web.Application()
    app[SIMULATOR_KEY] = sim
    for provider, prefix in PROVIDERS:
        app.router.add_routes(provider(sim, prefix).route_table())
    app.router.add_routes(AdminAPI(sim).route_table())
    return app


async def start(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Serves the app without access logging; returns the runner (call `cleanup()` to stop) and
    the bound port (useful with port 0)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]
