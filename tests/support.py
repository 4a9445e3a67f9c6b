"""Shared test helpers: configs pointing at the sandbox, and a running service over real gRPC."""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator

import grpc

from service.config import Config, parse_config
from service.gen.batchgate.v1 import batchgate_pb2_grpc
from service.server import App, create_server

OPENAI_KEYS = ("sk-test-openai-aaaaaaaa1111", "sk-test-openai-bbbbbbbb2222")
AZURE_KEY = "az-test-key-cccccccc3333"
SANDBOX_KEYS = {"openai": list(OPENAI_KEYS), "azure": [AZURE_KEY]}


def config_dict(sandbox_url: str, **client: Any) -> dict:
    """A config with one valid OpenAI key and one Azure key, both pointed at the sandbox."""
    return {
        "client": client,
        "providers": {
            "openai": {
                "keys": [{"name": "main", "value": OPENAI_KEYS[0], "use_for_batch_api": True}],
                "network_config": {"base_url": f"{sandbox_url}/openai", "max_retries": 0},
            },
            "azure": {
                "keys": [
                    {
                        "name": "main",
                        "value": AZURE_KEY,
                        "use_for_batch_api": True,
                        "azure_key_config": {"endpoint": f"{sandbox_url}/azure"},
                    }
                ],
                "network_config": {"max_retries": 0},
            },
        },
    }


@contextlib.asynccontextmanager
async def running_service(config: Config | dict) -> AsyncIterator[tuple[App, batchgate_pb2_grpc.BatchServiceStub]]:
    """A real grpc.aio server on an ephemeral loopback port and a stub talking to it."""
    if isinstance(config, dict):
        config = parse_config(config, env={})
    app = await create_server(config, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        yield app, batchgate_pb2_grpc.BatchServiceStub(channel)
    finally:
        await channel.close()
        await app.stop(grace=0)
