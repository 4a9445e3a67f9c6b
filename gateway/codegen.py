"""Derives every generated file from protos/: what `make proto` runs, and the image build (Dockerfile).

    python -m gateway.codegen

- service/gen: the service's messages and gRPC stubs (their own imports made relative);
- build/batchgate.pb: the descriptor set Envoy transcodes with (imports and comments included);
- client/batchgate_client/_proto: the client's stubs (client/gen_stubs.py);
- build/openapi.json: the OpenAPI document the edge serves (gateway/openapi.py);
- build/googleapis: the .proto files googleapis-common-protos ships, for `buf` (make lint), which
  cannot read them from site-packages (google/longrunning/operations_proto.proto under its canonical
  name, operations.proto, as googleapis publishes it and the Python package registers it).

Needs grpcio-tools and googleapis-common-protos, which only the build needs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
from pathlib import Path

from gateway.render import DESCRIPTOR, OPENAPI, ROOT

PROTOS = ROOT / "protos"
SERVICE_GEN = ROOT / "service" / "gen"
GOOGLEAPIS = ROOT / "build" / "googleapis"
# googleapis-common-protos' file name -> the name googleapis (and `import`) uses.
CANONICAL = {"google/longrunning/operations_proto.proto": "google/longrunning/operations.proto"}


def _gen_stubs():
    """client/gen_stubs.py, loaded by path (the client is its own package, not one of ours)."""
    spec = importlib.util.spec_from_file_location("gen_stubs", ROOT / "client" / "gen_stubs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def contract_files() -> list[str]:
    """The contract's .proto files (protos/batchgate/...), relative to protos/."""
    return sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "batchgate").rglob("*.proto"))


def service_stubs(out: Path = SERVICE_GEN, descriptor: Path = DESCRIPTOR) -> None:
    from grpc_tools import protoc

    gen_stubs = _gen_stubs()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    descriptor.parent.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        *(f"-I{i}" for i in gen_stubs.include_dirs(PROTOS)),
        f"--python_out={tmp}",
        f"--grpc_python_out={tmp}",
        "--include_imports",
        "--include_source_info",
        f"--descriptor_set_out={descriptor}",
        *contract_files(),
    ]
    if protoc.main(args) != 0:
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
    service_stubs()
    _gen_stubs().generate()
    from gateway import openapi  # reads the descriptor and the service made just above

    openapi.write(DESCRIPTOR, OPENAPI)
    googleapis()


if __name__ == "__main__":
    main()
