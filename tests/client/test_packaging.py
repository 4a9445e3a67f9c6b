"""`pip install ./client` gives a working package: the wheel built from the checkout carries the
stubs generated from protos/ (with their type stubs), the `batchgate` entry point and the declared
dependencies, and it imports on its own, without the service or the checkout on the path."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from gateway.paths import ROOT

CLIENT = ROOT / "client"


def test_the_wheel_carries_the_stubs_the_command_and_imports_alone(tmp_path: Path):
    # The .venv already holds the build requirements; no isolation keeps this offline and quick.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(CLIENT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("batchgate_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        meta = {Path(n).name: archive.read(n).decode() for n in names if ".dist-info/" in n}
    for stub in ("batchgate_pb2.py", "batchgate_pb2.pyi", "batchgate_pb2_grpc.py"):
        assert f"batchgate_client/_proto/batchgate/v1/{stub}" in names
    assert "batchgate_client/py.typed" in names
    assert not any(n.startswith(("service/", "tests/", "sandbox/")) for n in names)
    assert "batchgate = batchgate_client.cli:main" in meta["entry_points.txt"]
    # The licence travels with the wheel: its SPDX expression and its text.
    assert "License-Expression: Apache-2.0" in meta["METADATA"]
    assert "Apache License" in meta["LICENSE"] and "Version 2.0, January 2004" in meta["LICENSE"]
    for dependency in ("grpcio", "grpcio-status", "protobuf", "googleapis-common-protos", "rich"):
        assert f"Requires-Dist: {dependency}>=" in meta["METADATA"]

    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
    )
    # -I: neither the working directory, PYTHONPATH nor user site; the checkout is not on the path.
    code = (
        f"import sys; sys.path.insert(0, {str(site)!r});"
        "import batchgate_client, batchgate_client.cli;"
        f"assert batchgate_client.__file__.startswith({str(site)!r}), batchgate_client.__file__;"
        "from batchgate_client._proto.batchgate.v1 import batchgate_pb2 as pb;"
        "assert pb.CancelManyEvent(index=3).index == 3;"
        "assert not [m for m in sys.modules if m == 'service' or m.startswith('service.')]"
    )
    subprocess.run([sys.executable, "-I", "-c", code], check=True, cwd=tmp_path)


def test_the_checkout_is_apache_2_0_licensed():
    import tomllib

    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    for pyproject in (ROOT / "pyproject.toml", CLIENT / "pyproject.toml"):
        project = tomllib.loads(pyproject.read_text())["project"]
        assert project["license"] == "Apache-2.0", pyproject
        assert project["license-files"] == ["LICENSE"], pyproject
    assert (CLIENT / "LICENSE").read_text() == text
