"""Every provider batchgate knows: the ones it can cancel on (one adapter class each) and the ones a
config may name but that cannot cancel (with why). Adding a provider is one line here (see
README.md in this directory); the contract tests and the sandbox check pick it up from this list.

This is the top of the providers layer: nothing in `service/infra/providers/` imports it. It also binds
config loading to these providers (config itself names none): `parse_config`, `parse_config_bytes`
and `load_config` here are `service.config.file`'s with every provider's key schema passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.config import file as config
from service.config.file import PLAIN_KEYS, Config, KeySchema
from service.infra.providers.anthropic import AnthropicAdapter
from service.infra.providers.base import Adapter
from service.infra.providers.bedrock import BedrockAdapter
from service.infra.providers.cohere import CohereAdapter
from service.infra.providers.gemini import GeminiAdapter
from service.infra.providers.groq import GroqAdapter
from service.infra.providers.mistral import MistralAdapter
from service.infra.providers.openai import AzureOpenAIAdapter, OpenAIAdapter
from service.infra.providers.together import TogetherAdapter
from service.infra.providers.vertex import VertexAdapter
from service.infra.providers.xai import XAIAdapter

# Providers batchgate can cancel batches on.
ADAPTER_CLASSES: tuple[type[Adapter], ...] = (
    OpenAIAdapter,
    AzureOpenAIAdapter,
    AnthropicAdapter,
    BedrockAdapter,
    GeminiAdapter,
    VertexAdapter,
    MistralAdapter,
    GroqAdapter,
    TogetherAdapter,
    XAIAdapter,
    CohereAdapter,
)

# Providers a config may name but batchgate cannot cancel batches on (a cancel there answers 400
# `unsupported_operation`), with the reason when there is more to say than "not supported".
CANNOT_CANCEL: Mapping[str, str | None] = {
    # fireworks-ai SDK (resources/batch_inference_jobs.py) and Fireworks' API reference: LLM batch
    # inference jobs have create, list, get and delete only. `batchJobs/{id}:cancel` exists, but a
    # batch job is a node-pool compute job, not an LLM batch: calling it could stop something else.
    "fireworks": (
        "batch cancel is not supported by provider: fireworks (Fireworks documents no cancel for LLM batch "
        "inference jobs, only create, get, list and delete; its batchJobs cancel is for compute jobs, not "
        "LLM batches)"
    ),
    "openrouter": None,
    "ollama": None,
    "cerebras": None,
    "perplexity": None,
    "sgl": None,
    "parasail": None,
    "elevenlabs": None,
    "huggingface": None,
    "nebius": None,
}

ADAPTERS: Mapping[str, type[Adapter]] = {cls.name: cls for cls in ADAPTER_CLASSES}
NO_BATCH_CANCEL = frozenset(CANNOT_CANCEL)
KNOWN_PROVIDERS = frozenset(ADAPTERS) | NO_BATCH_CANCEL
UNSUPPORTED_REASONS: Mapping[str, str] = {name: reason for name, reason in CANNOT_CANCEL.items() if reason}
# How config reads each known provider's keys: an adapter's own schema, else a plain secret value.
KEY_SCHEMAS: Mapping[str, KeySchema] = {**{name: PLAIN_KEYS for name in CANNOT_CANCEL}, **ADAPTERS}


def parse_config(data: Any, env: Mapping[str, str] | None = None, **options: Any) -> Config:
    """`service.config.file.parse_config` for the providers of this catalog (`env`: os.environ if None)."""
    return config.parse_config(data, env, KEY_SCHEMAS, **options)


def parse_config_bytes(raw: bytes, path: str | Path, env: Mapping[str, str] | None = None, **options: Any) -> Config:
    return config.parse_config_bytes(raw, path, env, KEY_SCHEMAS, **options)


def load_config(path: str | Path, env: Mapping[str, str] | None = None, **options: Any) -> Config:
    return config.load_config(path, env, KEY_SCHEMAS, **options)
