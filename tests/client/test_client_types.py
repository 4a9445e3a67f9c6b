"""The client's public surface without a server: typed results and their converters, the checked
constructor arguments, TLS that fails closed, the shape of both clients (the same explicit keyword
arguments and a docstring on every public method), the cancel_many stream, a closed client, the
0.1 names that still work with a DeprecationWarning, and the terminal output of the command with
hostile ids (never read as markup, control characters escaped)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import io
import random
import warnings
from pathlib import Path

import pytest
from batchgate_client import (
    AsyncBatchgateClient,
    AsyncCancelStream,
    Batch,
    BatchgateClient,
    BatchRef,
    CancelEvent,
    CancelStream,
    ClientClosed,
    Conflict,
    RequestCounts,
    RetryPolicy,
    batch_to_dict,
)
from batchgate_client._calls import MAX_ITEMS_PER_CALL, many_requests
from batchgate_client._convert import batch_from_proto, ended_batch, event_from_proto, health_from_proto
from batchgate_client._proto.batchgate.v1 import batchgate_pb2 as pb
from batchgate_client.cli import _cancel_one
from batchgate_client.display import PlainView, ProgressView, Tally, describe, summary_line, visible
from batchgate_client.errors import from_detail
from rich.console import Console

from tests.support import self_signed_cert

CLIENTS = [BatchgateClient, AsyncBatchgateClient]
DEAD = "127.0.0.1:1"  # nothing is ever sent in these tests

# --- typed results ---------------------------------------------------------------------------------


def test_a_batch_says_none_for_what_the_provider_did_not_report():
    message = pb.BatchCancelResponse(
        id="b1",
        object="batch",
        status="cancelling",
        cancelling_at=1700000000,
        request_counts=pb.RequestCounts(total=10, completed=0),
        extra_fields=pb.ExtraFields(request_type="batch_cancel", provider="openai", latency=12),
    )
    batch = batch_from_proto(message)
    assert (batch.id, batch.provider, batch.status, batch.object) == ("b1", "openai", "cancelling", "batch")
    assert (batch.cancelling_at, batch.cancelled_at) == (1700000000, None)  # 0 would read like a time
    assert batch.request_counts == RequestCounts(total=10, completed=0)  # a reported 0 stays 0
    assert batch.request_counts.failed is None
    assert (batch.warning, batch.latency_ms, batch.raw_response, batch.already_ended) == (None, 12, None, False)
    assert batch.raw is message and not batch.terminal
    assert batch.to_dict() == batch_to_dict(message) == batch_to_dict(batch)
    assert "cancelled_at" not in batch.to_dict() and batch.to_dict()["cancelling_at"] == 1700000000


def test_a_status_outside_the_vocabulary_reads_unknown_and_the_message_keeps_it():
    batch = batch_from_proto(pb.BatchCancelResponse(id="b1", status="paused"))
    assert batch.status == "unknown" and batch.raw.status == "paused"


def test_warning_and_raw_response_are_lifted():
    message = pb.BatchCancelResponse(id="b1", status="cancelled", cancelled_at=5)
    message.extra_fields.warning = "the batch is still cancelling after waiting"
    message.extra_fields.raw_response.struct_value.update({"id": "b1", "n": 2})
    batch = batch_from_proto(message)
    assert batch.warning == "the batch is still cancelling after waiting"
    assert batch.raw_response == {"id": "b1", "n": 2.0} and batch.cancelled_at == 5 and batch.terminal


def test_a_batch_that_already_ended_is_an_ended_batch_with_the_providers_refusal():
    detail = pb.ErrorDetail(
        status_code=409,
        error=pb.ErrorField(type="invalid_request_error", message="Cannot cancel a batch with status 'completed'."),
        extra_fields=pb.ErrorExtraFields(provider="openai"),
    )
    error = from_detail(detail)
    assert isinstance(error, Conflict)
    batch = ended_batch("b1", "OpenAI", error)
    assert (batch.id, batch.provider, batch.status, batch.already_ended, batch.terminal) == (
        "b1",
        "openai",
        "ended",
        True,
        True,
    )
    assert batch.warning == "already ended: Cannot cancel a batch with status 'completed'."
    assert batch.to_dict()["status"] == "ended"
    # In a stream: with ok_if_ended the 409 item is a batch event; without, the error it was.
    event = pb.CancelManyEvent(index=3, id="b1", provider="openai", final=True, error=detail)
    assert event_from_proto(event, request_id=None).error is not None
    settled = event_from_proto(event, request_id=None, offset=1000, ok_if_ended=True)
    assert (settled.index, settled.status, settled.ok, settled.batch.already_ended) == (1003, "ended", True, True)


def test_health_prints_proto_defaults_such_as_worker_0():
    message = pb.HealthResponse(
        status="ok",
        providers={"openai": pb.ProviderHealth(circuit="closed"), "groq": pb.ProviderHealth(circuit="sideways")},
        rate_limit_store=pb.RateLimitStoreHealth(type="embedded", state="ok"),
        config=pb.ConfigState(worker=0, version="abc", loaded_at=7, last_reload_successful=True),
        workers=[pb.ConfigState(worker=0, version="abc"), pb.ConfigState(worker=1, version="abc")],
    )
    health = health_from_proto(message)
    assert health.status == "ok" and list(health.providers) == ["groq", "openai"]
    assert (health.providers["openai"].circuit, health.providers["groq"].circuit) == ("closed", "unknown")
    assert health.rate_limit_store is not None and health.rate_limit_store.type == "embedded"
    assert health.config is not None and health.config.worker == 0
    assert [w.worker for w in health.workers] == [0, 1]
    body = health.to_dict()
    assert body["config"]["worker"] == 0 and body["workers"][0] == {
        "worker": 0,
        "version": "abc",
        "loaded_at": 0,
        "last_reload_successful": False,
    }


def test_results_are_frozen():
    batch = Batch(id="b", provider="openai", status="cancelled")
    with pytest.raises(AttributeError):
        batch.status = "failed"  # type: ignore[misc]


# --- code written for 0.1 ----------------------------------------------------------------------------


def test_protobuf_attributes_still_read_with_a_deprecation_warning():
    message = pb.BatchCancelResponse(id="b1", status="cancelling")
    message.extra_fields.provider = "openai"
    batch = batch_from_proto(message)
    with pytest.warns(DeprecationWarning, match=r"Batch.extra_fields is the protobuf message's.*\.raw\.extra_fields"):
        assert batch.extra_fields.provider == "openai"  # type: ignore[attr-defined]
    with pytest.warns(DeprecationWarning):
        assert not batch.HasField("cancelled_at")  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="'Batch' object has no attribute 'nonsense'"):
        batch.nonsense  # type: ignore[attr-defined]  # noqa: B018


def test_a_cancel_event_made_with_a_message_converts_it_with_a_warning():
    with pytest.warns(DeprecationWarning, match="takes a batchgate_client.Batch"):
        event = CancelEvent(0, "b1", "openai", True, batch=pb.BatchCancelResponse(id="b1", status="cancelled"))  # type: ignore[arg-type]
    assert isinstance(event.batch, Batch) and event.status == "cancelled"


@pytest.mark.parametrize("client_class", CLIENTS)
def test_the_old_test_hooks_still_work_with_a_deprecation_warning(client_class):
    async def make():
        with pytest.warns(DeprecationWarning, match=r"\(sleep=, rand=\): test hooks are no longer constructor"):
            client = client_class(DEAD, sleep=lambda s: None, rand=random.Random(1))
        await _close(client)

    asyncio.run(make())


# --- constructor ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("client_class", CLIENTS)
def test_both_clients_take_the_same_explicit_keyword_arguments(client_class):
    params = inspect.signature(client_class).parameters
    assert list(params)[:7] == ["target", "vk", "timeout", "tls", "tls_ca", "retry", "metadata"]
    assert all(params[name].kind is inspect.Parameter.KEYWORD_ONLY for name in list(params)[1:7])
    assert not {"sleep", "clock", "rand"} & set(params)  # test hooks are not arguments
    assert inspect.signature(BatchgateClient) == inspect.signature(AsyncBatchgateClient)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"timout": 5},
            TypeError,
            r"unexpected keyword argument 'timout' \(did you mean 'timeout'\? it takes target, vk, timeout",
        ),
        ({"vk": 123}, TypeError, "vk must be a str, not int"),
        ({"vk": ""}, ValueError, "vk must not be empty"),
        ({"vk": "sk-bf-\n"}, ValueError, "vk must be printable ASCII"),
        ({"timeout": 0}, ValueError, "timeout must be a positive number of seconds"),
        ({"timeout": float("nan")}, ValueError, "timeout must be a positive number of seconds"),
        ({"timeout": True}, ValueError, "timeout must be a positive number of seconds"),
        ({"retry": 3}, TypeError, "retry must be a batchgate_client.RetryPolicy"),
        ({"metadata": [("X-Team", "a")]}, ValueError, "metadata key 'X-Team' is not a lowercase gRPC header"),
        ({"metadata": {"x-bf-vk": "k"}}, ValueError, "pass the virtual key as vk="),
        ({"metadata": "x-team=a"}, TypeError, "metadata must be"),
        ({"tls": "yes"}, TypeError, "tls must be True, False or None"),
        ({"tls": False, "tls_ca": b"-----BEGIN CERTIFICATE-----"}, ValueError, "contradict"),
    ],
)
@pytest.mark.parametrize("client_class", CLIENTS)
def test_bad_arguments_are_refused_at_construction(client_class, kwargs, error, message):
    with pytest.raises(error, match=message):
        client_class(DEAD, **kwargs)


@pytest.mark.parametrize("target", ["", "  ", "host :1", 5])
def test_a_bad_target_is_refused(target):
    with pytest.raises(ValueError, match="target must be a HOST:PORT address"):
        BatchgateClient(target)


@pytest.mark.parametrize("client_class", CLIENTS)
def test_tls_fails_closed_on_an_empty_unreadable_or_certificate_less_ca(client_class, tmp_path: Path):
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for tls_ca, message in (
        (b"", "tls_ca is empty"),
        (b"  \n", "tls_ca is empty"),
        (empty, f"tls_ca {empty} is empty"),
        (str(tmp_path / "missing.pem"), "cannot read tls_ca .*missing.pem: No such file"),
        (tmp_path, "cannot read tls_ca"),
        (garbage, "holds no PEM certificate"),
    ):
        with pytest.raises(ValueError, match=message):
            client_class(DEAD, tls_ca=tls_ca)


def test_a_real_ca_file_or_its_bytes_make_a_tls_client(tmp_path: Path):
    cert, _ = self_signed_cert(tmp_path)
    for tls_ca in (cert, str(cert), cert.read_bytes()):
        with BatchgateClient("localhost:1", tls_ca=tls_ca) as client:
            assert client._settings.credentials is not None


def test_the_virtual_key_is_never_in_repr():
    with BatchgateClient(DEAD, vk="sk-bf-secret") as client:
        assert "sk-bf-secret" not in repr(client) and repr(client) == "BatchgateClient('127.0.0.1:1')"
        assert ("x-bf-vk", "sk-bf-secret") in client._settings.metadata


# --- methods -------------------------------------------------------------------------------------------


def public_methods(cls: type) -> dict[str, object]:
    return {
        name: member
        for name, member in vars(cls).items()
        if not name.startswith("_") and (inspect.isfunction(member) or isinstance(member, property))
    } | {name: vars(cls)[name] for name in ("__init__",)}


@pytest.mark.parametrize("cls", [*CLIENTS, CancelStream, AsyncCancelStream, RetryPolicy])
def test_every_public_method_has_a_docstring(cls):
    assert cls.__doc__
    missing = [name for name, member in public_methods(cls).items() if name != "__init__" and not member.__doc__]
    assert missing == []


def test_the_twins_have_the_same_methods_with_the_same_arguments():
    sync, aio = public_methods(BatchgateClient), public_methods(AsyncBatchgateClient)
    assert set(sync) == set(aio)
    for name in sync:
        if isinstance(sync[name], property):
            continue
        assert list(inspect.signature(sync[name]).parameters) == list(inspect.signature(aio[name]).parameters), name
    assert inspect.iscoroutinefunction(AsyncBatchgateClient.cancel) and inspect.iscoroutinefunction(
        AsyncBatchgateClient.health
    )


def test_lists_over_1000_items_are_split_with_their_positions():
    items = [(f"b{i}", "openai") for i in range(2 * MAX_ITEMS_PER_CALL + 5)]
    requests = many_requests(items, 0)
    assert [(offset, len(request.batches)) for offset, request in requests] == [(0, 1000), (1000, 1000), (2000, 5)]
    assert requests[2][1].batches[4].id == "b2004"


@pytest.mark.parametrize(
    ("items", "wait", "error", "message"),
    [
        ([], 0, ValueError, "cancel_many needs at least one batch"),
        ("b1", 0, TypeError, "items must be a list"),
        ([("b1", "openai", "x")], 0, TypeError, "a batch to cancel is"),
        ([{"id": "b1"}], 0, TypeError, "batch id and provider must be strings"),
        ([("b1", "openai")], 3601, ValueError, "wait_seconds must be a whole number of seconds from 0 to 3600"),
        ([("b1", "openai")], -1, ValueError, "wait_seconds must be"),
    ],
)
@pytest.mark.parametrize("client_class", CLIENTS)
def test_cancel_many_checks_its_items_when_called(client_class, items, wait, error, message):
    async def call():
        client = client_class(DEAD)
        try:
            with pytest.raises(error, match=message):
                client.cancel_many(items, wait_seconds=wait)
        finally:
            await _close(client)

    asyncio.run(call())


def test_a_cancel_many_never_iterated_warns_that_nothing_was_cancelled():
    with BatchgateClient(DEAD) as client:
        with pytest.warns(RuntimeWarning, match=r"cancel_many\(\.\.\.\) was never iterated: nothing was cancelled"):
            client.cancel_many([("b1", "openai")])
            gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            client.cancel_many([("b1", "openai")]).close()  # closed on purpose: no warning
            gc.collect()


def test_a_closed_client_raises_client_closed():
    client = BatchgateClient(DEAD)
    stream = client.cancel_many([("b1", "openai")])
    client.close()
    client.close()  # twice is harmless
    for call in (lambda: client.cancel("b1", "openai"), client.health, lambda: next(stream)):
        with pytest.raises(ClientClosed) as info:
            call()
        assert (info.value.status_code, info.value.code) == (499, "client_closed")


def test_a_closed_async_client_raises_client_closed():
    async def scenario():
        client = AsyncBatchgateClient(DEAD)
        await client.close()
        with pytest.raises(ClientClosed):
            await client.cancel("b1", "openai")
        with pytest.raises(ClientClosed):
            await client.health()
        with pytest.raises(ClientClosed):
            async with client.cancel_many([("b1", "openai")]) as events:
                await anext(events)
        with pytest.raises(ClientClosed):
            async with contextlib.aclosing(client.cancel_many([("b1", "openai")])) as events:
                async for _ in events:
                    pass

    asyncio.run(scenario())


async def _close(client: BatchgateClient | AsyncBatchgateClient) -> None:
    if isinstance(client, AsyncBatchgateClient):
        await client.close()
    else:
        client.close()


# --- the command's output with hostile ids -------------------------------------------------------------

HOSTILE = ["[/]", "[link=http://evil.example]x[/link]", "a\x1b[31mred\x07b", "\u202eevil", ":smile: [bold]x"]


def failed_event(index: int, batch_id: str) -> CancelEvent:
    detail = pb.ErrorDetail(
        status_code=400,
        error=pb.ErrorField(type="invalid_request_error", code="invalid_batch_id", message=f"bad id {batch_id}"),
    )
    return CancelEvent(index, batch_id, "open\x1bai", True, error=from_detail(detail))


def test_visible_escapes_control_characters_only():
    assert visible("a\x1b[31mb\x07\x9b\u202e\udcff ok [/] é") == "a\\x1b[31mb\\x07\\x9b\\u202e\\udcff ok [/] é"


def test_the_summary_tables_show_hostile_ids_as_text():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=300, color_system="standard")
    tally = Tally(len(HOSTILE), waiting=False, clock=lambda: 0.0)
    view = ProgressView(tally, console)
    for i, batch_id in enumerate(HOSTILE):
        view.event(failed_event(i, batch_id))
    view.summary()  # before: MarkupError on "[/]"
    text = out.getvalue()
    assert "[/]" in text and "[link=http://evil.example]x[/link]" in text and ":smile: [bold]x" in text
    assert "\x1b]8;" not in text  # no terminal hyperlink
    assert "a\\x1b[31mred\\x07b" in text and "a\x1b[31mred" not in text and "\x07" not in text
    assert "\u202e" not in text and "\\u202eevil" in text
    assert "open\\x1bai" in text


def test_plain_lines_and_the_summary_escape_control_characters():
    out, err = io.StringIO(), io.StringIO()
    view = PlainView(Tally(len(HOSTILE), waiting=False, clock=lambda: 0.0), out, err)
    for i, batch_id in enumerate(HOSTILE):
        view.event(failed_event(i, batch_id))
    view.summary()
    assert "\x1b" not in out.getvalue() + err.getvalue() and "\x07" not in out.getvalue() + err.getvalue()
    assert out.getvalue().splitlines()[2] == (
        "a\\x1b[31mred\\x07b open\\x1bai error 400 invalid_batch_id: bad id a\\x1b[31mred\\x07b"
    )
    assert "a\\x1b[31mred\\x07b (400 invalid_batch_id)" in err.getvalue()


def test_the_wait_spinner_shows_a_hostile_id_as_text():
    class Answers:  # the one method _cancel_one calls
        def cancel(self, batch_id: str, provider: str, *, wait_seconds: int, ok_if_ended: bool) -> Batch:
            return Batch(id=batch_id, provider=provider, status="cancelled")

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    event = _cancel_one(Answers(), BatchRef("[/]", "openai"), 30, console)  # type: ignore[arg-type]
    assert event.status == "cancelled"


def test_one_item_is_one_item():
    tally = Tally(1, waiting=False, clock=lambda: 0.0)
    tally.add(CancelEvent(0, "b1", "openai", True, batch=Batch(id="b1", provider="openai", status="cancelling")))
    assert summary_line(tally) == "1 item in 0.0s: 1 cancelling"


def test_an_already_ended_batch_is_reported_as_such_and_is_no_failure():
    detail = pb.ErrorDetail(
        status_code=409, error=pb.ErrorField(message="Cannot cancel a batch with status 'cancelled'.")
    )
    error = from_detail(detail)
    assert isinstance(error, Conflict)
    event = CancelEvent(0, "b1", "openai", True, batch=ended_batch("b1", "openai", error))
    assert describe(event) == "b1 openai already ended (Cannot cancel a batch with status 'cancelled'.)"
    tally = Tally(1, waiting=True, clock=lambda: 0.0)
    tally.add(event)
    assert tally.failures() == [] and summary_line(tally) == "1 item in 0.0s: 1 already ended"
