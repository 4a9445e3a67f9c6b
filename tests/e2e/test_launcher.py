"""`python -m gateway.run`, what `make run` starts, run as users run it: a foreground process that
prints a working curl line and stops everything it started on SIGTERM/SIGINT."""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from gateway.paths import ROOT
from gateway.stack import free_port

CURL_LINE = re.compile(r"^\s*try: (curl .+)$")


def launcher_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CONFIG"}
    # Every port its own free one, and no metrics ports (worker i would serve METRICS_PORT + i, which
    # no free_port() reserves), so a launcher test never collides with another gateway on this machine.
    env.update(
        HTTP_PORT=str(free_port()),
        GRPC_PORT=str(free_port()),
        ADMIN_PORT=str(free_port()),
        METRICS_PORT="0",
        WORKERS="2",
        # Operations kept apart from `make run`'s build/state.
        STATE_DIR=tempfile.mkdtemp(prefix="batchgate-launcher-state-"),
    )
    env.update(extra)
    return env


def children_of(pid: int) -> dict[int, str]:
    """Direct children of `pid` (from /proc) with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, ValueError, IndexError):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def read_until_curl_line(proc: subprocess.Popen, timeout: float = 20.0) -> tuple[str, list[str]]:
    """Reads the launcher's stdout (raw fd, so select() sees everything) up to the curl line."""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buffer += chunk
        lines = buffer.decode(errors="replace").split("\n")
        for line in lines[:-1]:  # complete lines only
            match = CURL_LINE.match(line)
            if match:
                return match.group(1), lines[:-1]
    raise AssertionError(f"no `try: curl ...` line; exit={proc.poll()} stdout={buffer!r}")


def run_printed_curl(command: str) -> tuple[int, str]:
    """Runs the printed command as is (curl prints the body; we also ask for the status code)."""
    args = shlex.split(command)
    assert args[0] == "curl"
    if shutil.which("curl"):
        out = subprocess.run(
            [*args, "--silent", "--show-error", "--max-time", "10", "--write-out", "\n%{http_code}"],
            capture_output=True,
            text=True,
            timeout=15,
        )
        assert out.returncode == 0, out.stderr
        body, _, code = out.stdout.rpartition("\n")
        return int(code), body
    # No curl binary: send the same request (POST, no body) with requests.
    assert args[1:3] == ["-X", "POST"] and len(args) == 4
    resp = requests.post(args[3], timeout=10)
    return resp.status_code, resp.text


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "ctrl-c"])
def test_sandbox_mode_prints_a_working_curl_line_and_stops_cleanly(tmp_path: Path, how: str) -> None:
    """SIGTERM/SIGINT to the launcher alone, and Ctrl-C in a terminal (SIGINT to the whole group)."""
    env = launcher_env()
    ports = [int(env["HTTP_PORT"]), int(env["GRPC_PORT"]), int(env["ADMIN_PORT"])]
    stderr_path = tmp_path / "stderr.log"
    proc = spawn_launcher(env, stderr_path)
    try:
        command, printed = read_until_curl_line(proc)
        assert f"http://127.0.0.1:{env['HTTP_PORT']}/" in command
        assert f"  operations kept in: {env['STATE_DIR']}/operations.sqlite3" in printed
        assert (Path(env["STATE_DIR"]) / "operations.sqlite3").is_file()
        kids = children_of(proc.pid)
        roles = sorted(
            "sandbox"
            if " -m sandbox" in cmd
            else "service"
            if " -m service" in cmd
            else "envoy"
            if "envoy -c" in cmd
            else cmd
            for cmd in kids.values()
        )
        assert roles == ["envoy", "sandbox", "service", "service"], kids  # WORKERS=2

        status, body = run_printed_curl(command)

        assert status == 200, body
        answer = json.loads(body)
        assert answer["object"] == "batch" and answer["status"] == "cancelling"
        assert answer["extra_fields"]["provider"] == "openai"

        started = time.monotonic()
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    left = {pid: cmd for pid, cmd in kids.items() if alive(pid)}
    assert left == {}, f"orphans after shutdown: {left}"
    assert [p for p in ports if port_open(p)] == []
    assert "Traceback" not in stderr_path.read_text()


BROKEN_CONFIGS = {
    "missing env var": (
        {"providers": {"openai": {"keys": [{"value": "env.NOPE_MISSING"}]}}},
        "providers.openai.keys[0].value: environment variable NOPE_MISSING is not set",
    ),
    "unknown provider": (
        {"providers": {"openai": {"keys": []}, "nope": {}}},
        "providers.nope: unknown provider",
    ),
    "wrong type": (
        {"providers": {"openai": {"keys": [{"value": "k", "use_for_batch_api": "yes"}]}}},
        "providers.openai.keys[0].use_for_batch_api: expected true or false, got str",
    ),
    "not json": ("{not json", "{path}: not valid JSON (line 1 column 2:"),
    "deeply nested": (
        '{"providers": {"openai": {"keys": ' + "[" * 100_000 + "]" * 100_000 + "}}}",
        "providers.openai.keys[0][0][0]",
    ),
    "malformed redis url": (
        {
            "providers": {"openai": {"keys": [{"value": "k", "use_for_batch_api": True}]}},
            "governance": {"store": {"type": "redis", "url": "redis://:pw@[::1/0"}},
        },
        "governance.store.url: not a valid URL (check the host and its brackets)",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_CONFIGS))
def test_broken_config_fails_with_one_clear_line(tmp_path: Path, case: str) -> None:
    config, expected = BROKEN_CONFIGS[case]
    path = tmp_path / "config.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    env = launcher_env(CONFIG=str(path))
    ports = [int(env["HTTP_PORT"]), int(env["GRPC_PORT"]), int(env["ADMIN_PORT"])]
    env.pop("NOPE_MISSING", None)

    done = subprocess.run(
        [sys.executable, "-m", "gateway.run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )

    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert f"batchgate: config error: {expected.format(path=path)}" in done.stderr, output
    assert "Traceback" not in output
    assert "batchgate is up" not in done.stdout
    assert [p for p in ports if port_open(p)] == []


# --- what a run leaves behind (issue 23, item 12) --------------------------------------------------

LIMITED_KEY = "sk-bf-launcher-state"


def limited_config(path: Path) -> Path:
    """A config whose one virtual key may make one call an hour; its provider is a closed port (a
    counted call is counted before anything goes upstream, whatever upstream then does)."""
    config = {
        "providers": {
            "openai": {
                "keys": [{"name": "k", "value": "sk-unused", "use_for_batch_api": True}],
                "network_config": {"base_url": "http://127.0.0.1:9", "max_retries": 0},
            }
        },
        "governance": {
            "rate_limits": [{"id": "one-an-hour", "request_max_limit": 1, "request_reset_duration": "1h"}],
            "virtual_keys": [
                {
                    "id": "team",
                    "value": LIMITED_KEY,
                    "rate_limit_id": "one-an-hour",
                    "provider_configs": [{"provider": "openai"}],
                }
            ],
        },
        "client": {"enforce_auth_on_inference": True},
    }
    path.write_text(json.dumps(config))
    return path


def spawn_launcher(env: dict[str, str], stderr: Path, mode: str = "w") -> subprocess.Popen:
    """`make run`'s launcher (`python -m gateway.run`) in a session of its own, its stdout piped
    unbuffered (the curl line is read from it), its stderr to the file `stderr` (opened with `mode`)."""
    with open(stderr, mode) as err:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.run"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            bufsize=0,
            start_new_session=True,
        )


def start_launcher(env: dict[str, str], stderr: Path) -> subprocess.Popen:
    proc = spawn_launcher(env, stderr, "a")
    read_until_curl_line(proc)
    return proc


def limited_call(env: dict[str, str]) -> int:
    url = f"http://127.0.0.1:{env['HTTP_PORT']}/v1/batches/batch_state/cancel?provider=openai"
    return requests.post(url, headers={"x-bf-vk": LIMITED_KEY}, timeout=10).status_code


def stop_launcher(proc: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        proc.send_signal(sig)
        proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_a_run_keeps_state_in_state_dir_only_and_leaves_no_temp_files(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A clean stop leaves nothing in the temporary directory; a hard stop's leftovers go at the next
    start; the rate-limit counts are in STATE_DIR and outlive a restart."""
    # A temporary directory of the test's own, with a short path (the sockets live in it).
    temp, state = Path(tempfile.mkdtemp(prefix="bg-", dir="/tmp")), tmp_path / "state"
    request.addfinalizer(lambda: shutil.rmtree(temp, ignore_errors=True))
    env = launcher_env(CONFIG=str(limited_config(tmp_path / "config.json")), WORKERS="1")
    env.update(TMPDIR=str(temp), STATE_DIR=str(state), DRAIN_DELAY_SECONDS="0")
    stderr = tmp_path / "stderr.log"

    first = start_launcher(env, stderr)
    assert limited_call(env) != 429  # counted (the provider is down)
    assert [p.name.startswith(f"batchgate-run-{first.pid}-") for p in temp.iterdir()] == [True]
    stop_launcher(first, signal.SIGTERM)
    assert first.returncode == 0
    assert list(temp.iterdir()) == []
    assert (state / "rate-limits.sqlite3").is_file()

    hard = start_launcher(env, stderr)
    assert limited_call(env) == 429  # the count outlived the restart
    stop_launcher(hard, signal.SIGKILL)
    (left,) = temp.iterdir()
    assert left.name.startswith(f"batchgate-run-{hard.pid}-")
    for _ in range(100):  # its children die with it (PR_SET_PDEATHSIG); wait until the ports are free
        if not any(port_open(int(env[name])) for name in ("HTTP_PORT", "GRPC_PORT", "ADMIN_PORT")):
            break
        time.sleep(0.1)

    last = start_launcher(env, stderr)
    assert [p.name.startswith(f"batchgate-run-{last.pid}-") for p in temp.iterdir()] == [True]
    assert limited_call(env) == 429
    stop_launcher(last, signal.SIGTERM)
    assert list(temp.iterdir()) == []
    assert "Traceback" not in stderr.read_text()
