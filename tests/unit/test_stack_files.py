"""Where a gateway run keeps its files (gateway/stack.py, service/infra/state.py): STATE_DIR for
state that outlives a restart, a run directory of its own in the temporary directory for the rest,
and the run directories of gateways that died are removed by the next start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.stack import remove_stale_run_dirs
from service.config.settings import Settings


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_run_directories_of_dead_gateways_are_removed_and_no_others(tmp_path: Path) -> None:
    dead = tmp_path / f"batchgate-run-{dead_pid()}-abc"
    (dead / "workers").mkdir(parents=True)
    (dead / "worker-0.sock").write_text("")
    alive = tmp_path / f"batchgate-run-{os.getpid()}-def"
    alive.mkdir()
    unrelated = [tmp_path / "batchgate-run-notapid-x", tmp_path / "batchgate-limits-x", tmp_path / "other"]
    for path in unrelated:
        path.mkdir()
    link = tmp_path / f"batchgate-run-{dead_pid()}-link"
    link.symlink_to(alive)

    assert remove_stale_run_dirs(tmp_path) == [dead]

    assert not dead.exists()
    assert alive.is_dir() and link.is_symlink() and all(path.is_dir() for path in unrelated)


def test_state_dir_comes_from_the_environment_else_build_state() -> None:
    assert Settings.from_env({"STATE_DIR": "var/state"}).state_dir == "var/state"
    assert Settings.from_env({"STATE_DIR": ""}).state_dir == Settings.from_env({}).state_dir == "build/state"
