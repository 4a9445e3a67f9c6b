"""The client package's pure parts: the --from file reader, the retry policy, the error mapping,
the tally behind the exit code, the CLI's usage errors, and that the package never imports the
service (its stubs are its own). The typed models, converters, constructor checks and terminal
escaping are in test_client_types.py."""

from __future__ import annotations

import io
import random
import subprocess
import sys

import grpc
import pytest
from batchgate_client import (
    BatchRef,
    CancelEvent,
    Conflict,
    ConnectionFailed,
    DeadlineExceeded,
    InternalError,
    InvalidRequest,
    NotFound,
    RateLimited,
    RetryPolicy,
    Unavailable,
)
from batchgate_client._convert import batch_from_proto
from batchgate_client._proto.batchgate.v1 import batchgate_pb2 as pb
from batchgate_client.batchfile import BatchFileError, read_batches
from batchgate_client.cli import run
from batchgate_client.display import PlainView, Tally, summary_line
from batchgate_client.errors import class_for_http_status, from_detail, never_sent

# --- the --from file -------------------------------------------------------------------------------


def test_csv_and_json_lines_mix_with_comments_blanks_and_a_header():
    lines = [
        "provider,id\n",
        "# the bad prompt of Tuesday\n",
        "openai,batch_1\n",
        "\n",
        ' anthropic , "msgbatch_2" \n',
        '{"id": "b3", "provider": "mistral"}\n',
    ]
    assert read_batches(lines, "f.csv") == [
        BatchRef("batch_1", "openai"),
        BatchRef("msgbatch_2", "anthropic"),
        BatchRef("b3", "mistral"),
    ]


def test_an_id_alone_takes_the_default_provider():
    assert read_batches(["batch_1\n"], "f", default_provider="azure") == [BatchRef("batch_1", "azure")]


@pytest.mark.parametrize("header", ["id,provider", "ID, Provider", '"id","provider"'])
def test_an_id_provider_header_sets_the_column_order_and_is_never_a_batch(header):
    lines = [f"{header}\n", "batch_1,openai\n", "msgbatch_2 , anthropic\n"]
    assert read_batches(lines, "f.csv") == [BatchRef("batch_1", "openai"), BatchRef("msgbatch_2", "anthropic")]


def test_a_provider_id_header_keeps_the_default_order_and_a_later_header_switches_it():
    lines = ["Provider,ID\n", "openai,batch_1\n", "# the second export\n", "id,provider\n", "b2,azure\n"]
    assert read_batches(lines, "f.csv") == [BatchRef("batch_1", "openai"), BatchRef("b2", "azure")]


def test_an_id_header_lists_ids_alone_for_the_default_provider():
    assert read_batches(["id\n", "batch_1\n"], "f", default_provider="groq") == [BatchRef("batch_1", "groq")]
    with pytest.raises(BatchFileError, match=r"f:2: expected an id alone \(the header names one column: id\)"):
        read_batches(["id\n", "batch_1,openai\n"], "f")
    with pytest.raises(BatchFileError, match="f:2: a line with an id alone needs --provider"):
        read_batches(["id\n", "batch_1\n"], "f")


def test_after_an_id_provider_header_a_bad_line_names_that_order():
    with pytest.raises(BatchFileError, match="f:2: expected id,provider$"):
        read_batches(["id,provider\n", "batch_1,\n"], "f")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("batch_1", "f:2: expected provider,id (or give --provider for lines with an id alone)"),
        ("openai,batch_1,extra", "f:2: expected provider,id"),
        ("openai,", "f:2: expected provider,id"),
        ('{"id": "b1"}', "f:2: provider must be a non-empty string"),
        ('{"id": 5, "provider": "openai"}', "f:2: id must be a non-empty string"),
        ("{not json", "f:2: not valid JSON"),
        ('{"id": "b1", "provider": "openai"', "f:2: not valid JSON"),
    ],
)
def test_a_bad_line_is_named_by_its_number(line, message):
    with pytest.raises(BatchFileError) as info:
        read_batches(["openai,ok\n", line], "f")
    assert str(info.value).startswith(message)


# --- retry policy ----------------------------------------------------------------------------------


def test_backoff_grows_exponentially_up_to_the_cap():
    policy = RetryPolicy(attempts=10, initial_backoff=0.2, multiplier=2, max_backoff=1.0, jitter=0)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.2, 0.4, 0.8, 1.0, 1.0]


def test_jitter_stays_within_its_band():
    policy = RetryPolicy(initial_backoff=1.0, jitter=0.2)
    rand = random.Random(7)
    pauses = [policy.backoff(1, rand) for _ in range(200)]
    assert all(0.8 <= p <= 1.2 for p in pauses) and max(pauses) - min(pauses) > 0.2


def test_pauses_stop_after_the_attempts_and_before_the_deadline():
    policy = RetryPolicy(attempts=3, initial_backoff=0.5, jitter=0)
    assert policy.pause(1, remaining=None) == 0.5
    assert policy.pause(2, remaining=10) == 1.0
    assert policy.pause(3, remaining=10) is None  # three attempts made
    assert policy.pause(1, remaining=0.4) is None  # no time left for another attempt


def detail_error(cls, status, code, *, bifrost=True, retry_after=None):
    detail = pb.ErrorDetail(
        is_bifrost_error=bifrost, status_code=status, error=pb.ErrorField(type="t", code=code, message="m")
    )
    err = from_detail(detail)
    assert type(err) is cls
    err.retry_after = retry_after
    return err


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        # Never reached batchgate: nothing was sent.
        (ConnectionFailed("failed to connect to all addresses; ...", request_sent=False), True),
        # The connection broke after the request went out: it may have been done.
        (ConnectionFailed("Stream removed (Socket closed)", request_sent=True), False),
        # batchgate refused before any provider call and said when to come back.
        (detail_error(RateLimited, 429, "overloaded", retry_after=1.0), True),
        (detail_error(RateLimited, 429, "rate_limited", retry_after=4.0), True),
        (detail_error(Unavailable, 503, "circuit_open", retry_after=5.0), True),
        # ... but not when that is longer than max_retry_after (10 s): the caller decides.
        (detail_error(RateLimited, 429, "rate_limited", retry_after=58.0), False),
        # A provider that stayed down through batchgate's own retries, or its own answer.
        (detail_error(Unavailable, 502, "upstream_unavailable"), False),
        (detail_error(Unavailable, 503, None, bifrost=False), False),
        (detail_error(RateLimited, 429, "rate_limit_exceeded", bifrost=False), False),
        (detail_error(Unavailable, 503, "draining"), False),
        (detail_error(Conflict, 409, None, bifrost=False), False),
        (DeadlineExceeded("deadline_exceeded", code="deadline_exceeded"), False),
    ],
)
def test_only_what_cannot_reach_a_provider_twice_is_retried(error, retried):
    assert RetryPolicy().should_retry(error) is retried


def test_a_retry_waits_at_least_the_retry_after():
    policy = RetryPolicy(initial_backoff=0.2, jitter=0)
    assert policy.next_pause(detail_error(Unavailable, 503, "circuit_open", retry_after=5.0), 1, 30.0) == 5.0
    assert policy.next_pause(detail_error(Unavailable, 503, "circuit_open", retry_after=5.0), 1, 4.0) is None
    assert policy.next_pause(ConnectionFailed("x", request_sent=False), 1, 30.0) == 0.2


def test_the_01_positional_order_still_builds_a_policy():
    policy = RetryPolicy(2, 0.1, 1.0, 2.0, 0.0, frozenset({grpc.StatusCode.UNAVAILABLE}))
    assert (policy.attempts, policy.codes, policy.max_retry_after) == (2, {grpc.StatusCode.UNAVAILABLE}, 10.0)


def test_codes_narrow_what_is_retried():
    policy = RetryPolicy(codes=frozenset({grpc.StatusCode.UNAVAILABLE}))
    assert policy.retryable(grpc.StatusCode.UNAVAILABLE) and not policy.retryable(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert not policy.should_retry(detail_error(RateLimited, 429, "overloaded", retry_after=1.0))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"attempts": 0}, "attempts must be a whole number >= 1"),
        ({"attempts": 2.5}, "attempts must be a whole number >= 1"),
        ({"initial_backoff": -1}, "initial_backoff must be a finite number >= 0"),
        ({"max_retry_after": float("inf")}, "max_retry_after must be a finite number >= 0"),
        ({"jitter": 1.5}, "jitter must be between 0 and 1"),
    ],
)
def test_a_bad_retry_policy_is_refused_when_made(fields, message):
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**fields)


@pytest.mark.parametrize(
    ("message", "sent"),
    [
        ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused", False),
        ("errors resolving nosuch.invalid:50051: [field:hostname lookup error: Domain name not found]", False),
        ("DNS resolution failed for nosuch.invalid:50051", False),
        ("no healthy upstream", False),
        ("Stream removed (Socket closed)", True),
        ("recvmsg:Connection reset by peer", True),
    ],
)
def test_a_connection_failure_says_whether_the_request_went_out(message, sent):
    assert never_sent(message) is not sent


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidRequest),
        (422, InvalidRequest),
        (404, NotFound),
        (409, Conflict),
        (429, RateLimited),
        (502, Unavailable),
        (503, Unavailable),
        (504, DeadlineExceeded),
        (418, InvalidRequest),
        (500, InternalError),
    ],
)
def test_item_errors_get_their_class_from_the_http_status(status, cls):
    assert class_for_http_status(status) is cls


def test_an_item_error_carries_every_field_of_the_detail():
    detail = pb.ErrorDetail(
        is_bifrost_error=False,
        status_code=409,
        error=pb.ErrorField(type="invalid_request_error", message="Cannot cancel a batch with status 'completed'."),
        extra_fields=pb.ErrorExtraFields(provider="openai", request_type="batch_cancel"),
    )
    err = from_detail(detail, request_id="rid-1")
    assert isinstance(err, Conflict)
    assert (err.status_code, err.type, err.code, err.provider, err.request_id) == (
        409,
        "invalid_request_error",
        None,
        "openai",
        "rid-1",
    )
    assert err.to_dict() == {
        "is_bifrost_error": False,
        "status_code": 409,
        "error": {
            "type": "invalid_request_error",
            "code": None,
            "message": "Cannot cancel a batch with status 'completed'.",
            "param": None,
        },
        "extra_fields": {"provider": "openai", "request_type": "batch_cancel"},
    }
    assert str(err) == "409 invalid_request_error (openai): Cannot cancel a batch with status 'completed'."


# --- tally and exit code ---------------------------------------------------------------------------


def event(index: int, status: str | None, final: bool = True, warning: str | None = None) -> CancelEvent:
    if status is None:
        detail = pb.ErrorDetail(status_code=404, error=pb.ErrorField(type="t", code="not_found", message="gone"))
        return CancelEvent(index, f"b{index}", "openai", final, error=from_detail(detail))
    batch = pb.BatchCancelResponse(id=f"b{index}", status=status)
    if warning:
        batch.extra_fields.warning = warning
    return CancelEvent(index, f"b{index}", "openai", final, batch=batch_from_proto(batch))


def test_without_waiting_only_errors_fail():
    tally = Tally(3, waiting=False, clock=lambda: 0.0)
    for e in (event(0, "cancelling"), event(1, None), event(2, "cancelled")):
        tally.add(e)
    assert [e.index for e in tally.failures()] == [1] and tally.missing() == 0


def test_when_waiting_a_batch_still_not_terminal_at_the_end_failed():
    tally = Tally(2, waiting=True, clock=lambda: 0.0)
    for e in (
        event(0, "cancelling", final=False),
        event(1, "cancelling", final=False),
        event(0, "cancelled"),
        event(1, "cancelling", warning="still cancelling"),
    ):
        tally.add(e)
    assert [e.index for e in tally.failures()] == [1]
    assert tally.counts() == {"cancelled": 1, "cancelling": 1}


def test_plain_view_prints_final_lines_and_a_summary_naming_the_failures():
    out, err = io.StringIO(), io.StringIO()
    view = PlainView(Tally(3, waiting=False, clock=lambda: 0.0), out, err)
    for e in (event(0, "cancelling"), event(1, None)):
        view.event(e)
    view.summary()
    assert out.getvalue().splitlines() == ["b0 openai cancelling", "b1 openai error 404 not_found: gone"]
    assert err.getvalue().strip() == (
        "3 items in 0.0s: 1 cancelling, 1 error; 1 failed: b1 (404 not_found); 1 without a result"
    )


def test_summary_lists_a_bounded_number_of_failures():
    tally = Tally(100, waiting=False, clock=lambda: 0.0)
    for i in range(100):
        tally.add(event(i, None))
    assert summary_line(tally).endswith("and 80 more")


# --- CLI usage -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cancel", "b1"], "batchgate: --provider is required with batch IDs"),
        (["cancel"], "batchgate: nothing to cancel: give batch IDs with --provider, or --from FILE"),
        (["cancel", "b1", "--provider", "openai", "--from", "-"], "batchgate: give batch IDs or --from FILE, not both"),
        (["cancel", "--from", "/nonexistent/list.csv"], "batchgate: cannot read /nonexistent/list.csv: No such file"),
        (
            ["--tls-ca", "/nonexistent/ca.pem", "cancel", "b1", "-p", "openai"],
            "batchgate: cannot read --tls-ca /nonexistent/ca.pem: No such file",
        ),
        (["cancel", "bad\udcff", "-p", "openai"], "batchgate: batch id 'bad\\xff' is not valid UTF-8"),
        (["cancel", "b1", "-p", "open\udcffai"], "batchgate: provider 'open\\xffai' is not valid UTF-8"),
        # TLS fails closed: an empty CA file is an error, never the system's roots (#24 item 5).
        (["--tls-ca", "/dev/null", "cancel", "b1", "-p", "openai"], "batchgate: --tls-ca /dev/null is empty"),
        (
            ["cancel", "b1", "-p", "openai", "--vk", "sk-bf-\u00e9"],
            "batchgate: --vk (or BATCHGATE_VK) must be printable",
        ),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, message):
    err = io.StringIO()
    assert run(argv, stdin=io.StringIO(""), stdout=io.StringIO(), stderr=err) == 2
    assert err.getvalue().startswith(message) and err.getvalue().count("\n") == 1


def test_undecodable_stdin_is_a_usage_error():
    err = io.StringIO()
    assert run(["cancel", "--from", "-"], stdin=io.StringIO("openai,b\udcff1\n"), stdout=io.StringIO(), stderr=err) == 2
    assert err.getvalue() == "batchgate: batch id 'b\\xff1' is not valid UTF-8\n"


def test_empty_stdin_is_a_usage_error():
    err = io.StringIO()
    assert run(["cancel", "--from", "-"], stdin=io.StringIO("# nothing\n\n"), stdout=io.StringIO(), stderr=err) == 2
    assert err.getvalue() == "batchgate: no batches listed in stdin\n"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["cancel", "--wait", "3601", "b"],
        ["cancel", "--wait", "x"],
        ["--timeout", "0", "health"],
        ["config"],
        ["frobnicate"],
    ],
)
def test_argument_errors_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as info:
        run(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_config_check_says_so_when_the_service_is_not_installed(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "service", None)  # `import service...` now raises ImportError
    for name in ("service.config", "service.config.reader"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    err = io.StringIO()
    assert run(["config", "check", str(tmp_path / "c.json")], stdout=io.StringIO(), stderr=err) == 2
    assert "the service package is not importable here" in err.getvalue() and err.getvalue().count("\n") == 1


def test_the_package_and_its_command_never_import_the_service():
    code = (
        "import sys, batchgate_client, batchgate_client.cli, batchgate_client.display;"
        "bad = [m for m in sys.modules if m == 'service' or m.startswith(('service.', 'sandbox', 'gateway'))];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")
