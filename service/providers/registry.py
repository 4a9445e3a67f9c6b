"""Which providers exist, and which of them can cancel a batch."""

from __future__ import annotations

from service.providers.anthropic import AnthropicAdapter
from service.providers.base import Adapter
from service.providers.bedrock import BedrockAdapter
from service.providers.cohere import CohereAdapter
from service.providers.groq import GroqAdapter
from service.providers.mistral import MistralAdapter
from service.providers.together import TogetherAdapter
from service.providers.xai import XAIAdapter
from service.providers.google import GeminiAdapter, VertexAdapter
from service.providers.openai import AzureOpenAIAdapter, OpenAIAdapter

# Providers that can cancel a batch through batchgate.
ADAPTERS: dict[str, type[Adapter]] = {
    cls.name: cls
    for cls in (OpenAIAdapter, AzureOpenAIAdapter, AnthropicAdapter, BedrockAdapter, GeminiAdapter, VertexAdapter,
                MistralAdapter, GroqAdapter, TogetherAdapter, XAIAdapter, CohereAdapter)
}

# Providers batchgate knows (a config may name them) but cannot cancel batches on:
# a cancel there answers 400 `unsupported_operation`.
NO_BATCH_CANCEL = frozenset(
    {
        "anthropic", "gemini", "vertex", "bedrock", "mistral", "groq", "together", "fireworks",
        "xai", "cohere", "openrouter", "ollama", "cerebras", "perplexity", "sgl", "parasail",
        "elevenlabs", "huggingface", "nebius",
    }
) - ADAPTERS.keys()

KNOWN_PROVIDERS = frozenset(ADAPTERS) | NO_BATCH_CANCEL

# Why a provider cannot cancel, where there is more to say than "not supported".
UNSUPPORTED_REASONS: dict[str, str] = {
    # fireworks-ai SDK (resources/batch_inference_jobs.py) and Fireworks' API reference: LLM batch
    # inference jobs have create, list, get and delete only. `batchJobs/{id}:cancel` exists, but a
    # batch job is a node-pool compute job, not an LLM batch: calling it could stop something else.
    "fireworks": (
        "batch cancel is not supported by provider: fireworks (Fireworks documents no cancel for LLM batch "
        "inference jobs, only create, get, list and delete; its batchJobs cancel is for compute jobs, not "
        "LLM batches)"
    ),
}
