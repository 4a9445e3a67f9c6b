"""Generates the client's gRPC stubs from the repository's `protos/` into `batchgate_client/_proto`.

One function, used by `make proto` and by the package build (setup.py), so a checkout, a wheel and
an sdist all carry stubs made the same way. The stubs' own imports are made relative: the client
must not depend on a top-level `batchgate` module, nor on the service's copy under `service/gen`.

    python client/gen_stubs.py [PROTOS_DIR]
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "batchgate_client" / "_proto"
PROTO = "batchgate/v1/batchgate.proto"
DEFAULT_PROTOS = HERE.parent / "protos"


def stubs_present(out: Path = OUT) -> bool:
    return (out / "batchgate" / "v1" / "batchgate_pb2.py").is_file()


def generate(protos: Path = DEFAULT_PROTOS, out: Path = OUT) -> None:
    """Runs protoc (grpcio-tools) on `protos/batchgate/v1/batchgate.proto`: messages, gRPC stubs and
    type stubs (.pyi), then rewrites `from batchgate.v1 import` to a relative import."""
    import google.api  # googleapis-common-protos ships google/api/annotations.proto
    import google.longrunning
    from grpc_tools import protoc  # build-time only: grpcio-tools

    if not (protos / PROTO).is_file():
        raise SystemExit(f"gen_stubs: {protos / PROTO} not found")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # googleapis-common-protos ships google/longrunning/operations.proto as operations_proto.proto
    # but registers it in Python under the canonical name, which the stubs must import: protoc reads
    # a copy under that name (from a directory removed with the temporary output).
    canonical = tmp.with_name(out.name + ".include") / "google" / "longrunning"
    shutil.rmtree(canonical.parent.parent, ignore_errors=True)
    canonical.mkdir(parents=True)
    shipped = Path(list(google.longrunning.__path__)[0]) / "operations_proto.proto"
    shutil.copyfile(shipped, canonical / "operations.proto")
    includes = [
        str(protos),
        str(canonical.parent.parent),
        os.path.join(os.path.dirname(protoc.__file__), "_proto"),
        os.path.dirname(os.path.dirname(list(google.api.__path__)[0])),
    ]
    args = [
        "protoc",
        *(f"-I{i}" for i in includes),
        f"--python_out={tmp}",
        f"--pyi_out={tmp}",
        f"--grpc_python_out={tmp}",
        PROTO,
    ]
    failed = protoc.main(args) != 0
    shutil.rmtree(canonical.parent.parent, ignore_errors=True)
    if failed:
        raise SystemExit("gen_stubs: protoc failed")
    for path in (tmp / "batchgate" / "v1").glob("*.py*"):
        text = path.read_text()
        path.write_text(re.sub(r"^from batchgate\.v1 import", "from . import", text, flags=re.MULTILINE))
    for package in (tmp, tmp / "batchgate", tmp / "batchgate" / "v1"):
        (package / "__init__.py").write_text('"""Generated from protos/ by client/gen_stubs.py. Do not edit."""\n')
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


if __name__ == "__main__":
    generate(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else DEFAULT_PROTOS)
