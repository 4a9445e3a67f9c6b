"""The official `openai` Python SDK, unchanged, against the OpenAI-compatible routes."""

from __future__ import annotations

import openai
import pytest
from openai.types import Batch

from gateway.stack import Stack
from tests.e2e.conftest import AZURE_KEY, OPENAI_KEY, SimAdmin, new_id


@pytest.fixture(scope="module", params=["/openai/v1", "/openai"])
def client(request: pytest.FixtureRequest, stack: Stack) -> openai.OpenAI:
    sdk = openai.OpenAI(base_url=f"{stack.http_url}{request.param}", api_key="anything", max_retries=0)
    yield sdk
    sdk.close()


def test_cancel_returns_a_batch(client: openai.OpenAI, sim: SimAdmin, t0: float) -> None:
    batch_id = sim.seed("openai", request_counts={"total": 12, "completed": 5, "failed": 2})

    batch = client.batches.cancel(batch_id)

    assert isinstance(batch, Batch)
    assert batch.id == batch_id
    assert batch.object == "batch"
    assert batch.status == "cancelling"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (12, 5, 2)
    assert batch.cancelling_at == sim.batch("openai", batch_id)["cancelling_at"]
    assert batch.cancelled_at is None
    extra = batch.model_extra["extra_fields"]
    assert (extra["request_type"], extra["provider"], extra["chunk_index"]) == ("batch_cancel", "openai", 0)
    calls = sim.calls(since=t0)
    assert [(c["provider"], c["path"]) for c in calls] == [("openai", f"/openai/v1/batches/{batch_id}/cancel")]
    # The SDK's own key stays at the gateway; the provider sees the configured one.
    assert calls[0]["headers"]["Authorization"] == f"Bearer {OPENAI_KEY}"


REQUIRED_BY_THE_SDK = ("created_at", "endpoint", "input_file_id", "completion_window")


def test_the_batch_carries_the_openai_fields_the_provider_reported(client: openai.OpenAI, sim: SimAdmin) -> None:
    """Issue 23: the SDK's Batch type requires created_at, endpoint, input_file_id and
    completion_window; they are passed on as the provider reported them, and what it did not report
    (null output_file_id, metadata) stays absent."""
    batch_id = sim.seed("openai")

    batch = client.batches.cancel(batch_id)

    reported = sim.batch("openai", batch_id)  # the simulator's own OpenAI Batch object
    for name in (*REQUIRED_BY_THE_SDK, "in_progress_at", "expires_at"):
        assert getattr(batch, name) == reported[name] is not None, name
    assert Batch.model_validate(batch.model_dump()).input_file_id == reported["input_file_id"]
    assert (batch.output_file_id, batch.error_file_id, batch.metadata, batch.completed_at) == (None,) * 4
    assert not {"output_file_id", "metadata", "completed_at"} & set(batch.model_dump(exclude_unset=True))


def test_a_provider_without_openai_fields_gets_none_invented(client: openai.OpenAI, sim: SimAdmin) -> None:
    batch_id = sim.seed("anthropic")

    batch = client.batches.cancel(batch_id, extra_body={"provider": "anthropic"})

    assert batch.created_at is not None  # Anthropic reports when it was created
    assert (batch.endpoint, batch.input_file_id, batch.completion_window) == (None, None, None)


def test_extra_body_provider_routes_to_azure(client: openai.OpenAI, sim: SimAdmin, t0: float) -> None:
    batch_id = sim.seed("azure")

    batch = client.batches.cancel(batch_id, extra_body={"provider": "azure"})

    assert (batch.id, batch.status) == (batch_id, "cancelling")
    assert batch.model_extra["extra_fields"]["provider"] == "azure"
    calls = sim.calls(since=t0)
    assert [(c["provider"], c["path"]) for c in calls] == [("azure", f"/azure/openai/batches/{batch_id}/cancel")]
    assert calls[0]["headers"]["api-key"] == AZURE_KEY


def test_finished_batch_raises_conflict_error(client: openai.OpenAI, sim: SimAdmin) -> None:
    batch_id = sim.seed("openai", status="completed")

    with pytest.raises(openai.ConflictError) as err:
        client.batches.cancel(batch_id)

    assert err.value.status_code == 409
    assert "Cannot cancel a batch with status 'completed'." in err.value.message
    assert err.value.type == "invalid_request_error"
    assert err.value.code is None
    body = err.value.response.json()
    assert body["is_bifrost_error"] is False
    assert body["extra_fields"] == {"provider": "openai", "request_type": "batch_cancel"}


def test_unknown_batch_raises_not_found_error(client: openai.OpenAI) -> None:
    batch_id = new_id("missing")

    with pytest.raises(openai.NotFoundError) as err:
        client.batches.cancel(batch_id)

    assert err.value.status_code == 404
    assert f"No batch found with id '{batch_id}'." in err.value.message


def test_unsupported_provider_raises_bad_request_error(client: openai.OpenAI, sim: SimAdmin, t0: float) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.batches.cancel(new_id(), extra_body={"provider": "ollama"})

    assert err.value.status_code == 400
    assert err.value.code == "unsupported_operation"
    assert sim.calls(since=t0) == []
