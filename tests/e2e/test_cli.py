"""The `batchgate` command, run as a subprocess (the console script `make` installs) against the
real gateway: sandbox simulators, the gRPC service and Envoy, started once for the session.

Single cancels, bulk cancels from a file and from stdin (CancelMany, also through Envoy), waiting
until cancelled, JSON output, one exit-code rule (0 nothing failed, 1 some items failed, 2 refused,
the same for one id and many), re-runs over batches that already ended, CSV headers in either
order, options before or after every subcommand, `config check` against the service's own start-up
check, and the terminal output: the live progress display on a pseudo-terminal, hostile ids shown
as text and control characters escaped.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.paths import ROOT
from gateway.stack import Stack, free_port
from sandbox.server import gateway_config
from tests.e2e.conftest import SimAdmin, new_id, service_log, until

BATCHGATE = Path(sys.executable).parent / "batchgate"
# The caller's own settings must not leak into the tests.
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHGATE_", "NO_COLOR", "FORCE_COLOR"))}


def batchgate(
    *args: str, target: str | None = None, stdin: str | None = None, env: dict | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    argv = [str(BATCHGATE), *(["--target", target] if target else []), *args]
    return subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=timeout, env={**ENV, **(env or {})}, cwd="/"
    )


@pytest.fixture(scope="module")
def grpc_target(stack: Stack) -> str:
    return f"127.0.0.1:{stack.grpc_port}"


@pytest.fixture(scope="module")
def envoy_target(stack: Stack) -> str:
    """Envoy passes native gRPC through on the REST port."""
    return f"127.0.0.1:{stack.http_port}"


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr + result.stdout


def test_the_command_is_installed_in_the_virtualenv():
    assert BATCHGATE.is_file() and os.access(BATCHGATE, os.X_OK)


def test_cancel_one_batch_prints_its_status(grpc_target, sim: SimAdmin):
    batch = sim.seed("openai")
    result = batchgate("cancel", batch, "--provider", "openai", target=grpc_target)
    assert (result.returncode, result.stdout) == (0, f"{batch} openai cancelling\n")
    assert re.fullmatch(r"1 item in \d+\.\ds: 1 cancelling\n", result.stderr), result.stderr  # a summary, singular
    assert sim.batch("openai", batch)["status"] == "cancelling"


def test_cancel_several_ids_one_line_each_and_exit_1_naming_the_failure(grpc_target, sim: SimAdmin):
    first, second = sim.seed("anthropic", new_id("msgbatch")), sim.seed("anthropic", new_id("msgbatch"))
    missing = new_id("missing")
    result = batchgate("cancel", first, missing, second, "-p", "anthropic", target=grpc_target)
    assert result.returncode == 1, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert (lines[first], lines[second]) == (f"{first} anthropic cancelling", f"{second} anthropic cancelling")
    not_found = f"404 not_found_error: message_batch_id '{missing}' was not found."
    assert lines[missing] == f"{missing} anthropic error {not_found}"
    assert f"1 failed: {missing} (404" in result.stderr and result.stderr.count("\n") == 1
    no_traceback(result)


def test_bulk_from_a_file_mixes_providers_and_formats(grpc_target, sim: SimAdmin, tmp_path: Path):
    openai, anthropic = sim.seed("openai"), sim.seed("anthropic", new_id("msgbatch"))
    done, missing = sim.seed("openai", status="completed"), new_id("missing")
    listing = tmp_path / "batches.csv"
    listing.write_text(
        f"provider,id\n# Tuesday's bad prompt\nopenai,{openai}\n"
        f'{{"id": "{anthropic}", "provider": "anthropic"}}\n'
        f"openai,{done}\nopenai,{missing}\n"
    )
    result = batchgate("cancel", "--from", str(listing), target=grpc_target)
    assert result.returncode == 1
    assert sorted(result.stdout.splitlines()) == sorted(
        [
            f"{openai} openai cancelling",
            f"{anthropic} anthropic cancelling",
            f"{done} openai already ended (Cannot cancel a batch with status 'completed'.)",
            f"{missing} openai error 404 invalid_request_error: No batch found with id '{missing}'.",
        ]
    )
    assert result.stderr.startswith("4 items in ") and "1 already ended, 2 cancelling, 1 error" in result.stderr
    assert f"1 failed: {missing} (404 invalid_request_error)" in result.stderr


def test_a_rerun_over_batches_that_already_ended_succeeds(grpc_target, sim: SimAdmin):
    """Running the same command again (the README's examples) finds the batches cancelled: that is
    what was asked, so it is reported as such and the run does not fail (#23 item 5)."""
    batch = sim.seed("openai", cancel_delay_s=0)  # cancelled on the next read
    first = batchgate("cancel", batch, "-p", "openai", "--wait", "30", target=grpc_target)
    assert (first.returncode, first.stdout) == (0, f"{batch} openai cancelled\n"), first.stderr
    again = batchgate("cancel", batch, "-p", "openai", target=grpc_target)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"{batch} openai already ended (Cannot cancel a batch with status 'cancelled'.)\n"
    assert "1 already ended" in again.stderr and "failed" not in again.stderr
    bulk = batchgate("cancel", "--from", "-", "-o", "json", target=grpc_target, stdin=f"openai,{batch}\n")
    assert bulk.returncode == 0
    line = json.loads(bulk.stdout)
    assert (line["batch"]["status"], "error" in line) == ("ended", False)
    assert line["batch"]["extra_fields"]["warning"].startswith("already ended: Cannot cancel")


@pytest.mark.parametrize("header", ["id,provider", "provider,id", "ID,Provider"])
def test_a_csv_header_in_either_order_is_read_and_never_sent(grpc_target, sim: SimAdmin, t0: float, header: str):
    batches = [sim.seed("openai"), sim.seed("openai")]
    order = [c.strip().lower() for c in header.split(",")]
    rows = "".join(",".join(b if c == "id" else "openai" for c in order) + "\n" for b in batches)
    result = batchgate("cancel", "--from", "-", target=grpc_target, stdin=f"{header}\n{rows}")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(f"{b} openai cancelling" for b in batches)
    assert result.stderr.startswith("2 items in ")
    sent = [c["path"] for c in sim.calls(since=t0)]
    assert len(sent) == 2 and not [p for p in sent if p.endswith(("/batches/id/cancel", "/batches/provider/cancel"))]
    help_text = batchgate("cancel", "--help").stdout
    assert "header row naming the columns" in help_text and "never sent" in help_text


def test_bulk_from_stdin_through_envoy_all_done_exits_0(envoy_target, sim: SimAdmin):
    batches = [sim.seed("openai") for _ in range(3)]
    result = batchgate("cancel", "--from", "-", target=envoy_target, stdin="".join(f"openai,{b}\n" for b in batches))
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted(f"{b} openai cancelling" for b in batches)
    assert "3 cancelling" in result.stderr and "failed" not in result.stderr


def test_wait_until_cancelled(grpc_target, sim: SimAdmin):
    batches = [sim.seed("openai", cancel_delay_s=1), sim.seed("anthropic", new_id("msgbatch"), cancel_delay_s=1)]
    single = batchgate("cancel", batches[0], "-p", "openai", "--wait", "30", target=grpc_target)
    assert (single.returncode, single.stdout) == (0, f"{batches[0]} openai cancelled\n"), single.stderr
    bulk = batchgate(
        "cancel",
        "--from",
        "-",
        "--wait",
        "30",
        target=grpc_target,
        stdin=f"openai,{sim.seed('openai', cancel_delay_s=1)}\nanthropic,{batches[1]}\n",
    )
    assert bulk.returncode == 0, bulk.stderr
    assert [line.split()[-1] for line in bulk.stdout.splitlines()] == ["cancelled", "cancelled"]


def test_a_wait_that_runs_out_is_a_failure(grpc_target, sim: SimAdmin):
    batch = sim.seed("openai")  # stays cancelling for an hour
    result = batchgate("cancel", batch, "-p", "openai", "--wait", "1", target=grpc_target)
    assert result.returncode == 1
    assert result.stdout.startswith(f"{batch} openai cancelling (warning: ")
    assert f"1 failed: {batch} (still cancelling)" in result.stderr


def test_json_output_one_object_per_item_like_the_rest_stream(grpc_target, gw, sim: SimAdmin):
    ok, missing = sim.seed("openai"), new_id("missing")
    result = batchgate(
        "--output", "json", "cancel", "--from", "-", target=grpc_target, stdin=f"openai,{ok}\nopenai,{missing}\n"
    )
    assert result.returncode == 1
    lines = sorted((json.loads(line) for line in result.stdout.splitlines()), key=lambda line: line["index"])
    assert [(line["index"], line["id"], line["final"]) for line in lines] == [(0, ok, True), (1, missing, True)]
    assert lines[0]["batch"]["status"] == "cancelling" and "error" not in lines[0]
    # The error object is exactly the REST error body of a single cancel of the same batch.
    rest = gw.post(f"/v1/batches/{missing}/cancel?provider=openai")
    assert lines[1]["error"] == rest.json() and "batch" not in lines[1]
    # And the batch object has the fields of the REST answer.
    rest_ok = gw.post(f"/v1/batches/{sim.seed('openai')}/cancel?provider=openai").json()
    assert set(lines[0]["batch"]) == set(rest_ok)


def test_single_cancel_json(grpc_target, sim: SimAdmin):
    batch = sim.seed("azure")
    result = batchgate("cancel", batch, "-p", "azure", "-o", "json", target=grpc_target)
    assert result.returncode == 0
    line = json.loads(result.stdout)
    assert (line["index"], line["id"], line["provider"], line["final"], line["batch"]["status"]) == (
        0,
        batch,
        "azure",
        True,
        "cancelling",
    )


def test_more_than_a_thousand_batches_go_as_consecutive_calls(grpc_target):
    ids = [f"batch_many_{i}_{new_id('x')}" for i in range(1001)]  # the sandbox creates unknown ids
    result = batchgate(
        "-o",
        "json",
        "cancel",
        "--from",
        "-",
        target=grpc_target,
        stdin="".join(f"openai,{i}\n" for i in ids),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-500:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(line["index"] for line in lines) == list(range(1001))
    assert {line["index"]: line["id"] for line in lines} == dict(enumerate(ids))


def test_dead_target_exits_2_with_one_line():
    port = free_port()
    result = batchgate("cancel", "b1", "-p", "openai", target=f"127.0.0.1:{port}")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"batchgate: cannot reach batchgate at 127.0.0.1:{port}: ")
    assert result.stderr.count("\n") == 1
    no_traceback(result)
    bulk = batchgate("cancel", "--from", "-", target=f"127.0.0.1:{port}", stdin="openai,b1\nopenai,b2\n")
    assert bulk.returncode == 2 and bulk.stderr.count("\n") == 1


def test_a_bad_line_exits_2_before_any_call(grpc_target, sim: SimAdmin, t0: float):
    batch = sim.seed("openai")
    result = batchgate("cancel", "--from", "-", target=grpc_target, stdin=f"openai,{batch}\nopenai\n")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "batchgate: stdin:2: expected provider,id (or give --provider for lines with an id alone)\n"
    assert sim.calls(since=t0, batch_id=batch) == []


def test_the_virtual_key_is_never_echoed(grpc_target, sim: SimAdmin):
    secret = "sk-bf-never-print-me-0123456789"
    batch = sim.seed("openai")
    for args, env in ((("--vk", secret), None), ((), {"BATCHGATE_VK": secret})):
        for extra in ((), ("-o", "json")):
            # The open sandbox gateway does not know the key: the whole CancelMany call is refused.
            result = batchgate(
                *args, *extra, "cancel", batch, new_id("missing"), "-p", "openai", target=grpc_target, env=env
            )
            assert result.returncode == 2 and secret not in result.stdout + result.stderr
            assert result.stderr == "batchgate: the call failed: 401 virtual_key_not_found: virtual key not found\n"
            # One id or two: the same refusal, the same exit code (#23 item 2; before: 1 for one id).
            single = batchgate(*args, *extra, "cancel", batch, "-p", "openai", target=grpc_target, env=env)
            assert (single.returncode, single.stdout, single.stderr) == (2, "", result.stderr)
    dead = batchgate("--vk", secret, "health", target=f"127.0.0.1:{free_port()}")
    assert dead.returncode == 2 and secret not in dead.stdout + dead.stderr


def test_health_shows_each_providers_circuit(grpc_target):
    text = batchgate("health", target=grpc_target)
    assert text.returncode == 0 and f"batchgate at {grpc_target}: ok" in text.stdout
    assert re.search(r"openai\s+.\s+closed", text.stdout), text.stdout
    as_json = json.loads(batchgate("health", "-o", "json", target=grpc_target).stdout)
    assert as_json["status"] == "ok" and as_json["providers"]["anthropic"] == {"circuit": "closed"}
    # Proto defaults are printed: worker 0 has its "worker" key (before: dropped).
    assert sorted(w["worker"] for w in as_json["workers"]) == list(range(len(as_json["workers"])))
    assert "worker" in as_json["config"]


def test_python_dash_m_runs_the_same_command(grpc_target):
    result = subprocess.run(
        [sys.executable, "-m", "batchgate_client", "--target", grpc_target, "health", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        cwd="/",
    )
    assert result.returncode == 0 and json.loads(result.stdout)["status"] == "ok"


def test_one_exit_code_rule(grpc_target, sim: SimAdmin):
    """0 nothing failed, 1 some items failed, 2 nothing decided item by item: the same for one id
    and for many (#23 item 2)."""
    ok, missing = sim.seed("openai"), new_id("missing")
    cases = [
        (("cancel", ok, "-p", "openai"), 0),
        (("cancel", missing, "-p", "openai"), 1),
        (("cancel", sim.seed("openai"), missing, "-p", "openai"), 1),
        (("cancel", "b1", "-p", "nosuchprovider"), 1),  # an item CancelMany would answer with an error line
        (("cancel", "b1", "b2", "-p", "nosuchprovider"), 1),
        (("cancel", "b1"), 2),  # usage
        (("--vk", "sk-bf-unknown", "cancel", sim.seed("openai"), "-p", "openai"), 2),  # refused as a whole
        (("--vk", "sk-bf-unknown", "cancel", sim.seed("openai"), missing, "-p", "openai"), 2),
    ]
    for args, code in cases:
        result = batchgate(*args, target=grpc_target)
        assert result.returncode == code, (args, result.stderr)
    dead = f"127.0.0.1:{free_port()}"
    assert batchgate("cancel", "b1", "-p", "openai", target=dead).returncode == 2
    assert batchgate("health", target=dead).returncode == 2


# --- config check ----------------------------------------------------------------------------------


def test_config_check_accepts_a_good_config(stack: Stack, tmp_path: Path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(gateway_config(stack.sandbox_url)))
    result = batchgate("config", "check", str(config))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(f"{config}: OK: 12 providers (anthropic, azure, bedrock, ")
    assert "12 keys (12 for batches), 1 virtual key" in result.stdout  # sandbox mode's operator key


def test_config_check_takes_the_common_options_before_or_after(stack: Stack, tmp_path: Path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(gateway_config(stack.sandbox_url)))
    for args in (
        ("config", "check", str(config), "-o", "json"),  # before: an argument error (exit 2)
        ("-o", "json", "config", "check", str(config)),  # before: ignored (text)
        ("config", "--output", "json", "check", str(config)),
    ):
        result = batchgate(*args)
        assert (result.returncode, result.stderr) == (0, ""), args
        body = json.loads(result.stdout)
        assert (body["file"], body["ok"], body["keys"], body["batch_keys"], body["virtual_keys"]) == (
            str(config),
            True,
            12,
            12,
            1,  # sandbox mode's operator key
        )
        assert body["providers"][:3] == ["anthropic", "azure", "bedrock"]
    broken = tmp_path / "broken.json"
    broken.write_text('{"providers": {"nosuch": {}}}')
    result = batchgate("config", "check", str(broken), "--output=json", "--timeout", "5")
    assert result.returncode == 1 and result.stderr == ""
    body = json.loads(result.stdout)
    assert (body["ok"], body["file"]) == (False, str(broken)) and body["error"]


@pytest.mark.parametrize(
    "broken",
    [
        '{"providers": {"openai": {"keys": [{"name": "k", "value": "env.BATCHGATE_TEST_UNSET_KEY", '
        '"use_for_batch_api": true}]}}}',
        '{"providers": {"openai": {"keys": []}}, "governance": {"virtual_keys": [{"id": "a", "value": "nope"}]}}',
        '{"providers": {"nosuch": {}}}',
        '{"providers": ',
        '{"providers": {"openai": {"keys": ' + "[" * 100_000 + "]" * 100_000 + "}}}",
        '{"providers": {"openai": {"keys": [{"value": "k", "use_for_batch_api": true}]}}, '
        '"governance": {"store": {"type": "redis", "url": "redis://:pw@[::1/0"}}}',
    ],
    ids=["unset variable", "virtual key", "unknown provider", "not json", "deeply nested", "malformed redis url"],
)
def test_config_check_fails_with_exactly_the_services_message(tmp_path: Path, broken: str):
    config = tmp_path / "config.json"
    config.write_text(broken)
    result = batchgate("config", "check", str(config))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("batchgate: config error: ") and result.stderr.count("\n") == 1
    service = subprocess.run(
        [sys.executable, "-m", "service", "--config", str(config), "--address", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=ENV,
    )
    assert service.returncode == 2 and service.stderr.splitlines()[-1] == result.stderr.strip()


def test_config_check_is_strict_and_names_every_problem_in_one_run(tmp_path: Path):
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "providers": {
                    "openai": {
                        "keys": [{"value": "env.BATCHGATE_TEST_UNSET_A", "wieght": 2, "use_for_batch_api": True}]
                    },
                    "anthropic": {"keys": [{"value": "env.BATCHGATE_TEST_UNSET_B"}]},
                }
            }
        )
    )
    result = batchgate("config", "check", str(config))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "batchgate: config error: providers.openai.keys[0].value: environment variable BATCHGATE_TEST_UNSET_A "
        "is not set",
        "batchgate: config error: providers.anthropic.keys[0].value: environment variable BATCHGATE_TEST_UNSET_B "
        "is not set",
        "batchgate: config error: providers.openai.keys[0].wieght: unknown field (did you mean `weight`?)",
        "batchgate: config error: providers.anthropic.keys: no batch-enabled key (a key is used for batches when "
        'it has "use_for_batch_api": true and is enabled; cancels on it would fail with no_batch_keys)',
    ]
    config.write_text("{}")
    result = batchgate("config", "check", str(config))
    assert (result.returncode, result.stderr) == (
        1,
        "batchgate: config error: providers: none configured (every cancel would be refused: "
        "provider_not_configured)\n",
    )


def test_config_check_allow_missing_env_checks_a_config_without_its_secrets():
    example = ROOT / "config.example.json"
    assert batchgate("config", "check", str(example)).returncode == 1
    result = batchgate("config", "check", "--allow-missing-env", str(example))
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout
        == f"{example}: OK: 3 providers (anthropic, azure, openai), 4 keys (4 for batches), 0 virtual keys\n"
    )
    notes = result.stderr.splitlines()
    assert len(notes) == 5 and all(note.startswith("batchgate: note: not checked: providers.") for note in notes)
    assert "environment variable OPENAI_API_KEY is not set" in notes[0]


# --- the live progress display ---------------------------------------------------------------------


def run_on_pty(argv: list[str], stdin: bytes, env: dict) -> tuple[int, str]:
    """Runs `argv` with its stdout and stderr on a pseudo-terminal; returns (exit code, all output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=slave, stderr=slave, env=env, cwd="/")
    os.close(slave)
    proc.stdin.write(stdin)
    proc.stdin.close()
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


def test_progress_bar_and_summary_table_on_a_terminal(grpc_target, sim: SimAdmin):
    slow = [sim.seed("openai", cancel_delay_s=1.5) for _ in range(2)]
    missing = new_id("missing")
    listing = "".join(f"openai,{b}\n" for b in slow) + f"openai,{missing}\n"
    env = {**ENV, "TERM": "xterm-256color", "COLUMNS": "120"}
    code, output = run_on_pty(
        [str(BATCHGATE), "--target", grpc_target, "cancel", "--from", "-", "--wait", "30"], listing.encode(), env
    )
    assert code == 1, output
    assert "\x1b[" in output  # drawn with terminal control sequences
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)
    assert "cancelling and waiting" in plain
    assert re.search(r"\b[0-2]/3\b", plain), "no frame before the end"  # live: frames while items are pending
    assert re.search(r"\b3/3\b.*2 cancelled, 1 error", plain)
    assert "3 batches in" in plain and "1 failed" in plain
    assert re.search(rf"│ 2\s+│ {missing}\s+│ openai\s+│ 404 ", plain), plain


def cancelled_streams(stack: Stack) -> int:
    """The CancelMany calls the service logged as ended by the caller going away (CANCELLED)."""
    return sum(
        1 for line in service_log(stack) if line.get("rpc") == "CancelMany" and line.get("outcome") == "CANCELLED"
    )


def test_ctrl_c_prints_what_was_done_and_stops_the_services_work(stack: Stack, grpc_target, sim: SimAdmin, t0: float):
    batches = [sim.seed("openai") for _ in range(3)]  # stay cancelling for an hour
    proc = subprocess.Popen(
        [str(BATCHGATE), "--target", grpc_target, "cancel", "--from", "-", "--wait", "600"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd="/",
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a terminal's Ctrl-C, even under CI
    )
    proc.stdin.write("".join(f"openai,{b}\n" for b in batches))
    proc.stdin.close()
    until(lambda: proc.poll() is not None or all(sim.calls("openai", since=t0, batch_id=b) for b in batches))
    assert proc.poll() is None  # every cancel made, the command still waiting
    ended_before = cancelled_streams(stack)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == 130 and out == ""
    assert err.startswith("3 items in ") and "3 cancelling; 3 without a result" in err
    assert err.endswith("batchgate: interrupted\n") and "Traceback" not in err
    # The service ends the stream, and with it the reads (left alone they would go on for the
    # wait): its access line says so; after it no read can follow.
    until(lambda: cancelled_streams(stack) > ended_before)


HOSTILE_IDS = ["[/]", "[link=http://evil.example]x[/link]", "a\x1b[31mred\x07b"]


def test_hostile_ids_are_text_on_a_terminal(grpc_target):
    """Ids come from a file: `[/]` must not crash the summary, `[link=...]` must not become a link,
    and ESC must not reach the terminal (#23 item 11). batchgate refuses them (400 each)."""
    env = {**ENV, "TERM": "xterm-256color", "COLUMNS": "200"}
    listing = "".join(json.dumps({"id": i, "provider": "openai"}) + "\n" for i in HOSTILE_IDS)
    code, output = run_on_pty([str(BATCHGATE), "--target", grpc_target, "cancel", "--from", "-"], listing.encode(), env)
    assert code == 1, output  # each item failed; before: exit 2 with MarkupError
    assert "MarkupError" not in output and "unexpected error" not in output
    assert "[/]" in output and "[link=http://evil.example]x[/link]" in output
    assert "\x1b]8;" not in output  # no terminal hyperlink
    assert "a\x1b[31mred" not in output and "\x07" not in output
    assert "a\\x1b[31mred\\x07b" in output


def test_hostile_ids_piped_show_escapes_not_control_bytes(grpc_target):
    listing = "".join(json.dumps({"id": i, "provider": "openai"}) + "\n" for i in HOSTILE_IDS)
    result = batchgate("cancel", "--from", "-", target=grpc_target, stdin=listing)
    assert result.returncode == 1
    assert "\x1b" not in result.stdout + result.stderr and "\x07" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("a\\x1b[31mred\\x07b openai error 400 ") for line in lines), lines
    assert any(line.startswith("[/] openai error 400 ") for line in lines), lines
    single = batchgate("cancel", "a\x1b]0;pwned\x07", "-p", "openai", "--wait", "5", target=grpc_target)
    assert single.returncode == 1 and "\x1b" not in single.stdout + single.stderr
