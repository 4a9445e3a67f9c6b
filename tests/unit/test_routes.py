"""The REST route table is read from the proto's google.api.http annotations."""

from __future__ import annotations

import re

import pytest

from service.domain.errors import GatewayError, InvalidRequest
from service.edge.api import ROUTES, command_from_proto
from service.edge.routes import WAITING_RPCS, templates
from service.edge.surfaces import SURFACES
from service.gen.batchgate.v1 import batchgate_pb2 as pb


@pytest.mark.parametrize(
    ("path", "batch_id", "surface"),
    [
        ("/v1/batches/batch_1/cancel", "batch_1", ""),
        ("/v1/batches/batch_1/cancel?provider=openai", "batch_1", ""),
        ("/openai/v1/batches/b%3A1/cancel", "b:1", "openai"),
        ("/openai/batches/batches%2Fx/cancel?provider=gemini", "batches/x", "openai"),
    ],
)
def test_original_path_gives_the_path_variables(path, batch_id, surface):
    assert ROUTES["Cancel"].path_values(path) == {"batch_id": batch_id, "surface": surface}


@pytest.mark.parametrize("path", ["/v1/batches/a/b/cancel", "/other/v1/batches/x/cancel", "/v1/batches//cancel"])
def test_paths_of_no_route_do_not_match(path):
    assert ROUTES["Cancel"].path_values(path) is None


def test_surface_from_the_query_is_ignored_on_the_native_route():
    request = pb.CancelBatchRequest(batch_id="b", surface="openai")
    command = command_from_proto(request, [("x-envoy-original-path", "/v1/batches/b/cancel?surface=openai")])
    assert command.provider == ""


def test_surface_from_the_path_wins_over_the_body():
    request = pb.CancelBatchRequest(batch_id="b", surface="zzz")
    command = command_from_proto(request, [("x-envoy-original-path", "/openai/v1/batches/b/cancel")])
    assert command.provider == "openai"


def test_batch_id_that_differs_from_the_path_is_refused():
    request = pb.CancelBatchRequest(batch_id="other", provider="openai")
    with pytest.raises(InvalidRequest) as info:
        command_from_proto(request, [("x-envoy-original-path", "/v1/batches/mine/cancel?batch_id=other")])
    assert info.value.param == "batch_id"


def test_direct_grpc_calls_use_the_request_fields():
    command = command_from_proto(pb.CancelBatchRequest(batch_id="b", surface="openai"), [])
    assert (command.batch_id, command.provider) == ("b", "openai")


@pytest.mark.parametrize(
    ("method", "path", "batch_id"),
    [
        ("CancelGenAI", "/genai/v1beta/batches/abc:cancel", "abc"),
        ("CancelGenAI", "/genai/v1/batches/abc:cancel", "abc"),
        ("CancelAnthropic", "/anthropic/v1/messages/batches/msgbatch_1/cancel", "msgbatch_1"),
        (
            "StopModelInvocationJob",
            "/bedrock/model-invocation-job/arn%3Aaws%3Abedrock%3Ax%2Fj/stop",
            "arn:aws:bedrock:x/j",
        ),
    ],
)
def test_drop_in_routes_are_read_from_the_proto(method, path, batch_id):
    values = ROUTES[method].path_values(path)
    assert values is not None and values["batch_id"] == batch_id


def test_genai_route_needs_the_cancel_verb():
    assert ROUTES["CancelGenAI"].path_values("/genai/v1beta/batches/abc") is None


@pytest.mark.parametrize(
    ("method", "surface", "headers", "provider"),
    [
        ("CancelAnthropic", "anthropic", [], "anthropic"),
        ("CancelGenAI", "genai", [], "gemini"),
        ("StopModelInvocationJob", "bedrock", [], "bedrock"),
        ("CancelAnthropic", "anthropic", [("x-model-provider", "OpenAI")], "openai"),
    ],
)
def test_drop_in_surfaces_default_their_provider(method, surface, headers, provider):
    command = command_from_proto(pb.CancelBatchRequest(batch_id="b"), headers, method, surface)
    assert command.provider == provider


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("Cancel", "/v1/batches/mine/cancel/?provider=openai&batch_id=victim"),
        ("Cancel", "/v1/batches/mine:cancel?provider=openai&batch_id=victim"),
        ("Cancel", "/openai/v1/batches/mine/cancel//"),
        ("CancelGenAI", "/genai/v1beta/batches/mine/:cancel"),
        ("CancelAnthropic", "/anthropic/v1/messages/batches/mine/cancel/"),
        ("StopModelInvocationJob", "/bedrock/model-invocation-job/mine/stop/"),
    ],
)
def test_rest_call_whose_path_no_route_names_is_refused(method, path):
    """The transcoder accepts spellings (a trailing slash, `/:verb`) that the route templates do
    not: the call is refused, never served with a batch id taken from the query or body."""
    request = pb.CancelBatchRequest(batch_id="victim", provider="openai")
    with pytest.raises(GatewayError) as info:
        command_from_proto(request, [("x-envoy-original-path", path)], method)
    assert (info.value.status_code, info.value.code) == (404, "route_not_found")
    assert "victim" not in info.value.message


# --- one registry of drop-in surfaces, checked against the proto -------------------------------------


def test_each_surface_in_the_proto_is_one_registry_entry_with_its_rpc():
    """Every `{surface=NAME}` literal of a route names a `Surface` whose RPC is that route's, and
    every registered surface has routes of its RPC."""
    service = pb.DESCRIPTOR.services_by_name["BatchService"]
    in_proto = {
        (literal, method.name)
        for method in service.methods
        for template in templates(method)
        for literal in re.findall(r"\{surface=(\w+)\}", template)
    }
    assert in_proto == {(surface.name, surface.rpc) for surface in SURFACES.values()}
    assert {name: surface.default_provider for name, surface in SURFACES.items()} == {
        "openai": "openai",
        "anthropic": "anthropic",
        "genai": "gemini",
        "bedrock": "bedrock",
    }


def test_the_rpcs_that_wait_take_a_wait():
    service = pb.DESCRIPTOR.services_by_name["BatchService"]
    assert WAITING_RPCS == ("Cancel", "CancelMany")
    for name in WAITING_RPCS:
        assert "wait_seconds" in service.methods_by_name[name].input_type.fields_by_name
