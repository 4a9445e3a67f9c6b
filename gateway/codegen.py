"""Derives every generated file from protos/: what `make proto` runs, and the image build (Dockerfile).

    python -m gateway.codegen

- service/gen: the service's messages and gRPC stubs (their own imports made relative);
- build/batchgate.pb: the descriptor set Envoy transcodes with (imports and comments included);
- client/batchgate_client/_proto: the client's stubs (client/gen_stubs.py);
- build/openapi.json: the OpenAPI document the edge serves (gateway/openapi.py);
- build/googleapis: the .proto files googleapis-common-protos ships, which protoc imports from and
  `buf` (make lint) reads, since it cannot read them from site-packages;
  google/longrunning/operations_proto.proto under its canonical name, operations.proto, as
  googleapis publishes it and the Python package registers it (the stubs must import that name).

Needs grpcio-tools and googleapis-common-protos, which only the build needs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
from pathlib import Path

from gateway.paths import DESCRIPTOR, OPENAPI, ROOT

PROTOS = ROOT / "protos"
SERVICE_GEN = ROOT / "service" / "gen"
GOOGLEAPIS = ROOT / "build" / "googleapis"
# googleapis-common-protos' file name -> the name googleapis (and `import`) uses.
CANONICAL = {"google/longrunning/operations_proto.proto": "google/longrunning/operations.proto"}
DESCRIPTOR_EXTRAS = ("google/rpc/error_details.proto",)


def _gen_stubs():
    """client/gen_stubs.py, loaded by path (the client is its own package, not one of ours)."""
    spec = importlib.util.spec_from_file_location("gen_stubs", ROOT / "client" / "gen_stubs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def contract_files() -> list[str]:
    """The contract's .proto files (protos/batchgate/...), relative to protos/."""
    return sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "batchgate").rglob("*.proto"))


def include_dirs() -> list[str]:
    """protoc's import path: the contract, the googleapis files (build/googleapis, with
    operations.proto under its canonical name) and protobuf's own (grpcio-tools)."""
    from grpc_tools import protoc

    return [str(PROTOS), str(GOOGLEAPIS), os.path.join(os.path.dirname(protoc.__file__), "_proto")]


def service_stubs(out: Path = SERVICE_GEN, descriptor: Path = DESCRIPTOR) -> None:
    """The service's stubs (the ones for google.longrunning.Operations are those
    googleapis-common-protos ships) and Envoy's descriptor set."""
    from grpc_tools import protoc

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    descriptor.parent.mkdir(parents=True, exist_ok=True)
    includes = [f"-I{i}" for i in include_dirs()]
    # The messages' .pyi is what mypy reads for their types (make typecheck).
    stubs = [
        "protoc",
        *includes,
        f"--python_out={tmp}",
        f"--pyi_out={tmp}",
        f"--grpc_python_out={tmp}",
        *contract_files(),
    ]
    # Envoy's descriptor set: every type an Any in an answer can hold (an operation's metadata,
    # response and error details), google.rpc's error details included, or the transcoder answers 502.
    types = ["protoc", *includes, "--include_imports", "--include_source_info", f"--descriptor_set_out={descriptor}"]
    if protoc.main(stubs) != 0 or protoc.main([*types, *contract_files(), *DESCRIPTOR_EXTRAS]) != 0:
        raise SystemExit("codegen: protoc failed")
    # The stubs live inside the service package: their imports of each other are relative.
    for path in tmp.rglob("*_pb2_grpc.py"):
        path.write_text(re.sub(r"^from batchgate\.v1 import", "from . import", path.read_text(), flags=re.MULTILINE))
    for package in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
        (package / "__init__.py").touch()
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def googleapis(out: Path = GOOGLEAPIS) -> None:
    shutil.rmtree(out, ignore_errors=True)
    for file in importlib.metadata.files("googleapis-common-protos") or []:
        if file.suffix == ".proto":
            target = out / CANONICAL.get(str(file), str(file))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file.locate(), target)


def main() -> None:
    googleapis()
    service_stubs()
    _gen_stubs().generate()
    from gateway import openapi  # reads the descriptor and the service made just above

    openapi.write(DESCRIPTOR, OPENAPI)


if __name__ == "__main__":
    main()
