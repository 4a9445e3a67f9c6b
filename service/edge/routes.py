"""The REST routes of each RPC, read from the `google.api.http` annotations in the proto, so the
service can check what Envoy's transcoder did.

The transcoder lets a query parameter or a body field overwrite a path variable
(`/v1/batches/A/cancel?batch_id=B` arrives with batch_id "B"), and lets a caller set fields that only
routes should set (`?surface=openai`). Envoy passes the original path in `x-envoy-original-path`; the
service matches it against these templates and trusts only the path's values. The transcoder also
accepts spellings no template has (a trailing `/`, `x:cancel` on a route without the verb): such a
call is refused, since its path names no batch.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import unquote

from google.api import annotations_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from service.edge.envelope import REQUEST_TYPE

ORIGINAL_PATH_HEADER = "x-envoy-original-path"
# The RPCs that may wait for batches to be cancelled (`wait_seconds`, up to MAX_WAIT_SECONDS): the
# servicer reads the wait of these only, and Envoy gives their routes the longer timeout.
WAITING_RPCS = ("Cancel", "CancelMany")
_VARIABLE = re.compile(r"\{(\w+)(?:=([^}]*))?\}")


# RPCs that cancel: their errors say `extra_fields.request_type: batch_cancel`; others say "".
CANCEL_METHODS = frozenset(
    {"Cancel", "CancelMany", "CancelAnthropic", "CancelGenAI", "StopModelInvocationJob", "CancelMatching"}
)


def _rules(method: MethodDescriptor) -> Iterator[tuple[str, str]]:
    """(HTTP verb, path template) of each `google.api.http` binding of `method`."""
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    for binding in (rule, *rule.additional_bindings):
        verb = binding.WhichOneof("pattern")
        pattern = getattr(binding, verb) if verb else ""
        if pattern and verb != "custom":
            yield verb.upper(), pattern


def templates(method: MethodDescriptor) -> Iterator[str]:
    """The path templates of an RPC's REST routes, as its `google.api.http` option writes them."""
    for _, pattern in _rules(method):
        yield pattern


def rest_routes(service: ServiceDescriptor) -> list[tuple[str, str, str]]:
    """Every REST route of `service`: (HTTP verb, path template, the request type its errors name)."""
    return [
        (verb, template, REQUEST_TYPE if method.name in CANCEL_METHODS else "")
        for method in service.methods
        for verb, template in _rules(method)
    ]


def _compile(template: str) -> re.Pattern[str]:
    """`/{surface=openai}/v1/batches/{batch_id}/cancel` -> a regex over the raw (still
    percent-encoded) path with one named group per variable."""
    parts, last = [], 0
    for match in _VARIABLE.finditer(template):
        parts.append(re.escape(template[last : match.start()]))
        name, literal = match.groups()
        parts.append(f"(?P<{name}>{re.escape(literal) if literal else '[^/]+'})")
        last = match.end()
    parts.append(re.escape(template[last:]))
    return re.compile("^" + "".join(parts) + r"(?:\?.*)?$")


class RouteTable:
    def __init__(self, method: MethodDescriptor) -> None:
        self._patterns = [_compile(template) for template in templates(method)]
        self.variables = frozenset(name for p in self._patterns for name in p.groupindex)

    def path_values(self, original_path: str) -> dict[str, str] | None:
        """The path variables of the route the request came through (decoded; variables the
        route does not have are ""), or None when no route matches."""
        for pattern in self._patterns:
            match = pattern.match(original_path)
            if match:
                values = dict.fromkeys(self.variables, "")
                values.update((name, unquote(value)) for name, value in match.groupdict().items())
                return values
        return None
