"""Cancel by selector on the client side, without a server: the typed Operation and its converters
(metadata, result, a stopped operation's batches in its error, the error's exception class),
`cancel_matching`'s argument checks, the steps of `wait_operation`, and the `stop` command's option
parsing (ages, RFC 3339, metadata pairs, statuses), its refusals before any call, its exit codes and
its output with hostile ids."""

from __future__ import annotations

import asyncio
import datetime
import io
import json

import pytest
from batchgate_client import (
    AsyncBatchgateClient,
    BatchgateClient,
    Cancelled,
    Conflict,
    InternalError,
    NotFound,
    Unauthenticated,
)
from batchgate_client._calls import MAX_EXPLICIT_BATCHES, Waiting, matching_request, operation_name
from batchgate_client._convert import operation_from_proto
from batchgate_client._proto.batchgate.v1 import batchgate_pb2 as pb
from batchgate_client.cli import run
from batchgate_client.operations_cli import operation_exit
from batchgate_client.operations_view import batch_line, batches_table, progress_line, show_done, summary_line
from batchgate_client.selection import SelectionError, parse_metadata, parse_statuses, parse_time, rfc3339
from google.longrunning import operations_pb2
from google.protobuf import any_pb2
from google.rpc import status_pb2
from rich.console import Console

DEAD = "127.0.0.1:1"  # nothing is ever sent in these tests
NOW = 1_750_000_000


def packed(message) -> any_pb2.Any:
    value = any_pb2.Any()
    value.Pack(message)
    return value


def operation(*, done=True, response=None, error=None, **counts) -> operations_pb2.Operation:
    message = operations_pb2.Operation(name="operations/op1", done=done)
    selector = pb.BatchSelector(providers=["openai"], metadata={"team": "ml"}, created_after=NOW - 3600)
    message.metadata.Pack(
        pb.CancelMatchingMetadata(
            selector=selector, state="done" if done else "cancelling", create_time=NOW, update_time=NOW + 3, **counts
        )
    )
    if response is not None:
        message.response.Pack(response)
    if error is not None:
        message.error.CopyFrom(error)
    return message


def matched(batch_id: str, outcome: str, status: str | None = "cancelling", **fields) -> pb.MatchedBatch:
    item = pb.MatchedBatch(id=batch_id, provider="openai", key_id="main", outcome=outcome, **fields)
    if status is not None:
        item.batch.CopyFrom(
            pb.BatchCancelResponse(id=batch_id, status=status, extra_fields=pb.ExtraFields(provider="openai"))
        )
    return item


def detail(status: int, message: str, code: str | None = None) -> pb.ErrorDetail:
    return pb.ErrorDetail(
        is_bifrost_error=True,
        status_code=status,
        error=pb.ErrorField(type="invalid_request_error", code=code, message=message),
    )


# --- the typed operation ---------------------------------------------------------------------------


def test_a_done_operation_has_typed_metadata_and_batches():
    gone = matched("b2", "failed", status=None, error=detail(404, "No batch found", "not_found"))
    op = operation_from_proto(
        operation(
            response=pb.CancelMatchingResult(batches=[matched("b1", "cancelled"), gone]),
            matched=2,
            cancel_accepted=1,
            failed=1,
        )
    )
    assert (op.name, op.id, op.done, op.ok, op.error) == ("operations/op1", "op1", True, True, None)
    meta = op.metadata
    assert (meta.state, meta.matched, meta.cancel_accepted, meta.failed, meta.settled) == ("done", 2, 1, 1, 2)
    assert meta.selector.providers == ("openai",) and meta.selector.metadata == {"team": "ml"}
    assert (meta.selector.created_after, meta.selector.created_before) == (NOW - 3600, None)  # 0 is no bound
    first, second = op.result.batches
    assert (first.outcome, first.status, first.key_id, first.batch.provider) == (
        "cancelled",
        "cancelling",
        "main",
        "openai",
    )
    assert second.batch is None and second.status is None
    assert isinstance(second.error, NotFound) and second.error.code == "not_found"
    assert op.result.by_outcome("failed") == (second,)


def test_outcomes_and_states_outside_the_vocabulary_read_unknown_and_empty_is_pending():
    op = operation_from_proto(
        operation(done=False, response=pb.CancelMatchingResult(batches=[matched("b", "exploded"), matched("c", "")]))
    )
    assert [b.outcome for b in op.result.batches] == ["unknown", "pending"]
    bare = operation_from_proto(operations_pb2.Operation(name="operations/x"))
    assert bare.metadata.state == "unknown" and bare.result is None and not bare.done


def test_the_cap_is_an_error_whose_exception_is_conflict():
    status = status_pb2.Status(
        code=9,
        message="matches 150 batches, more than max_batches 100; nothing was cancelled",
        details=[packed(detail(409, "matches 150 batches, more than max_batches 100; nothing was cancelled"))],
    )
    op = operation_from_proto(operation(error=status, matched=150))
    assert not op.ok and op.result is None
    assert op.error.code == 9 and op.error.grpc_code.name == "FAILED_PRECONDITION"
    assert isinstance(op.error.exception, Conflict) and op.error.exception.status_code == 409
    assert op.error.exception.message.startswith("matches 150 batches")


def test_a_stopped_operation_keeps_its_batches_in_the_errors_details():
    result = pb.CancelMatchingResult(batches=[matched("b1", "cancelled"), matched("b2", "skipped", status=None)])
    status = status_pb2.Status(
        code=1, message="stopped", details=[packed(result), packed(detail(499, "stopped", "operation_cancelled"))]
    )
    op = operation_from_proto(operation(error=status, matched=2, cancel_accepted=1, skipped=1))
    assert isinstance(op.error.exception, Cancelled) and op.error.exception.code == "operation_cancelled"
    assert [b.outcome for b in op.result.batches] == ["cancelled", "skipped"]


def test_an_error_without_a_detail_takes_the_class_of_its_code():
    op = operation_from_proto(operation(error=status_pb2.Status(code=16, message="key revoked")))
    assert isinstance(op.error.exception, Unauthenticated) and op.error.exception.message == "key revoked"
    odd = operation_from_proto(operation(error=status_pb2.Status(code=99, message="?")))
    assert isinstance(odd.error.exception, InternalError) and odd.error.grpc_code.name == "UNKNOWN"


def test_the_rest_json_has_the_any_types_and_proto_field_names():
    body = operation_from_proto(operation(response=pb.CancelMatchingResult(), cancel_accepted=1)).to_dict()
    assert body["metadata"]["@type"] == "type.googleapis.com/batchgate.v1.CancelMatchingMetadata"
    assert body["metadata"]["cancel_accepted"] == 1 and body["metadata"]["validate_only"] is False
    assert json.loads(json.dumps(body))["done"] is True


def test_results_are_frozen():
    op = operation_from_proto(operation())
    with pytest.raises(AttributeError):
        op.done = False  # type: ignore[misc]


# --- cancel_matching's arguments -------------------------------------------------------------------

BASE = {
    "providers": None,
    "statuses": None,
    "created_after": None,
    "created_before": None,
    "metadata": None,
    "batches": None,
    "validate_only": False,
    "max_batches": None,
    "wait": False,
    "deadline_seconds": None,
    "notify_url": None,
}


def request(**fields) -> pb.CancelMatchingRequest:
    return matching_request(**{**BASE, **fields})


def test_a_selector_request_with_times_as_unix_seconds():
    after = datetime.datetime(2025, 6, 1, 12, 0, 0, 500_000, tzinfo=datetime.UTC)
    sent = request(
        providers=["openai", "azure"],
        statuses=["in_progress"],
        created_after=after,
        created_before=NOW,
        metadata={"team": "ml"},
        validate_only=True,
        max_batches=500,
        wait=True,
        deadline_seconds=600,
        notify_url="https://hooks.example.com/batchgate",
    )
    assert list(sent.selector.providers) == ["openai", "azure"] and list(sent.selector.statuses) == ["in_progress"]
    assert sent.selector.created_after == 1748779201  # rounded up: whole seconds, inclusive
    assert sent.selector.created_before == NOW and dict(sent.selector.metadata) == {"team": "ml"}
    assert (sent.validate_only, sent.max_batches, sent.wait, sent.deadline_seconds) == (True, 500, True, 600)
    assert sent.notify.url == "https://hooks.example.com/batchgate"
    assert request().max_batches == 0 and request().deadline_seconds == 0  # the service's defaults


def test_named_batches_go_as_batch_refs():
    sent = request(batches=[("b1", "openai"), {"id": "b2", "provider": "azure"}])
    assert [(ref.id, ref.provider) for ref in sent.selector.batches] == [("b1", "openai"), ("b2", "azure")]


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"providers": "openai"}, TypeError, "providers must be a list of strings, not a single string"),
        ({"providers": [""]}, ValueError, "providers must not hold an empty name"),
        ({"statuses": ["running"]}, ValueError, "statuses: unknown status 'running'"),
        ({"created_after": datetime.datetime(2025, 1, 1)}, ValueError, "created_after must be a timezone-aware"),
        ({"created_after": True}, TypeError, "created_after must be a datetime or unix seconds, not bool"),
        ({"created_before": -5}, ValueError, "created_before must be after 1970-01-01"),
        ({"created_before": 2**32}, ValueError, "created_before must be after 1970-01-01 and before 2106"),
        ({"created_after": NOW, "created_before": NOW}, ValueError, "created_after must be before created_before"),
        ({"metadata": {"team": 5}}, TypeError, "metadata must map str to str"),
        ({"metadata": {"": "x"}}, ValueError, "metadata keys must not be empty"),
        ({"batches": []}, ValueError, "batches must name 1 to 1,000 batches, not 0"),
        ({"batches": [("b", "openai")] * (MAX_EXPLICIT_BATCHES + 1)}, ValueError, "batches must name 1 to 1,000"),
        ({"batches": [("b", "openai")], "providers": ["openai"]}, ValueError, "batches names the batches itself"),
        ({"max_batches": 0}, ValueError, "max_batches must be a whole number from 1 to 100,000, not 0"),
        ({"max_batches": 100_001}, ValueError, "max_batches must be a whole number from 1 to 100,000"),
        ({"deadline_seconds": 86_401}, ValueError, "deadline_seconds must be a whole number from 1 to 86,400"),
        ({"validate_only": "yes"}, TypeError, "validate_only must be True or False"),
        ({"notify_url": ""}, ValueError, "notify_url must be a URL"),
    ],
)
@pytest.mark.parametrize("client_class", [BatchgateClient, AsyncBatchgateClient])
def test_bad_arguments_are_refused_before_sending(client_class, fields, error, message):
    async def check():
        client = client_class(DEAD)
        try:
            with pytest.raises(error, match=message):
                if client_class is BatchgateClient:
                    client.cancel_matching(**fields)
                else:
                    await client.cancel_matching(**fields)
        finally:
            if client_class is BatchgateClient:
                client.close()
            else:
                await client.close()

    asyncio.run(check())


def test_an_operation_name_takes_the_prefix_when_given_the_id_alone():
    assert operation_name("abc") == "operations/abc" == operation_name("operations/abc")
    with pytest.raises(ValueError, match="must not be empty"):
        operation_name(" ")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_wait_operation_is_calls_of_at_most_a_minute_within_its_timeout():
    clock = Clock()
    waiting = Waiting("op1", 150.0, clock)
    steps = []
    while True:
        request, wait = waiting.next_call()
        steps.append(wait)
        assert request.name == "operations/op1" and request.timeout.ToTimedelta().total_seconds() == wait
        clock.now += wait  # the service waited the whole step
        if waiting.over():
            break
    assert steps == [60.0, 60.0, 30.0]
    forever = Waiting("op1", None, clock)
    assert forever.next_call()[1] == 60.0 and not forever.over()
    assert Waiting("op1", 0, clock).next_call()[1] == 0.0  # one call: the state now
    with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
        Waiting("op1", -1, clock)


# --- the command's options ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2h", NOW - 7200),
        ("30m", NOW - 1800),
        ("7d", NOW - 7 * 86400),
        ("1h30m", NOW - 5400),
        ("90s", NOW - 90),
        ("2w", NOW - 14 * 86400),
        ("2025-06-01T12:00:00Z", 1748779200),
        ("2025-06-01T14:00:00+02:00", 1748779200),
        ("2025-06-01T12:00:00.25Z", 1748779201),
        ("2025-06-01", 1748736000),  # a date alone: its midnight UTC
    ],
)
def test_times_are_ages_or_rfc_3339(value, expected):
    assert parse_time(value, NOW, "--created-after") == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0h", "an age must be longer than 0"),
        ("2x", "expected an age such as 2h, 30m or 7d, or an RFC 3339 time"),
        ("1 h", "expected an age"),
        ("2025-06-01T12:00:00", "give the time zone (Z for UTC, or an offset such as +02:00)"),
        ("99999d", "that is before 1970"),
        ("2200-01-01T00:00:00Z", "must be between 1970 and 2106"),
    ],
)
def test_a_time_that_cannot_be_used_names_the_option(value, message):
    with pytest.raises(SelectionError) as info:
        parse_time(value, NOW, "--created-after")
    assert str(info.value).startswith(f"--created-after {value!r}: ") and message in str(info.value)


def test_metadata_pairs_split_at_the_first_equals_sign():
    assert parse_metadata(["team=ml", "query=a=b", "team=ml"]) == {"team": "ml", "query": "a=b"}
    for bad, message in (
        ("team", "expected KEY=VALUE"),
        ("=ml", "the key is empty"),
        ("team=", "the value is empty"),
    ):
        with pytest.raises(SelectionError, match=message):
            parse_metadata([bad])
    with pytest.raises(SelectionError, match="'team' given twice"):
        parse_metadata(["team=ml", "team=ads"])


def test_statuses_are_lowercased_once_each():
    assert parse_statuses(["IN_PROGRESS", "validating", "in_progress"]) == ["in_progress", "validating"]
    with pytest.raises(SelectionError, match="--status 'running': not a batch status"):
        parse_statuses(["running"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["stop", "-p", "openai"], "batchgate: refusing to cancel batches nobody has seen: this is not a terminal"),
        (["stop", "-o", "json"], "batchgate: --output json cannot ask before cancelling: add --yes"),
        (["stop", "--yes", "--created-after", "yesterday"], "batchgate: --created-after 'yesterday': expected an age"),
        (["stop", "--yes", "--metadata", "team"], "batchgate: --metadata 'team': expected KEY=VALUE"),
        (["stop", "--yes", "--status", "running"], "batchgate: --status 'running': not a batch status"),
        (
            ["stop", "--yes", "--created-after", "1h", "--created-before", "2h"],
            "batchgate: --created-after must be earlier than --created-before",
        ),
        (["stop", "--yes", "--admin", "root"], "batchgate: --admin root: set BATCHGATE_ADMIN_PASSWORD"),
    ],
)
def test_stop_refuses_before_any_call(argv, message, monkeypatch):
    monkeypatch.delenv("BATCHGATE_ADMIN_PASSWORD", raising=False)
    err = io.StringIO()
    assert run(["--target", DEAD, *argv], stdin=io.StringIO(""), stdout=io.StringIO(), stderr=err) == 2
    assert err.getvalue().startswith(message) and err.getvalue().count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["stop", "--max", "0"],
        ["stop", "--max", "100001"],
        ["stop", "--deadline", "x"],
        ["operations"],
        ["operations", "get"],
    ],
)
def test_stop_and_operations_argument_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        run(argv)
    assert info.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_exit_codes_follow_the_operation():
    done = operation_from_proto(operation(response=pb.CancelMatchingResult(), matched=2, cancel_accepted=2))
    failed = operation_from_proto(operation(response=pb.CancelMatchingResult(), matched=2, failed=1))
    cap = operation_from_proto(operation(error=status_pb2.Status(code=9, message="matches 3")))
    denied = operation_from_proto(operation(error=status_pb2.Status(code=7, message="no")))
    stopped = operation_from_proto(operation(error=status_pb2.Status(code=1, message="stopped"), skipped=1))
    running = operation_from_proto(operation(done=False))
    assert [operation_exit(op) for op in (done, failed, cap, denied, stopped, running)] == [0, 1, 2, 2, 1, 0]


# --- output -------------------------------------------------------------------------------------------


def hostile_operation() -> operations_pb2.Operation:
    evil = "b\x1b[31m[red]x[/red]\u202e"
    item = matched(evil, "failed", error=detail(404, "gone\x07 [bold]", "not_found"))
    item.provider = "open\x1bai"
    return operation(response=pb.CancelMatchingResult(batches=[item]), matched=1, failed=1)


def test_plain_lines_escape_control_characters():
    op = operation_from_proto(hostile_operation())
    line = batch_line(op.result.batches[0])
    assert line == (
        "b\\x1b[31m[red]x[/red]\\u202e open\\x1bai failed cancelling main error 404 not_found: gone\\x07 [bold]"
    )
    assert "\x1b" not in progress_line(op) + summary_line(op)
    assert summary_line(op) == "operations/op1 done in 3s: 1 matched: 0 cancel accepted, 0 already ended, 1 failed"


def test_tables_show_hostile_values_as_text():
    op = operation_from_proto(hostile_operation())
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system=None)
    console.print(batches_table(op.result.batches, "matches"))
    show_done(op, console, io.StringIO(), io.StringIO())
    printed = out.getvalue()
    assert "[red]x[/red]" in printed and "[bold]" in printed  # never read as markup
    assert "\\x1b" in printed and "\x1b[31m" not in printed and "\u202e" not in printed


def test_a_date_prints_as_rfc_3339_utc():
    assert rfc3339(1748779200) == "2025-06-01T12:00:00Z"
