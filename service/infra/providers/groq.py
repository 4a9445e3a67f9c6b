"""Groq batches: the OpenAI batch API under `/openai/v1`.

`POST {base}/openai/v1/batches/{id}/cancel` with `Authorization: Bearer KEY` answers the OpenAI
Batch object (`status: cancelling`, unix-second timestamps, `request_counts.{total, completed,
failed}`); errors use OpenAI's envelope `{"error": {"message", "type", "code"}}` (401
`Invalid API Key` / `invalid_api_key`, 429 `rate_limit_exceeded`). Everything but the path prefix
is inherited from the OpenAI adapter, listing included (`GET /openai/v1/batches`, OpenAI's cursor
page), except that Groq does not document the list's order, so a listing never stops early.
"""

from __future__ import annotations

from service.infra.providers.openai import OpenAIAdapter


class GroqAdapter(OpenAIAdapter):
    name = "groq"
    default_base_url = "https://api.groq.com"
    path_prefix = "/openai/v1"
    # Groq documents no header for a caller's own request id (OpenAI's X-Client-Request-Id is not
    # part of its API): the call's id is not sent there.
    request_id_header = None
    lists_newest_first = False
