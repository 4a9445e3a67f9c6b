"""Tools the harness needs, installed on demand: h2load (Debian's nghttp2-client), pip requirements
(matplotlib, py-spy) and the generated gRPC code. Every install is bounded in time, so a registry
that does not answer costs a fallback, never a hung run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import ROOT, log


def ensure_h2load() -> str | None:
    """Path of h2load, installing Debian's nghttp2-client when missing and allowed."""
    found = shutil.which("h2load")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    log("h2load missing: apt-get install -y nghttp2-client")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "nghttp2-client"]
    try:  # bounded: a registry that does not answer must not hang the run (the Python client remains)
        if subprocess.run(install, env=env, capture_output=True, timeout=180).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=180)
            subprocess.run(install, env=env, capture_output=True, timeout=180)
    except subprocess.TimeoutExpired:
        log("apt-get did not finish in time; using the Python client")
    return shutil.which("h2load")


def ensure_pip_requirements(requirements: Path, module: str) -> bool:
    """Imports `module`, pip-installing `requirements` into this interpreter's environment first
    when it is missing. False when it still cannot be imported."""
    if _importable(module):
        return True
    log(f"{module} missing: pip install -r {requirements.relative_to(ROOT)}")
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(requirements)],
            capture_output=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        log(f"installing {module} did not finish in time")
    return _importable(module)


def _importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def ensure_generated_code() -> None:
    if (
        not (ROOT / "service" / "gen" / "batchgate" / "v1" / "batchgate_pb2.py").exists()
        or not (ROOT / "build" / "batchgate.pb").exists()
    ):
        log("generated code missing: make proto")
        subprocess.run(["make", "-C", str(ROOT), "proto"], check=True, capture_output=True)


def tool_version(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"
