"""Generates the OpenAPI 3.1 document of the REST edge from the descriptor set that `make proto` builds.

    python -m gateway.openapi [--descriptor build/batchgate.pb] [--out build/openapi.json]

Every operation comes from a `google.api.http` binding (and its `additional_bindings`) of a service the
edge transcodes (the `services:` lists of gateway/envoy.yaml.tmpl), so a new RPC, binding or service
appears without touching this file. Messages become schemas of the JSON the edge reads and prints
(proto field names; fields without presence always printed, so required in answers), well-known
types their JSON mapping, `google.protobuf.Any` an object with `@type` (typed where
`google.longrunning.operation_info` names the message), a server-streaming RPC answers
`application/x-ndjson` (one message per line), and every operation's errors are its route's error
envelope (service/envelope.py): Bifrost's, or a drop-in SDK's own. The edge serves the document at
`GET /openapi.json`.
"""

from __future__ import annotations

import argparse
import http
import json
import re
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.api import annotations_pb2, http_pb2

# Imported before any descriptor is parsed, so that options carrying these extensions parse them.
from google.longrunning import operations_proto_pb2
from google.protobuf import descriptor_pb2

from gateway.paths import DESCRIPTOR, OPENAPI, ROOT
from gateway.render import LOCAL_REPLIES, OPENAPI_PATH, SHAPED_SURFACES, TEMPLATE
from service.domain.errors import GatewayError
from service.edge import envelope
from service.infra.providers.catalog import KNOWN_PROVIDERS

NDJSON = "application/x-ndjson"
JSON = "application/json"
_FD = descriptor_pb2.FieldDescriptorProto

# Request headers the service reads on every route (service/api.py, service/observability.py), and
# the ones only the drop-in SDK routes read, by surface (the first path segment).
COMMON_HEADERS = {
    "x-request-id": "Your id for this call (1-128 of `A-Za-z0-9._:-`): logged, sent upstream and answered in "
    "`x-request-id`; any other value is replaced by a generated one.",
}
SURFACE_HEADERS = {
    "anthropic": {
        "anthropic-version": "Sent on to Anthropic (a date, `YYYY-MM-DD`; anything else is a 400).",
        "x-model-provider": "Cancel on this provider instead of the route's own (the answer keeps the route's shape).",
    },
    "genai": {"x-model-provider": "Cancel on this provider instead of `gemini`."},
    "bedrock": {"x-model-provider": "Cancel on this provider instead of `bedrock`."},
}
# How a caller shows who it is (service/usecases/auth.py): a virtual key in any of these, or the
# gateway's admin credentials.
SECURITY_SCHEMES = {
    "virtualKey": {"type": "apiKey", "in": "header", "name": "x-bf-vk", "description": "A virtual key (sk-bf-...)."},
    "bearer": {"type": "http", "scheme": "bearer", "description": "A virtual key, or a direct provider key."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "As the Anthropic SDK sends it."},
    "googleApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "x-goog-api-key",
        "description": "As the Google GenAI SDK sends it.",
    },
    "gatewayCredentials": {"type": "http", "scheme": "basic", "description": "auth_config's admin credentials."},
}
# Request fields that name the provider to cancel on: one of the provider catalog's names (any other
# is a 400 before any upstream call).
PROVIDER_FIELDS = {"batchgate.v1.CancelBatchRequest.provider", "batchgate.v1.BatchRef.provider"}
# The drop-in routes with an error envelope of their own (the first path segment; the registry of
# service/edge/surfaces.py); the other routes answer in the Bifrost body.
SURFACE_NAMES = tuple(surface.name for surface in SHAPED_SURFACES)
# An RPC whose answer for one status is its own message, not the error envelope.
OWN_ERROR_BODIES = {"batchgate.v1.BatchService.Health": {503: "the health answer itself, `status` `draining`"}}


def transcoded_services(template: Path = TEMPLATE) -> list[str]:
    """The services the edge's transcoder serves: every `services: [...]` list of the Envoy template."""
    names: list[str] = []
    for listed in re.findall(r"^\s*services:\s*\[([^\]]*)\]", template.read_text(), flags=re.MULTILINE):
        names += [n.strip() for n in listed.split(",") if n.strip() and n.strip() not in names]
    if not names:
        raise RuntimeError(f"{template.name}: no `services: [...]` of the transcoder found")
    return names


def load_descriptor(path: Path = DESCRIPTOR) -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


# --- path templates (google/api/http.proto: Template = "/" Segments [ ":" Verb ]) ------------------


@dataclass
class Route:
    """One binding as OpenAPI sees it: the path with `{params}`, the fields its params fill, and the
    fields a literal-only variable fixes (`{surface=openai}`)."""

    path: str
    params: dict[str, str] = field(default_factory=dict)  # OpenAPI parameter -> field path
    fixed: dict[str, str] = field(default_factory=dict)  # field path -> value
    prefixes: dict[str, str] = field(default_factory=dict)  # field path -> literal text before the param


def parse_template(template: str) -> Route:
    """`/v1/{name=operations/*}:cancel` -> `/v1/operations/{name}:cancel`, with `name` filled as
    `operations/<param>`. A variable of literals only fixes its field; `*` and `**` are one segment."""
    if not template.startswith("/"):
        raise ValueError(f"path template must start with '/': {template!r}")
    body, verb = template, ""
    last = template.rfind("/")
    colon = template.find(":", last)
    if colon != -1 and "}" not in template[colon:]:
        body, verb = template[:colon], template[colon:]
    route = Route(path="")
    parts: list[str] = []
    for token in re.findall(r"\{[^}]*\}|[^/{}]+", body):
        if not token.startswith("{"):
            parts.append(token)
            continue
        name, _, pattern = token[1:-1].partition("=")
        segments = pattern.split("/") if pattern else ["*"]
        literals = [s for s in segments if s not in ("*", "**")]
        if len(literals) == len(segments):
            route.fixed[name] = pattern
            parts += segments
            continue
        wildcards = 0
        for segment in segments:
            if segment in ("*", "**"):
                wildcards += 1
                param = name.replace(".", "_") + ("" if wildcards == 1 else f"_{wildcards}")
                route.params[param] = name
                parts.append("{" + param + "}")
            else:
                parts.append(segment)
        if wildcards == 1 and segments[-1] in ("*", "**") and len(segments) > 1:
            route.prefixes[name] = "/".join(segments[:-1]) + "/"
    route.path = "/" + "/".join(parts) + verb
    return route


# --- messages -> JSON Schema -----------------------------------------------------------------------


_WKT: dict[str, dict[str, Any]] = {
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.Struct": {"type": "object", "description": "A JSON object."},
    "google.protobuf.ListValue": {"type": "array", "description": "A JSON array."},
    "google.protobuf.Empty": {"type": "object", "maxProperties": 0, "description": "An empty JSON object."},
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time", "description": "RFC 3339, UTC."},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string", "description": "Field paths separated by commas."},
    "google.protobuf.Any": {
        "type": "object",
        "required": ["@type"],
        "properties": {"@type": {"type": "string", "description": "type.googleapis.com/<full message name>"}},
        "description": "A message of the type `@type` names, with that message's fields beside `@type`.",
    },
}
_WRAPPERS = {
    "DoubleValue": _FD.TYPE_DOUBLE,
    "FloatValue": _FD.TYPE_FLOAT,
    "Int64Value": _FD.TYPE_INT64,
    "UInt64Value": _FD.TYPE_UINT64,
    "Int32Value": _FD.TYPE_INT32,
    "UInt32Value": _FD.TYPE_UINT32,
    "BoolValue": _FD.TYPE_BOOL,
    "StringValue": _FD.TYPE_STRING,
    "BytesValue": _FD.TYPE_BYTES,
}
_FLOAT_WORDS = {"enum": ["NaN", "Infinity", "-Infinity"]}


def _scalar(kind: int) -> dict[str, Any]:
    """proto3 JSON of a scalar: 64-bit integers print as strings (and parse from either)."""
    if kind in (_FD.TYPE_INT32, _FD.TYPE_SINT32, _FD.TYPE_SFIXED32):
        return {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
    if kind in (_FD.TYPE_UINT32, _FD.TYPE_FIXED32):
        return {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
    if kind in (_FD.TYPE_INT64, _FD.TYPE_SINT64, _FD.TYPE_SFIXED64, _FD.TYPE_UINT64, _FD.TYPE_FIXED64):
        return {"type": ["string", "integer"], "format": "int64", "pattern": "^-?[0-9]+$"}
    if kind in (_FD.TYPE_DOUBLE, _FD.TYPE_FLOAT):
        return {"anyOf": [{"type": "number"}, {"type": "string", **_FLOAT_WORDS}]}
    if kind == _FD.TYPE_BOOL:
        return {"type": "boolean"}
    if kind == _FD.TYPE_BYTES:
        return {"type": "string", "contentEncoding": "base64"}
    return {"type": "string"}


class Protos:
    """The descriptor set, indexed: messages, enums and services by full name, with their comments."""

    def __init__(self, fds: descriptor_pb2.FileDescriptorSet) -> None:
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.services: dict[str, descriptor_pb2.ServiceDescriptorProto] = {}
        self.comments: dict[str, str] = {}  # full name (fields: message.field) -> comment
        self.files = list(fds.file)
        for file in fds.file:
            locations = {tuple(loc.path): loc for loc in file.source_code_info.location}
            package = file.package

            def comment(path: tuple[int, ...], name: str, locations=locations) -> None:
                loc = locations.get(path)
                text = loc and (loc.leading_comments or loc.trailing_comments)
                if text:
                    self.comments[name] = " ".join(line.strip() for line in text.strip().splitlines())

            def walk(messages, prefix: str, path: tuple[int, ...], comment=comment) -> None:
                for i, message in enumerate(messages):
                    name = f"{prefix}.{message.name}"
                    self.messages[name] = message
                    comment(path + (i,), name)
                    for j, f in enumerate(message.field):
                        comment(path + (i, 2, j), f"{name}.{f.name}")
                    for enum in message.enum_type:
                        self.enums[f"{name}.{enum.name}"] = enum
                    walk(message.nested_type, name, path + (i, 3))

            walk(file.message_type, package, (4,))
            for i, enum in enumerate(file.enum_type):
                self.enums[f"{package}.{enum.name}"] = enum
                comment((5, i), f"{package}.{enum.name}")
            for i, service in enumerate(file.service):
                name = f"{package}.{service.name}"
                self.services[name] = service
                comment((6, i), name)
                for j, method in enumerate(service.method):
                    comment((6, i, 2, j), f"{name}.{method.name}")

    def field_comment(self, message: str, name: str) -> str | None:
        return self.comments.get(f"{message}.{name}")


class Schemas:
    """components/schemas, filled on demand: one per message or enum that some operation uses."""

    def __init__(self, protos: Protos) -> None:
        self.protos = protos
        self.components: dict[str, dict[str, Any]] = {}

    def ref(self, type_name: str) -> dict[str, Any]:
        name = type_name.lstrip(".")
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursive messages refer to themselves
            self.components[name] = self._build(name)
        return {"$ref": f"#/components/schemas/{name}"}

    def _build(self, name: str) -> dict[str, Any]:
        if name in _WKT:
            return dict(_WKT[name])
        if name.startswith("google.protobuf.") and name.rsplit(".", 1)[1] in _WRAPPERS:
            return {**_scalar(_WRAPPERS[name.rsplit(".", 1)[1]]), "description": f"{name} (the bare value)."}
        if name in self.protos.enums:
            enum = self.protos.enums[name]
            schema: dict[str, Any] = {"type": "string", "enum": [v.name for v in enum.value]}
        else:
            message = self.protos.messages[name]
            schema = {"type": "object", "additionalProperties": False, "properties": {}}
            required = []
            for f in message.field:
                schema["properties"][f.name] = self.field_schema(name, f)
                if always_printed(f, self.protos):
                    required.append(f.name)
            if required:
                schema["required"] = required
        text = self.protos.comments.get(name)
        if text:
            schema["description"] = text
        return schema

    def field_schema(self, message: str, f: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        entry = self.protos.messages.get(f.type_name.lstrip(".")) if f.type == _FD.TYPE_MESSAGE else None
        if entry is not None and entry.options.map_entry:
            key, value = entry.field
            schema: dict[str, Any] = {"type": "object", "additionalProperties": self._value(value)}
            if key.type not in (_FD.TYPE_STRING,):
                schema["propertyNames"] = {"pattern": "^(true|false)$" if key.type == _FD.TYPE_BOOL else "^-?[0-9]+$"}
        elif f.label == _FD.LABEL_REPEATED:
            schema = {"type": "array", "items": self._value(f)}
        else:
            schema = self._value(f)
        if f"{message}.{f.name}" in PROVIDER_FIELDS:
            schema = {**schema, "enum": sorted(KNOWN_PROVIDERS)}
        text = self.protos.field_comment(message, f.name)
        if f.HasField("oneof_index") and not f.proto3_optional:
            oneof = self.protos.messages[message].oneof_decl[f.oneof_index].name
            text = f"{text + ' ' if text else ''}(One of `{oneof}`: at most one of its fields is set.)"
        if text:
            schema = (
                {**schema, "description": text}
                if "$ref" not in schema
                else {"$ref": schema["$ref"], "description": text}
            )
        return schema

    def _value(self, f: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        if f.type in (_FD.TYPE_MESSAGE, _FD.TYPE_ENUM, _FD.TYPE_GROUP):
            return self.ref(f.type_name)
        return _scalar(f.type)

    def packed(self, type_name: str) -> dict[str, Any]:
        """A message packed in an Any: its fields plus `@type` naming it."""
        name = type_name.lstrip(".")
        key = f"Any.{name}"
        if key not in self.components:
            self.ref(name)
            base = self.components[name]
            url = f"type.googleapis.com/{name}"
            props = {"@type": {"const": url}, **base.get("properties", {})}
            self.components[key] = {
                **base,
                "properties": props,
                "required": ["@type", *base.get("required", [])],
                "description": f"`{name}` packed in a google.protobuf.Any.",
            }
        return {"$ref": f"#/components/schemas/{key}"}


def always_printed(f: descriptor_pb2.FieldDescriptorProto, protos: Protos) -> bool:
    """Whether the edge prints the field even when unset (`always_print_primitive_fields`): fields
    without presence, i.e. neither a message, a oneof member, nor a proto3 `optional`."""
    if f.label == _FD.LABEL_REPEATED:
        return True
    if f.type in (_FD.TYPE_MESSAGE, _FD.TYPE_GROUP) or f.HasField("oneof_index") or f.proto3_optional:
        return False
    return True


# --- errors ----------------------------------------------------------------------------------------


def _schema_of_sample(value: Any) -> dict[str, Any]:
    """The schema of an envelope built with placeholder values: None stands for a nullable string."""
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, str):
        return {"type": "string"}
    if value is None:
        return {"type": ["string", "null"]}
    if isinstance(value, dict):
        return {
            "type": "object",
            "required": list(value),
            "properties": {k: _schema_of_sample(v) for k, v in value.items()},
        }
    raise TypeError(f"unexpected {type(value).__name__} in an error envelope")


def error_envelopes() -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    """(schema, extra headers) of the error body on each surface ("" for the Bifrost routes)."""
    descriptions = {
        "anthropic": "Anthropic's error body.",
        "genai": "Google's error body (`code` is the HTTP status).",
        "bedrock": "AWS rest-json: the exception's name in `x-amzn-errortype`.",
    }
    assert set(descriptions) == set(SURFACE_NAMES), "a surface without a description of its error envelope here"
    samples = {
        "": (
            # request_type: batch_cancel on a cancel route, null elsewhere (a nullable string).
            envelope.bifrost(envelope.ErrorText("", None, "", None), 0, provider="", request_type=""),
            {},
            "The Bifrost error body (`is_bifrost_error` false: the provider's own error, status and fields kept).",
        ),
    }
    for shaped in SHAPED_SURFACES:
        assert shaped.shape is not None
        body, headers = shaped.shape.body("", "", 0)  # the registry's own envelope (service/edge/surfaces.py)
        samples[shaped.name] = (body, headers, descriptions[shaped.name])
    out = {}
    for surface, (body, headers, text) in samples.items():
        out[surface] = ({**_schema_of_sample(body), "description": text}, headers)
    return out


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def error_statuses() -> list[int]:
    """Every status the gateway decides on itself: its error classes' and Envoy's own replies'."""
    statuses = {GatewayError.status_code, *(c.status_code for c in _subclasses(GatewayError))}
    statuses |= {r.status for r in LOCAL_REPLIES if r.status}
    statuses |= {404, 409}  # a provider's "no such batch" and "already finished", kept by the gateway
    return sorted(statuses)


# --- the document ----------------------------------------------------------------------------------


def _bindings(rule: http_pb2.HttpRule) -> Iterator[tuple[str, str, str]]:
    """(HTTP method, path template, body) of a rule and its additional bindings."""
    for r in (rule, *rule.additional_bindings):
        kind = r.WhichOneof("pattern")
        if kind is None:
            continue
        if kind == "custom":
            yield r.custom.kind.lower(), r.custom.path, r.body
        else:
            yield kind, getattr(r, kind), r.body


def _query_params(
    schemas: Schemas, message: str, prefix: str, skip: set[str], depth: int = 0
) -> Iterator[dict[str, Any]]:
    """Query parameters for the fields a binding leaves to the URL: scalars, enums and repeated ones
    (`?a=1&a=2`), nested messages as `outer.inner`; maps, Any, Struct and Value cannot be sent there."""
    for f in schemas.protos.messages[message].field:
        path = prefix + f.name
        if path in skip:
            continue
        if f.type == _FD.TYPE_MESSAGE:
            nested = f.type_name.lstrip(".")
            entry = schemas.protos.messages.get(nested)
            if (entry is None or entry.options.map_entry or nested.startswith("google.protobuf.")) or depth > 3:
                continue
            if f.label == _FD.LABEL_REPEATED:
                continue
            yield from _query_params(schemas, nested, path + ".", skip, depth + 1)
            continue
        schema = schemas.field_schema(message, f)
        description = schema.pop("description", None)
        param: dict[str, Any] = {"name": path, "in": "query", "required": False, "schema": schema}
        if f.label == _FD.LABEL_REPEATED:
            param |= {"style": "form", "explode": True}
        if description:
            param["description"] = description
        yield param


def _body_schema(schemas: Schemas, message: str, skip: set[str]) -> dict[str, Any]:
    """The request message as a body, without the fields the path fills."""
    props = {f.name: schemas.field_schema(message, f) for f in schemas.protos.messages[message].field}
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {k: v for k, v in props.items() if k not in skip},
    }
    if message in schemas.protos.comments:
        schema["description"] = schemas.protos.comments[message]
    return schema


def _operation_info(method: descriptor_pb2.MethodDescriptorProto, package: str) -> tuple[str, str] | None:
    """(response_type, metadata_type) of a long-running RPC, as full names, when it declares them."""
    if not method.options.HasExtension(operations_proto_pb2.operation_info):
        return None
    info = method.options.Extensions[operations_proto_pb2.operation_info]

    def full(name: str) -> str:
        return name if "." in name else f"{package}.{name}"

    return full(info.response_type), full(info.metadata_type)


def _response(description: str, content: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": content}
    response["headers"] = {
        "x-request-id": {"description": "The call's request id.", "schema": {"type": "string"}},
        **(headers or {}),
    }
    return response


def build(fds: descriptor_pb2.FileDescriptorSet, services: Iterable[str]) -> dict[str, Any]:
    protos = Protos(fds)
    schemas = Schemas(protos)
    envelopes = error_envelopes()
    for surface, (schema, _) in envelopes.items():
        schemas.components[f"Error.{surface or 'bifrost'}"] = schema
    statuses = error_statuses()
    paths: dict[str, dict[str, Any]] = {}
    tags = []
    for service_name in services:
        service = protos.services.get(service_name)
        if service is None:
            raise RuntimeError(f"the edge transcodes {service_name}, which is not in the descriptor set")
        package = service_name.rsplit(".", 1)[0]
        tags.append({"name": service.name, "description": protos.comments.get(service_name, service_name)})
        for method in service.method:
            if not method.options.HasExtension(annotations_pb2.http):
                continue
            rpc = f"{service_name}.{method.name}"
            request, answer = method.input_type.lstrip("."), method.output_type.lstrip(".")
            lro = _operation_info(method, package)
            for n, (verb, template, body) in enumerate(_bindings(method.options.Extensions[annotations_pb2.http])):
                route = parse_template(template)
                surface = route.path.split("/")[1]
                surface = surface if surface in SURFACE_NAMES else ""
                bound = set(route.params.values()) | set(route.fixed)
                operation: dict[str, Any] = {
                    "operationId": f"{service.name}_{method.name}" + (f"_{n + 1}" if n else ""),
                    "tags": [service.name],
                    "x-grpc-method": f"/{service_name}/{method.name}",
                    "summary": f"{rpc}"
                    + (f" ({', '.join(f'{k}={v}' for k, v in route.fixed.items())})" if route.fixed else ""),
                }
                if protos.comments.get(rpc):
                    operation["description"] = protos.comments[rpc]
                params = []
                for param, field_path in route.params.items():
                    text = f"Fills `{field_path}`"
                    if field_path in route.prefixes:
                        text += f" as `{route.prefixes[field_path]}<{param}>`"
                    comment = protos.field_comment(request, field_path)
                    params.append(
                        {
                            "name": param,
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                            "description": text + (f": {comment}" if comment else "."),
                        }
                    )
                if body == "*":
                    operation["requestBody"] = {
                        "required": False,
                        "content": {JSON: {"schema": _body_schema(schemas, request, bound)}},
                    }
                else:
                    skip = set(bound)
                    if body:
                        skip.add(body)
                        body_field = next(f for f in protos.messages[request].field if f.name == body)
                        operation["requestBody"] = {
                            "required": False,
                            "content": {JSON: {"schema": schemas.field_schema(request, body_field)}},
                        }
                    params += list(_query_params(schemas, request, "", skip))
                for header, text in {**COMMON_HEADERS, **SURFACE_HEADERS.get(surface, {})}.items():
                    params.append(
                        {
                            "name": header,
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": text,
                        }
                    )
                operation["parameters"] = params
                if method.server_streaming:
                    ok = _response(
                        "One JSON object per line (NDJSON), each sent as soon as it happens.",
                        {NDJSON: {"schema": schemas.ref(answer)}},
                    )
                elif lro and answer == "google.longrunning.Operation":
                    schemas.ref(answer)
                    result, metadata = lro
                    ok = _response(
                        f"A long-running operation: `metadata` is a {metadata}, `response` (once done) a {result}.",
                        {
                            JSON: {
                                "schema": {
                                    "allOf": [
                                        schemas.ref(answer),
                                        {
                                            "properties": {
                                                "metadata": schemas.packed(metadata),
                                                "response": schemas.packed(result),
                                            }
                                        },
                                    ]
                                }
                            }
                        },
                    )
                else:
                    ok = _response("The answer.", {JSON: {"schema": schemas.ref(answer)}})
                responses: dict[str, Any] = {"200": ok}
                error_schema, error_headers = envelopes[surface]
                ref = {"$ref": f"#/components/schemas/Error.{surface or 'bifrost'}"}
                headers = {h: {"schema": {"type": "string"}, "required": True} for h in error_headers}
                own = OWN_ERROR_BODIES.get(rpc, {})
                for status in [*statuses, "4XX", "5XX"]:
                    text = (
                        http.HTTPStatus(status).phrase if isinstance(status, int) else "An error the provider answered"
                    )
                    schema: dict[str, Any] = ref
                    if status in own:
                        schema = {"oneOf": [schemas.ref(answer), ref]}
                        text += f" ({own[status]}, or the error body)"
                    responses[str(status)] = _response(text, {JSON: {"schema": schema}}, headers)
                operation["responses"] = responses
                item = paths.setdefault(route.path, {})
                if verb in item:
                    raise RuntimeError(f"two bindings for {verb.upper()} {route.path}")
                item[verb] = operation
    paths[OPENAPI_PATH] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {"200": _response("The OpenAPI document.", {JSON: {"schema": {"type": "object"}}})},
        }
    }
    first = next(f for f in protos.files if any(f"{f.package}.{s.name}" in protos.services for s in f.service))
    comment = next((loc.leading_comments for loc in first.source_code_info.location if list(loc.path) == [12]), "")
    return {
        "openapi": "3.1.0",
        # Credentials are optional only where the config leaves the gateway open (README, Access control).
        "security": [{}, *({name: []} for name in SECURITY_SCHEMES)],
        "info": {
            "title": "batchgate",
            "version": tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"],
            "description": " ".join(line.strip() for line in comment.strip().splitlines()),
        },
        "tags": tags,
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(schemas.components.items())), "securitySchemes": SECURITY_SCHEMES},
    }


def write(descriptor: Path = DESCRIPTOR, out: Path = OPENAPI) -> None:
    document = build(load_descriptor(descriptor), transcoded_services())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--descriptor", type=Path, default=DESCRIPTOR)
    parser.add_argument("--out", type=Path, default=OPENAPI)
    args = parser.parse_args()
    write(args.descriptor, args.out)


if __name__ == "__main__":
    main()
