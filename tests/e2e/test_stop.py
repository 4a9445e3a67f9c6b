"""`batchgate stop` and `batchgate operations` as an operator runs them: the installed command as a
subprocess against a real gateway (service workers and Envoy, with gateway admin credentials) that
shares the session's sandbox, whose recorded state shows which batches were cancelled.

Through Envoy's port (native gRPC passed through, WaitOperation included); on a pseudo-terminal,
the dry run's table, the question and its answer (yes: cancelled and followed with a progress
bar; no: nothing cancelled, exit 2); Ctrl-C while following leaves the operation running and says
how to follow or cancel it. Every test selects only its own batches by a metadata tag of its own.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from gateway.stack import Stack, free_port
from sandbox.server import gateway_config
from tests.e2e.conftest import SimAdmin
from tests.e2e.test_cli import BATCHGATE, ENV, batchgate, no_traceback

ADMIN_PASSWORD = f"e2e-admin-{uuid.uuid4().hex[:12]}"
ADMIN_ENV = {"BATCHGATE_ADMIN": "admin", "BATCHGATE_ADMIN_PASSWORD": ADMIN_PASSWORD}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def ops_gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway on the session sandbox with admin credentials (selector mode needs them or a virtual
    key that allows it) and, as every test gateway, an operations database of its own."""
    directory = tmp_path_factory.mktemp("stop-gateway")
    config = gateway_config(stack.sandbox_url)
    config["auth_config"] = {"is_enabled": True, "admin_username": "admin", "admin_password": ADMIN_PASSWORD}
    path = directory / "config.json"
    path.write_text(json.dumps(config))
    gateway = Stack(
        config=path,
        http_port=free_port(),
        grpc_port=free_port(),
        admin_port=free_port(),
        log_dir=directory / "logs",
    )
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def envoy(ops_gateway: Stack) -> str:
    return f"127.0.0.1:{ops_gateway.http_port}"


def tagged(sim: SimAdmin, n: int, provider: str = "openai", **fields) -> tuple[str, list[str]]:
    """`n` running batches with a metadata tag of their own; returns (tag, ids)."""
    tag = uuid.uuid4().hex[:12]
    ids = [sim.seed(provider, metadata={"run": tag}, status="in_progress", **fields) for _ in range(n)]
    return tag, ids


def status(sim: SimAdmin, batch_id: str, provider: str = "openai") -> str:
    return sim.batch(provider, batch_id)["status"]


def test_stop_through_envoy_cancels_exactly_the_tagged_batches(envoy, sim: SimAdmin):
    tag, ids = tagged(sim, 3)
    _, others = tagged(sim, 1)
    result = batchgate("stop", "--yes", "-p", "openai", "--metadata", f"run={tag}", target=envoy, env=ADMIN_ENV)
    no_traceback(result)
    assert result.returncode == 0, result.stderr
    assert sorted(line.split()[:3] for line in result.stdout.splitlines()) == [
        [batch_id, "openai", "cancelled"] for batch_id in sorted(ids)
    ]
    assert re.search(r"done in \d+s: 3 matched: 3 cancel accepted, 0 already ended, 0 failed\n$", result.stderr)
    assert {status(sim, batch_id) for batch_id in ids} == {"cancelling"}
    assert status(sim, others[0]) == "in_progress"
    # The operation is there to read back, as JSON in the REST shape.
    listed = batchgate("operations", "list", "-o", "json", target=envoy, env=ADMIN_ENV)
    newest = json.loads(listed.stdout.splitlines()[0])
    assert newest["done"] is True and newest["metadata"]["selector"]["metadata"] == {"run": tag}


def test_a_dry_run_through_envoy_lists_and_cancels_nothing(envoy, sim: SimAdmin):
    tag, ids = tagged(sim, 2)
    result = batchgate("stop", "--dry-run", "--metadata", f"run={tag}", "-o", "json", target=envoy, env=ADMIN_ENV)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert sorted(b["id"] for b in body["response"]["batches"]) == sorted(ids)
    assert {b["outcome"] for b in body["response"]["batches"]} == {"matched"}
    assert {status(sim, batch_id) for batch_id in ids} == {"in_progress"}


def test_without_credentials_the_selector_is_refused_with_exit_2(envoy, sim: SimAdmin):
    tag, ids = tagged(sim, 1)
    result = batchgate("stop", "--yes", "--metadata", f"run={tag}", target=envoy)
    assert result.returncode == 2 and "401 virtual_key_required" in result.stderr
    assert status(sim, ids[0]) == "in_progress"


class Terminal:
    """The command on a pseudo-terminal (stdin, stdout and stderr), as an operator at a keyboard."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd="/")
        os.close(slave)
        self.output = ""

    def read_until(self, text: str, timeout: float = 60) -> str:
        """Reads until the plain text (control sequences removed) holds `text`."""
        while text not in ANSI.sub("", self.output):
            ready, _, _ = select.select([self.master], [], [], timeout)
            assert ready, f"no {text!r} within {timeout}s; got {self.output!r}"
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            assert chunk, f"the command ended before {text!r}: {self.output!r}"
            self.output += chunk.decode(errors="replace")
        return ANSI.sub("", self.output)

    def type(self, line: str) -> None:
        os.write(self.master, line.encode())

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        while True:
            ready, _, _ = select.select([self.master], [], [], timeout)
            if not ready:
                break
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.output += chunk.decode(errors="replace")
        code = self.proc.wait(timeout=timeout)
        os.close(self.master)
        return code, ANSI.sub("", self.output)


def terminal(target: str, *args: str) -> Terminal:
    env = {**ENV, **ADMIN_ENV, "TERM": "xterm-256color", "COLUMNS": "160"}
    return Terminal([str(BATCHGATE), "--target", target, *args], env)


def test_on_a_terminal_it_shows_the_matches_asks_and_follows_with_a_progress_bar(envoy, sim: SimAdmin):
    tag, ids = tagged(sim, 2)
    term = terminal(envoy, "stop", "--metadata", f"run={tag}")
    shown = term.read_until("[y/N]")
    assert "2 batches match" in shown and all(batch_id in shown for batch_id in ids)
    assert "(dry run): 2 matched (openai 2)" in shown
    assert "Cancel 2 batches?" in shown
    assert {status(sim, batch_id) for batch_id in ids} == {"in_progress"}  # nothing before the answer
    term.type("y\n")
    code, output = term.finish()
    assert code == 0, output
    assert "\x1b[" in term.output  # drawn with terminal control sequences
    assert re.search(r"done in \d+s: 2 matched: 2 cancel accepted, 0 already ended, 0 failed", output)
    assert "cancelled" in output.split("[y/N]")[1]  # the outcome table
    assert {status(sim, batch_id) for batch_id in ids} == {"cancelling"}


def test_answering_no_cancels_nothing_and_exits_2(envoy, sim: SimAdmin):
    tag, ids = tagged(sim, 1)
    term = terminal(envoy, "stop", "--metadata", f"run={tag}")
    term.read_until("[y/N]")
    term.type("n\n")
    code, output = term.finish()
    assert code == 2 and "batchgate: nothing was cancelled" in output
    assert status(sim, ids[0]) == "in_progress"


def test_ctrl_c_at_the_question_cancels_nothing_and_exits_130(envoy, sim: SimAdmin):
    tag, ids = tagged(sim, 1)
    term = terminal(envoy, "stop", "--metadata", f"run={tag}")
    term.read_until("[y/N]")
    term.proc.send_signal(signal.SIGINT)
    code, output = term.finish()
    assert code == 130 and "batchgate: interrupted; nothing was cancelled" in output and "Traceback" not in output
    assert status(sim, ids[0]) == "in_progress"


def test_ctrl_c_while_following_leaves_the_operation_running(envoy, sim: SimAdmin):
    # The sandbox keeps them `cancelling` for an hour: with --wait the operation stays `waiting`.
    tag, ids = tagged(sim, 2, cancel_delay_s=3600)
    proc = subprocess.Popen(
        [str(BATCHGATE), "--target", envoy, "stop", "--yes", "--wait", "--metadata", f"run={tag}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**ENV, **ADMIN_ENV},
        cwd="/",
    )
    lines = []
    for line in proc.stderr:  # plain progress lines, one per change
        lines.append(line)
        if " waiting: " in line:
            break
    name = lines[-1].split()[0]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err == (
        f"batchgate: stopped following; {name} continues in batchgate. Follow it: batchgate operations wait "
        f"{name}; stop it: batchgate operations cancel {name}\n"
    )
    assert "Traceback" not in err
    running = batchgate("operations", "get", name, "-o", "json", target=envoy, env=ADMIN_ENV)
    assert running.returncode == 0 and json.loads(running.stdout)["metadata"]["state"] == "waiting"
    stopped = batchgate("operations", "cancel", name, target=envoy, env=ADMIN_ENV)
    assert stopped.returncode == 0, stopped.stderr
    waited = batchgate("operations", "wait", name, "-o", "json", target=envoy, env=ADMIN_ENV)
    body = json.loads(waited.stdout)
    assert waited.returncode == 1 and body["done"] is True and body["error"]["code"] == 1
    assert {status(sim, batch_id) for batch_id in ids} == {"cancelling"}  # the cancels had gone out


def test_the_terminal_shows_a_hostile_tag_as_text(envoy, sim: SimAdmin):
    tag = f"[red]x[/red]\x1b]0;pwn\x07{uuid.uuid4().hex[:6]}"
    batch_id = sim.seed("openai", metadata={"run": tag}, status="in_progress")
    dry = batchgate("stop", "--dry-run", "--metadata", f"run={tag}", "-o", "json", target=envoy, env=ADMIN_ENV)
    body = json.loads(dry.stdout)
    assert [b["id"] for b in body["response"]["batches"]] == [batch_id]
    code, output = terminal(envoy, "operations", "get", body["name"]).finish()
    assert code == 0, output
    assert "metadata run=[red]x[/red]\\x1b]0;pwn\\x07" in output  # escaped, never markup
    assert "\x1b]0;pwn" not in output and batch_id in output
