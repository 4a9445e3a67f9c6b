"""The REST contract against the latest release: `buf breaking` (make lint) compares messages,
fields and RPCs with protos/release.binpb but not the `google.api.http` bindings, so this test does:
every route a released RPC had is still served, with the same body mapping."""

from __future__ import annotations

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from gateway.openapi import _bindings, load_descriptor
from gateway.paths import DESCRIPTOR, ROOT

RELEASE = ROOT / "protos" / "release.binpb"


def routes(fds: descriptor_pb2.FileDescriptorSet) -> dict[str, set[tuple[str, str, str]]]:
    """RPC full name -> its (HTTP method, path template, body) bindings."""
    out: dict[str, set[tuple[str, str, str]]] = {}
    for file in fds.file:
        for service in file.service:
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                out[f"{file.package}.{service.name}.{method.name}"] = set(_bindings(rule))
    return out


def test_every_released_route_is_still_served() -> None:
    # A buf image is a FileDescriptorSet on the wire (buf's own fields are unknown fields here).
    released = routes(load_descriptor(RELEASE))
    current = routes(load_descriptor(DESCRIPTOR))
    assert released["batchgate.v1.BatchService.Cancel"], "the release image carries no bindings"
    missing = {rpc: sorted(bindings - current.get(rpc, set())) for rpc, bindings in released.items()}
    assert not {rpc: gone for rpc, gone in missing.items() if gone}, "a released REST route was removed"
