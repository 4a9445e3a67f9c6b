"""gateway/openapi.py on contracts other than today's: path templates of every shape, a long-running
RPC with `google.longrunning.operation_info`, the standard Operations service's bindings, well-known
types and a server stream, compiled by protoc here, so an RPC added to protos/ later is documented
without touching the generator."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc
from openapi_spec_validator import validate

from gateway.codegen import GOOGLEAPIS
from gateway.openapi import build, parse_template, transcoded_services

JOBS = """
syntax = "proto3";
package t.v1;
import "google/api/annotations.proto";
import "google/longrunning/operations.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

// Jobs for the test.
service Jobs {
  // Starts one.
  rpc Start(StartRequest) returns (google.longrunning.Operation) {
    option (google.api.http) = {post: "/v1/jobs:start" body: "*"};
    option (google.longrunning.operation_info) = {response_type: "StartResult" metadata_type: "StartMetadata"};
  }
  rpc Watch(WatchRequest) returns (stream StartMetadata) {
    option (google.api.http) = {get: "/v1/{name=jobs/*}:watch"};
  }
  rpc Untranscoded(WatchRequest) returns (StartResult);
}

message StartRequest {
  string name = 1;
  repeated string tags = 2;
  map<string, int32> weights = 3;
  google.protobuf.Duration timeout = 4;
}
message WatchRequest {
  string name = 1;
  Filter filter = 2;
  repeated uint32 ids = 3;
  int64 since = 4;
}
message Filter { string state = 1; State level = 2; }
enum State { STATE_UNSPECIFIED = 0; STATE_RUNNING = 1; }
message StartMetadata {
  google.protobuf.Timestamp started = 1;
  optional uint32 done = 2;
  oneof progress { uint32 percent = 3; string phase = 4; }
  google.protobuf.StringValue note = 5;
}
message StartResult { repeated string names = 1; double ratio = 2; bytes digest = 3; }
"""


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    src = tmp_path_factory.mktemp("protos")
    (src / "t" / "v1").mkdir(parents=True)
    (src / "t" / "v1" / "jobs.proto").write_text(JOBS)
    out = src / "jobs.pb"
    include = [str(src), os.path.join(os.path.dirname(protoc.__file__), "_proto"), str(GOOGLEAPIS)]
    args = ["protoc", *(f"-I{i}" for i in include), "--include_imports", "--include_source_info"]
    assert protoc.main([*args, f"--descriptor_set_out={out}", "t/v1/jobs.proto"]) == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


@pytest.fixture(scope="module")
def document(jobs: descriptor_pb2.FileDescriptorSet) -> dict:
    doc = build(jobs, ["t.v1.Jobs", "google.longrunning.Operations"])
    validate(doc)
    return doc


@pytest.mark.parametrize(
    ("template", "path", "params", "fixed"),
    [
        ("/v1/batches/{batch_id}/cancel", "/v1/batches/{batch_id}/cancel", {"batch_id": "batch_id"}, {}),
        (
            "/{surface=openai}/v1/batches/{batch_id}/cancel",
            "/openai/v1/batches/{batch_id}/cancel",
            {"batch_id": "batch_id"},
            {"surface": "openai"},
        ),
        (
            "/genai/v1beta/batches/{batch_id}:cancel",
            "/genai/v1beta/batches/{batch_id}:cancel",
            {"batch_id": "batch_id"},
            {},
        ),
        ("/v1/{name=operations}", "/v1/operations", {}, {"name": "operations"}),
        ("/v1/{name=operations/**}", "/v1/operations/{name}", {"name": "name"}, {}),
        ("/v1/{name=operations/**}:cancel", "/v1/operations/{name}:cancel", {"name": "name"}, {}),
        ("/v1/{parent.id=projects/*}/jobs", "/v1/projects/{parent_id}/jobs", {"parent_id": "parent.id"}, {}),
    ],
)
def test_path_templates(template: str, path: str, params: dict, fixed: dict) -> None:
    route = parse_template(template)
    assert (route.path, route.params, route.fixed) == (path, params, fixed)


def test_the_operations_service_gets_its_standard_routes(document: dict) -> None:
    routes = {(m, p): op for p, item in document["paths"].items() for m, op in item.items()}
    assert {
        ("get", "/v1/operations"),
        ("get", "/v1/operations/{name}"),
        ("delete", "/v1/operations/{name}"),
        ("post", "/v1/operations/{name}:cancel"),
        ("post", "/v1/jobs:start"),
        ("get", "/v1/jobs/{name}:watch"),
    } <= set(routes)
    listing = routes[("get", "/v1/operations")]
    assert {p["name"] for p in listing["parameters"] if p["in"] == "query"} >= {"filter", "page_size", "page_token"}
    get = routes[("get", "/v1/operations/{name}")]
    assert "as `operations/<name>`" in next(p for p in get["parameters"] if p["in"] == "path")["description"]
    assert not any("Untranscoded" in op["operationId"] for op in routes.values())


def test_a_long_running_rpc_types_its_metadata_and_response(document: dict) -> None:
    start = document["paths"]["/v1/jobs:start"]["post"]
    schema = start["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["allOf"][0] == {"$ref": "#/components/schemas/google.longrunning.Operation"}
    packed = schema["allOf"][1]["properties"]
    assert packed["metadata"] == {"$ref": "#/components/schemas/Any.t.v1.StartMetadata"}
    metadata = document["components"]["schemas"]["Any.t.v1.StartMetadata"]
    assert metadata["properties"]["@type"] == {"const": "type.googleapis.com/t.v1.StartMetadata"}
    operation = document["components"]["schemas"]["google.longrunning.Operation"]
    assert operation["properties"]["metadata"]["$ref"] == "#/components/schemas/google.protobuf.Any"
    assert document["components"]["schemas"]["google.protobuf.Any"]["required"] == ["@type"]
    body = start["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["weights"] == {
        "type": "object",
        "additionalProperties": {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1},
    }
    assert body["properties"]["timeout"] == {"$ref": "#/components/schemas/google.protobuf.Duration"}


def test_messages_follow_the_json_mapping(document: dict) -> None:
    schemas = document["components"]["schemas"]
    metadata = schemas["t.v1.StartMetadata"]
    assert "required" not in metadata  # every field has presence: a message, optional, a oneof member
    assert schemas["google.protobuf.Timestamp"]["format"] == "date-time"
    assert schemas["google.protobuf.StringValue"]["type"] == "string"
    result = schemas["t.v1.StartResult"]
    assert result["required"] == ["names", "ratio", "digest"]
    assert result["properties"]["digest"]["contentEncoding"] == "base64"
    assert schemas["t.v1.State"] == {"type": "string", "enum": ["STATE_UNSPECIFIED", "STATE_RUNNING"]}
    watch = document["paths"]["/v1/jobs/{name}:watch"]["get"]
    assert "application/x-ndjson" in watch["responses"]["200"]["content"]
    query = {p["name"]: p for p in watch["parameters"] if p["in"] == "query"}
    assert set(query) == {"filter.state", "filter.level", "ids", "since"}
    assert query["ids"]["explode"] is True
    assert query["since"]["schema"]["format"] == "int64"


def test_the_edge_transcodes_the_services_the_document_describes(tmp_path: Path) -> None:
    assert transcoded_services() == ["batchgate.v1.BatchService", "google.longrunning.Operations"]
    template = tmp_path / "envoy.yaml.tmpl"
    template.write_text(
        "  services: [batchgate.v1.BatchService]\n"
        "  services: [batchgate.v1.BatchService, google.longrunning.Operations]\n"
    )
    assert transcoded_services(template) == ["batchgate.v1.BatchService", "google.longrunning.Operations"]
