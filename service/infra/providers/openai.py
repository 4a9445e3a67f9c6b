"""OpenAI-shaped batch APIs: OpenAI itself and Azure OpenAI.

The cancel call answers with the batch object, so no follow-up read is needed. Azure preview builds
send capitalised statuses, ISO timestamps and null counts; the parsing accepts all of them.

Listing: `GET .../batches?limit=100&after=<last id>` (openai SDK `batches.list`: a cursor page
`{object: list, data, first_id, last_id, has_more}`, `limit` 1-100, newest first; Azure takes the
same with its `api-version`). The next page is asked while `has_more` is true; an answer without
`has_more` (the groq SDK types its list as `{object, data}` only) continues only from a full page.
No server-side filters; each batch carries its `metadata` (string pairs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

from service.config.file import Key
from service.config.reader import ConfigReader, http_url
from service.domain.errors import UpstreamUnavailable
from service.domain.model import BatchDetails, BatchState, ListedBatch, ListQuery, RequestCounts
from service.infra.providers.base import (
    Adapter,
    UpstreamRequest,
    count,
    next_token,
    path_segment,
    unix_seconds,
)

AZURE_API_VERSION = "2024-10-21"


@dataclass(frozen=True, slots=True)
class AzureKeySettings:
    """An Azure key's `azure_key_config`: its resource endpoint and API version."""

    endpoint: str
    api_version: str = AZURE_API_VERSION


class OpenAIAdapter(Adapter):
    name = "openai"
    default_base_url = "https://api.openai.com"
    # Accept both spellings; emit OpenAI's `cancelled`.
    statuses = {"canceled": "cancelled", "canceling": "cancelling"}
    path_prefix = "/v1"
    request_id_header: ClassVar[str | None] = "X-Client-Request-Id"
    accepts_direct_keys = True
    lists_newest_first = True
    keeps_metadata = True
    list_page_size = 100

    def cancel_url(self, key: Key, segment: str) -> str:
        return f"{self.base_url(key)}{self.path_prefix}/batches/{segment}/cancel"

    def batch_url(self, key: Key, segment: str) -> str:
        return f"{self.base_url(key)}{self.path_prefix}/batches/{segment}"

    def cancel_request(self, key: Key, ref: str) -> UpstreamRequest:
        return self.request("POST", self.cancel_url(key, path_segment(ref)), key)

    def retrieve_request(self, key: Key, ref: str) -> UpstreamRequest:
        """`GET .../batches/{id}`: the same Batch object the cancel answers."""
        return self.request("GET", self.batch_url(key, path_segment(ref)), key)

    def list_url(self, key: Key) -> str:
        return f"{self.base_url(key)}{self.path_prefix}/batches"

    def list_request(self, key: Key, query: ListQuery, page_token: str | None) -> UpstreamRequest:
        return self.list_get(self.list_url(key), key, {"limit": self.list_page_size, "after": page_token})

    def parse_list(
        self, data: Any, *, page_token: str | None = None, query: ListQuery | None = None
    ) -> tuple[list[ListedBatch], str | None]:
        batches = self.listed(data, "data", metadata_field="metadata")
        has_more = data.get("has_more")
        more = has_more is True or (has_more is None and len(batches) >= self.list_page_size)
        return batches, (next_token(data, "last_id") or batches[-1].state.id) if batches and more else None

    def parse_batch(self, batch_id: str, data: Any) -> BatchState:
        if not isinstance(data, dict) or not data.get("status"):
            raise UpstreamUnavailable(f"{self.name} answered without a batch object", provider=self.name)
        counts = data.get("request_counts")
        return BatchState(
            id=str(data.get("id") or batch_id),
            status=self.status(data["status"]),
            counts=RequestCounts(
                total=count(counts.get("total")),
                completed=count(counts.get("completed")),
                failed=count(counts.get("failed")),
            )
            if isinstance(counts, dict)
            else None,
            cancelling_at=unix_seconds(data.get("cancelling_at")),
            cancelled_at=unix_seconds(data.get("cancelled_at")),
            created_at=unix_seconds(data.get("created_at")),
            expires_at=unix_seconds(data.get("expires_at")),
            details=openai_details(data),
        )


def openai_details(data: dict[str, Any]) -> BatchDetails:
    """The OpenAI Batch fields of an OpenAI-shaped answer, for the OpenAI-compatible routes: strings,
    times (Azure's previews send ISO 8601) and JSON objects as reported; anything else is left out."""

    def text(name: str) -> str | None:
        value = data.get(name)
        return value if isinstance(value, str) else None

    def obj(name: str) -> dict[str, Any] | None:
        value = data.get(name)
        return value if isinstance(value, dict) else None

    return BatchDetails(
        endpoint=text("endpoint"),
        input_file_id=text("input_file_id"),
        completion_window=text("completion_window"),
        model=text("model"),
        output_file_id=text("output_file_id"),
        error_file_id=text("error_file_id"),
        in_progress_at=unix_seconds(data.get("in_progress_at")),
        finalizing_at=unix_seconds(data.get("finalizing_at")),
        completed_at=unix_seconds(data.get("completed_at")),
        failed_at=unix_seconds(data.get("failed_at")),
        expired_at=unix_seconds(data.get("expired_at")),
        metadata=obj("metadata"),
        errors=obj("errors"),
        usage=obj("usage"),
    )


_OBJECT_FIELDS = ("metadata", "errors", "usage")


class AzureOpenAIAdapter(OpenAIAdapter):
    """`{endpoint}/openai/batches/{id}/cancel?api-version=V` with the `api-key` header."""

    name = "azure"
    default_base_url = ""
    request_id_header = "x-ms-client-request-id"
    key_settings_block = "azure_key_config"

    @classmethod
    def key_settings(cls, reader: ConfigReader) -> AzureKeySettings:
        where = reader.where("endpoint")
        endpoint = reader.env_string("endpoint", required=True, check=lambda value: http_url(value, where))
        return AzureKeySettings(
            endpoint=http_url(endpoint, where) if endpoint else "",
            api_version=reader.env_string("api_version", required=False) or AZURE_API_VERSION,
        )

    def auth_headers(self, key: Key) -> dict[str, str]:
        return {"api-key": key.value}

    def base_url(self, key: Key) -> str:
        # network_config.base_url (tests, proxies) wins over the key's own resource endpoint.
        return self.config.network.base_url or (key.settings.endpoint if key.settings else "")

    def _version(self, key: Key) -> str:
        return quote(key.settings.api_version if key.settings else AZURE_API_VERSION, safe="")

    def cancel_url(self, key: Key, segment: str) -> str:
        return f"{self.base_url(key)}/openai/batches/{segment}/cancel?api-version={self._version(key)}"

    def batch_url(self, key: Key, segment: str) -> str:
        return f"{self.base_url(key)}/openai/batches/{segment}?api-version={self._version(key)}"

    def list_url(self, key: Key) -> str:
        return f"{self.base_url(key)}/openai/batches?api-version={self._version(key)}"
