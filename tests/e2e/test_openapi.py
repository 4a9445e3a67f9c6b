"""The OpenAPI document the edge serves (gateway/openapi.py, `GET /openapi.json`), checked by
openapi-spec-validator, and the running edge fuzzed against it by schemathesis: every operation gets
a bounded number of generated requests (property-based, deterministic), and each answer must be no
5xx, with a documented status, the documented content type and a body that matches the schema (an
NDJSON stream line by line).

One gateway for the module, in sandbox mode (every provider simulated, unknown ids exist), whose
cancelled batches end at once, so that generated `wait_seconds` do not make the run slow.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.paths import OPENAPI
from gateway.render import OPENAPI_PATH
from gateway.stack import Stack, free_port

NDJSON = "application/x-ndjson"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Generated requests per operation (plus the explicit and boundary cases schemathesis adds).
EXAMPLES = 25


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        config=None,
        http_port=free_port(),
        grpc_port=free_port(),
        admin_port=free_port(),
        sandbox_cancel_delay_s=0,
        log_dir=Path(tmp_path_factory.mktemp("openapi-logs")),
    )
    stack.start(timeout=30)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def document(edge: Stack) -> dict:
    resp = requests.get(edge.http_url + OPENAPI_PATH, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    return resp.json()


def test_the_edge_serves_the_generated_document_and_it_is_valid_openapi_3_1(document: dict) -> None:
    assert document == json.loads(OPENAPI.read_text())
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    operations = {(m.upper(), p) for p, item in document["paths"].items() for m in item}
    assert ("POST", "/v1/batches/{batch_id}/cancel") in operations
    assert ("POST", "/v1/batches/cancel") in operations
    assert ("GET", OPENAPI_PATH) in operations


def test_only_get_serves_the_document(edge: Stack) -> None:
    resp = requests.post(edge.http_url + OPENAPI_PATH, timeout=10)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "route_not_found"


@schemathesis.check
def ndjson_lines_conform(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case):
    """Each line of an NDJSON answer is one message of the documented schema (schemathesis reads
    only JSON bodies whole)."""
    if not response.headers.get("content-type", [""])[0].startswith(NDJSON):
        return None
    operation = case.operation.definition.raw
    schema = operation["responses"][str(response.status_code)]["content"][NDJSON]["schema"]
    root = case.operation.schema.raw_schema
    validator = Draft202012Validator({**schema, "components": root["components"]})
    lines = response.content.decode().splitlines()
    assert lines, "an NDJSON answer without a line"
    for line in lines:
        errors = sorted(validator.iter_errors(json.loads(line)), key=str)
        assert not errors, f"NDJSON line {line!r} does not match the schema: {errors[0].message}"
    return None


def unimplemented_rpcs() -> set[str]:
    """RPCs of the contract the service does not implement yet: the generated base class still
    answers them (501 UNIMPLEMENTED). An RPC can land in protos/ before its servicer does (issue
    27's CancelMatching did); such an RPC is named in a skip below, not fuzzed, until it is."""
    from service.edge.api import BatchServicer
    from service.gen.batchgate.v1.batchgate_pb2_grpc import BatchServiceServicer

    return {
        f"/batchgate.v1.BatchService/{name}"
        for name in vars(BatchServiceServicer)
        if name[:1].isupper() and getattr(BatchServicer, name) is getattr(BatchServiceServicer, name)
    }


UNIMPLEMENTED = unimplemented_rpcs()
# The document `make proto` wrote, which the edge serves (the first test compares them).
DOCUMENT = json.loads(OPENAPI.read_text())
NOT_FUZZED = [
    op["operationId"]
    for item in DOCUMENT["paths"].values()
    for op in item.values()
    if op.get("x-grpc-method") in UNIMPLEMENTED
]
schema = schemathesis.openapi.from_dict(DOCUMENT)
if NOT_FUZZED:
    schema = schema.exclude(operation_id=NOT_FUZZED)


def test_every_documented_rpc_is_fuzzed() -> None:
    documented = {op.get("x-grpc-method") for item in DOCUMENT["paths"].values() for op in item.values()}
    assert UNIMPLEMENTED <= documented
    if UNIMPLEMENTED:
        pytest.skip(f"not implemented by the service yet, so not fuzzed: {', '.join(sorted(UNIMPLEMENTED))}")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_edge_answers_as_documented(edge: Stack, case: schemathesis.Case) -> None:
    case.call_and_validate(base_url=edge.http_url, checks=CHECKS, additional_checks=[ndjson_lines_conform], timeout=30)


def test_a_bulk_stream_is_checked_line_by_line(edge: Stack) -> None:
    """Generated bulk bodies rarely hold only valid items; this one does, so its 200 stream (one
    event per item) goes through the same checks, NDJSON line by line."""
    bulk = schema["/v1/batches/cancel"]["POST"]
    case = bulk.Case(
        body={"batches": [{"id": "batch_openapi_1", "provider": "openai"}, {"id": "x/y", "provider": "openai"}]}
    )
    resp = case.call_and_validate(
        base_url=edge.http_url, checks=CHECKS, additional_checks=[ndjson_lines_conform], timeout=30
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"] == [NDJSON]
    events = [json.loads(line) for line in resp.content.decode().splitlines()]
    assert sorted((e["index"], "batch" in e, "error" in e) for e in events) == [(0, True, False), (1, False, True)]
