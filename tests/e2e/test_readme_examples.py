"""The README's Python examples, run as a new user runs them against `make run`'s sandbox, twice:
the second run meets the batches the first one cancelled, as a user re-running an example does
(issue 23: the OpenAI SDK example raised ConflictError 409 on its second run)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from gateway.paths import ROOT
from gateway.stack import Stack, free_port
from sandbox.server import SANDBOX_OPERATOR_KEY
from tests.e2e.conftest import SimAdmin

FENCED_PYTHON = re.compile(r"```python\n(.*?)```", re.S)


def runnable_examples() -> dict[str, str]:
    """The README's Python programs (blocks with their imports) that talk to the local gateway, by
    the import that names them."""
    blocks = FENCED_PYTHON.findall((ROOT / "README.md").read_text())
    examples = {}
    for block in blocks:
        imports = [line for line in block.splitlines() if line.startswith(("import ", "from "))]
        if imports and ("127.0.0.1:8080" in block or "127.0.0.1:50051" in block):
            examples[imports[-1]] = block
    return examples


EXAMPLES = runnable_examples()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        config=None,
        http_port=free_port(),
        grpc_port=free_port(),
        admin_port=free_port(),
        sandbox_cancel_delay_s=0.2,
        log_dir=tmp_path_factory.mktemp("readme-examples"),
        env={"DRAIN_DELAY_SECONDS": "0"},
    )
    stack.start(timeout=30)
    yield stack
    stack.stop()


def run(example: str, stack: Stack) -> subprocess.CompletedProcess:
    code = example.replace("127.0.0.1:8080", f"127.0.0.1:{stack.http_port}")
    code = code.replace("127.0.0.1:50051", f"127.0.0.1:{stack.grpc_port}")
    # Sandbox mode's virtual key that may cancel by selector (the kill-switch example needs one).
    env = {**os.environ, "BATCHGATE_VK": SANDBOX_OPERATOR_KEY}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)


def test_the_readme_has_the_examples_this_runs() -> None:
    joined = "\n".join(EXAMPLES.values())
    assert "client.batches.cancel(" in joined and "BatchgateClient(" in joined and "stub.Cancel(" in joined


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_a_readme_example_runs_and_runs_again(sandbox: Stack, name: str) -> None:
    first = run(EXAMPLES[name], sandbox)
    assert first.returncode == 0, first.stderr[-2000:]
    # Until the sandbox has finished cancelling what the first run cancelled.
    deadline = time.monotonic() + 5
    while SimAdmin(sandbox.sandbox_url).batch("openai", "batch_abc123")["status"] != "cancelled":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    again = run(EXAMPLES[name], sandbox)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Traceback" not in first.stderr + again.stderr
