"""Vertex AI batch prediction: `POST {base}/v1/projects/{p}/locations/{l}/batchPredictionJobs/{id}:cancel`
and a GET of the same name; base `https://{l}-aiplatform.googleapis.com` (`https://aiplatform.googleapis.com`
for `global`). Google's shared error envelope and vocabulary are in google.py.

Auth: OAuth2 bearer tokens minted from the key's service-account JSON (`vertex_key_config`), by
google_auth.py (cached, one mint in flight, dropped on a 401). A caller's direct key cannot stand in.

The BatchPredictionJob has `state` JOB_STATE_* and `completionStats` {successfulCount, failedCount,
incompleteCount} (int64 strings; incompleteCount -1 = unknown). `cancelling_at` is `updateTime`
while JOB_STATE_CANCELLING (the cancel is the job's latest update); `cancelled_at` is `endTime`
(else `updateTime`) once CANCELLED. A job still queued/running right after an accepted cancel is
reported `cancelling` (the use case's rule).

IDs: bare job id (project and region from the key), the full resource name
`projects/p/locations/l/batchPredictionJobs/id`, or its URL-safe unpadded base64 (the seed
gateway's encoding). A full name is authoritative: its project and location are used even when
they differ from the key's (the key only supplies credentials; a job lives where its name says).

Listing: `GET {base}/v1/projects/{p}/locations/{l}/batchPredictionJobs?filter=&pageSize=1000&pageToken=`
in the key's project and region, answering `{batchPredictionJobs, nextPageToken}` (`{}` when empty).
The documented `filter` (AIP-160) does the query's work on the server:
`(state="JOB_STATE_RUNNING" OR ...) AND create_time>="..." AND create_time<"..." AND labels.k="v"`
(a metadata key that cannot be a label key stays out of it: no job can match it). Vertex documents
no order, so a listing never stops early. A listed job's id is its full resource name, and its
`labels` are its metadata.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

from service.config.file import Key, ProviderConfig
from service.config.reader import ConfigError, ConfigReader
from service.domain.errors import InvalidRequest, ProviderError, UpstreamUnavailable
from service.domain.model import BatchState, ListedBatch, ListQuery, RequestCounts
from service.infra.providers.base import (
    UpstreamRequest,
    UpstreamResponse,
    next_token,
    path_segment,
    rfc3339,
    unix_seconds,
    with_query,
)
from service.infra.providers.google import JOB_STATES, GoogleAdapter, google_error, stats
from service.infra.providers.google_auth import ServiceAccountTokens


@dataclass(frozen=True, slots=True)
class VertexKeySettings:
    """A Vertex key's `vertex_key_config`."""

    project_id: str
    region: str
    # Service-account JSON (its `token_uri` is where access tokens are minted).
    auth_credentials: dict[str, Any] = field(repr=False)


_RESOURCE_NAME = re.compile(r"^projects/([^/]+)/locations/([^/]+)/batchPredictionJobs/([^/]+)$")
# A location goes into the host name of the default base URL: strictly a region name.
_LOCATION = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_BASE64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")
# What a Vertex label key may be (lowercase letters, digits, `_` and `-`; international letters
# too, left to the local filter), so `labels.<key>` is one filter field.
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


@dataclass(frozen=True, slots=True)
class VertexJobRef:
    """A batch prediction job: its id, and the project/location of its resource name when the caller
    gave one (else the key's are used)."""

    job_id: str
    project: str | None = None
    location: str | None = None


def _decode_resource_name(batch_id: str) -> str | None:
    """The resource name inside a URL-safe base64 id (padded or not), else None."""
    if not _BASE64URL.match(batch_id):
        return None
    text = batch_id.rstrip("=")
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return decoded if _RESOURCE_NAME.match(decoded) else None


class VertexAdapter(GoogleAdapter):
    name = "vertex"
    api_version = "v1"
    statuses = JOB_STATES
    # Vertex authenticates with the key's service account; a caller's API key cannot stand in.
    accepts_direct_keys = False
    # The key's `vertex_key_config` carries the service account; `value` is not used.
    key_settings_block = "vertex_key_config"
    key_value_required = False
    keeps_metadata = True
    list_page_size = 1000

    @classmethod
    def key_settings(cls, reader: ConfigReader) -> VertexKeySettings:
        # A JSON object, or a string holding one (literal, env.VAR or file./path).
        creds = reader.get("auth_credentials", (dict, str))
        if isinstance(creds, str):
            creds = reader.env_string("auth_credentials", required=True)
            if reader.unresolved("auth_credentials"):
                creds = None
            else:
                try:
                    creds = json.loads(creds)
                except json.JSONDecodeError:
                    where = reader.where("auth_credentials")
                    raise ConfigError(f"{where}: not a service-account JSON document") from None
        if creds is None and reader.unresolved("auth_credentials"):
            creds = {}  # named by the reading's unresolved references; checked when it can be read
        elif not isinstance(creds, dict) or not {"client_email", "private_key", "token_uri"} <= creds.keys():
            raise ConfigError(
                f"{reader.where('auth_credentials')}: needs a service-account JSON with client_email, private_key, "
                "token_uri"
            )
        return VertexKeySettings(
            project_id=reader.env_string("project_id", required=True),
            region=reader.env_string("region", required=True),
            auth_credentials=creds,
        )

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.tokens = ServiceAccountTokens(self.name, config.network.timeout_s)

    def _settings(self, key: Key) -> VertexKeySettings | None:
        return key.settings if isinstance(key.settings, VertexKeySettings) else None

    # Ids and URLs

    def parse_id(self, batch_id: str) -> VertexJobRef:
        name = batch_id if "/" in batch_id else _decode_resource_name(batch_id)
        if name is None:
            path_segment(batch_id)
            return VertexJobRef(batch_id)
        match = _RESOURCE_NAME.match(name)
        if match is None:
            raise InvalidRequest(
                "batch_id must be a batch prediction job id or projects/P/locations/L/batchPredictionJobs/ID",
                param="batch_id",
            )
        project, location, job_id = match.groups()
        for part in (project, job_id):
            path_segment(part)
        if not _LOCATION.match(location):
            raise InvalidRequest("batch_id names a location that is not a valid region", param="batch_id")
        return VertexJobRef(job_id, project, location)

    def _where(self, key: Key, ref: VertexJobRef) -> tuple[str, str]:
        if ref.project is not None and ref.location is not None:
            return ref.project, ref.location
        settings = self._settings(key)
        if settings is None:
            raise InvalidRequest("the vertex key has no vertex_key_config", code="invalid_key_config")
        return settings.project_id, settings.region

    def _base_for(self, location: str) -> str:
        if self.config.network.base_url:
            return self.config.network.base_url
        if not _LOCATION.match(location):
            raise InvalidRequest("the vertex key's region is not a valid location", code="invalid_key_config")
        if location == "global":
            return "https://aiplatform.googleapis.com"
        return f"https://{location}-aiplatform.googleapis.com"

    def base_url(self, key: Key) -> str:
        settings = self._settings(key)
        return self._base_for(settings.region if settings else "")

    def _url(self, key: Key, ref: VertexJobRef, suffix: str = "") -> str:
        project, location = self._where(key, ref)
        return (
            f"{self._base_for(location)}/{self.api_version}/projects/{path_segment(project)}"
            f"/locations/{path_segment(location)}/batchPredictionJobs/{path_segment(ref.job_id)}{suffix}"
        )

    def cancel_request(self, key: Key, ref: VertexJobRef) -> UpstreamRequest:
        headers = self.headers({}, fixed={"Content-Type": "application/json"})
        return UpstreamRequest("POST", self._url(key, ref, ":cancel"), headers, b"{}")

    def status_request(self, key: Key, ref: VertexJobRef) -> UpstreamRequest:
        return UpstreamRequest("GET", self._url(key, ref), self.headers({}))

    def list_filter(self, query: ListQuery) -> str:
        """The AIP-160 filter that finds the query's jobs on the server ("" for none)."""
        clauses = []
        states = sorted(raw.upper() for raw, unified in self.statuses.items() if unified in query.statuses)
        if states and len(states) < len(self.statuses):
            clauses.append("(" + " OR ".join(f'state="{state}"' for state in states) + ")")
        if query.created_after:
            clauses.append(f'create_time>="{rfc3339(query.created_after)}"')
        if query.created_before:
            clauses.append(f'create_time<"{rfc3339(query.created_before)}"')
        for name, value in sorted(query.metadata.items()):
            if _LABEL_KEY.match(name):
                escaped = value.replace("\\", "\\\\").replace('"', '\\"')
                clauses.append(f'labels.{name}="{escaped}"')
        return " AND ".join(clauses)

    def list_request(self, key: Key, query: ListQuery, page_token: str | None) -> UpstreamRequest:
        project, location = self._where(key, VertexJobRef(""))
        url = (
            f"{self._base_for(location)}/{self.api_version}/projects/{path_segment(project)}"
            f"/locations/{path_segment(location)}/batchPredictionJobs"
        )
        params = {"filter": self.list_filter(query) or None, "pageSize": self.list_page_size, "pageToken": page_token}
        return UpstreamRequest("GET", with_query(url, params), self.headers({}), operation="list")

    def parse_list(
        self, data: Any, *, page_token: str | None = None, query: ListQuery | None = None
    ) -> tuple[list[ListedBatch], str | None]:
        jobs = self.listed(
            data, "batchPredictionJobs", id_field="name", created_field="createTime", metadata_field="labels"
        )
        return jobs, next_token(data, "nextPageToken")

    # OAuth2

    async def prepare(self, key: Key, request: UpstreamRequest) -> UpstreamRequest:
        request.headers["Authorization"] = f"Bearer {await self.access_token(key)}"
        return request

    async def access_token(self, key: Key) -> str:
        """A valid access token for the key's service account (google_auth caches and mints)."""
        settings = self._settings(key)
        creds = settings.auth_credentials if settings else None
        if not isinstance(creds, dict):
            raise InvalidRequest("the vertex key has no service-account credentials", code="invalid_key_config")
        return await self.tokens.token(creds)

    def parse_error(self, response: UpstreamResponse) -> ProviderError:
        error = google_error(self.name, response)
        if response.status == 401:
            # The token was refused (revoked, expired early): mint a new one next time.
            self.tokens.invalidate()
        return error

    # The batch

    def parse_batch(self, batch_id: str, data: Any) -> BatchState:
        if not isinstance(data, dict) or not isinstance(data.get("state"), str) or not data["state"]:
            raise UpstreamUnavailable(f"{self.name} answered without a batch prediction job", provider=self.name)
        raw_state = data["state"]
        status = self.status(raw_state)
        counts_raw = stats(data.get("completionStats"), ("successfulCount", "failedCount", "incompleteCount"))
        counts = None
        if counts_raw is not None:
            succeeded, failed, incomplete = counts_raw
            counts = RequestCounts(
                total=None if None in counts_raw else sum(c for c in counts_raw if c is not None),
                completed=succeeded,
                failed=failed,
                succeeded=succeeded,
                pending=incomplete,
            )
        cancelling_at = cancelled_at = None
        if raw_state.upper() == "JOB_STATE_CANCELLING":
            cancelling_at = unix_seconds(data.get("updateTime"))
        elif status == "cancelled":
            cancelled_at = unix_seconds(data.get("endTime")) or unix_seconds(data.get("updateTime"))
        return BatchState(
            id=batch_id, status=status, counts=counts, cancelling_at=cancelling_at, cancelled_at=cancelled_at
        )
