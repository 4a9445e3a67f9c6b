"""One error catalogue (issue 23): every `error.code` the service raises or Envoy answers with has an
entry in service/domain/errors.py's CATALOGUE, with the status and type the code is raised with,
and README.md's error table is the one generated from it.

The service's codes are found in its source (every `code=` given to an error and every error
class's own code, errors a provider answered excepted: those keep the provider's code), so a code
added anywhere without an entry fails here."""

from __future__ import annotations

import ast
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.paths import ROOT
from gateway.render import LOCAL_REPLIES, error_table
from service.domain import errors
from service.domain.errors import CATALOGUE, CODES, GatewayError

SOURCES = sorted(path for path in (ROOT / "service").rglob("*.py") if "gen" not in path.relative_to(ROOT).parts)
# Calls that build an error a provider answered: its code is the provider's, not batchgate's.
PROVIDER_ERRORS = {"ProviderError", "error"}
COMPUTED = "(computed)"


@dataclass(frozen=True)
class Raised:
    where: str
    code: str
    error_class: str
    status: int | None  # given at the call, else None (the class's)
    type: str | None


def _constant(node: ast.expr | None) -> object:
    return node.value if isinstance(node, ast.Constant) else None


def raised_codes() -> list[Raised]:
    found: list[Raised] = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        classes: dict[ast.AST, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for child in ast.walk(node):
                    classes.setdefault(child, node.name)
                for statement in node.body:
                    targets = (
                        statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)]
                    )
                    value = getattr(statement, "value", None)
                    if any(getattr(t, "id", None) == "code" for t in targets) and isinstance(_constant(value), str):
                        found.append(Raised(f"{path.name}:{statement.lineno}", value.value, node.name, None, None))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            keywords = {kw.arg: kw.value for kw in node.keywords}
            if "code" not in keywords or name in PROVIDER_ERRORS:
                continue
            error_class = name if name != "__init__" else classes.get(node, "")
            for constant in ast.walk(keywords["code"]):
                if isinstance(_constant(constant), str):
                    found.append(
                        Raised(
                            f"{path.name}:{node.lineno}",
                            constant.value,
                            error_class,
                            _constant(keywords.get("status_code")),
                            # A type computed at the call (from the catalogue itself) is not checked.
                            (_constant(keywords["type"]) or COMPUTED) if "type" in keywords else None,
                        )
                    )
    return found


RAISED = raised_codes()


def error_classes() -> dict[str, type]:
    """The error classes by name, and the operations' Failure (an error as data, rendered alike)."""
    from service.domain.operations import Failure
    from service.edge import api

    found = {name: value for name, value in vars(errors).items() if isinstance(value, type)}
    found.update({name: value for name, value in vars(api).items() if isinstance(value, type)})
    return {**{name: cls for name, cls in found.items() if issubclass(cls, GatewayError)}, "Failure": Failure}


def default(cls: type, name: str) -> object:
    """A class's default status_code or type (a dataclass's field default)."""
    if dataclasses.is_dataclass(cls):
        return {f.name: f.default for f in dataclasses.fields(cls)}[name]
    return getattr(cls, name)


def test_the_scan_finds_what_it_must() -> None:
    codes = {raised.code for raised in RAISED}
    assert {"invalid_request", "virtual_key_not_found", "route_not_found", "rate_limited", "draining"} <= codes
    assert "invalid_grant" not in codes  # Google's own code, in a ProviderError


def test_every_code_raised_or_answered_by_envoy_is_in_the_catalogue() -> None:
    missing = sorted({f"{r.code} ({r.where})" for r in RAISED if r.code not in CODES})
    missing += sorted({f"{reply.code} (gateway/render.py)" for reply in LOCAL_REPLIES if reply.code not in CODES})
    assert missing == []


def test_the_catalogue_lists_no_code_nothing_answers_with() -> None:
    answered = {r.code for r in RAISED} | {reply.code for reply in LOCAL_REPLIES}
    assert [entry.code for entry in CATALOGUE if entry.code not in answered] == []
    assert [entry.code for entry in CATALOGUE if entry.edge and entry.code in {r.code for r in RAISED}] == []


def test_each_code_is_raised_with_its_catalogued_status_and_type() -> None:
    classes = error_classes()
    wrong = []
    for raised in RAISED:
        cls = classes.get(raised.error_class)
        assert cls is not None, f"{raised.where}: {raised.error_class} is not an error class"
        status = raised.status if raised.status is not None else default(cls, "status_code")
        entry = CODES[raised.code]
        kind = {None: default(cls, "type"), COMPUTED: entry.type}.get(raised.type, raised.type)
        if kind != entry.type or entry.status not in (None, status):  # None: the provider's status
            wrong.append(f"{raised.where}: {raised.code} as {status} {kind}, catalogued {entry.status} {entry.type}")
    for reply in LOCAL_REPLIES:
        if reply.status is not None and CODES[reply.code].status not in (reply.status, 502):
            wrong.append(f"local reply {reply.status} {reply.code}")
    assert wrong == []


def test_one_type_vocabulary() -> None:
    assert [entry.code for entry in CATALOGUE if not re.fullmatch(r"[a-z_]+_error", entry.type)] == []
    assert {reply.type for reply in LOCAL_REPLIES} <= {entry.type for entry in CATALOGUE}
    assert "not_found" not in {reply.type for reply in LOCAL_REPLIES}


def test_the_readme_error_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- error table: python -m gateway.render --error-table -->\n", "<!-- end of error table -->"
    assert start in readme and end in readme, "README.md has no generated error table"
    assert readme.split(start, 1)[1].split(end, 1)[0] == error_table()


@pytest.mark.parametrize("code", ["invalid_request", "unknown_provider", "provider_not_configured", "no_batch_keys",
                                  "invalid_key_config", "request_timeout", "deadline_exceeded", "provider_error",
                                  "permission_denied", "unauthenticated"])  # fmt: skip
def test_the_codes_the_issue_found_undocumented_are_documented(code: str) -> None:
    assert f"`{code}`" in error_table() and f"`{code}`" in (ROOT / "README.md").read_text()


def test_the_table_names_a_grpc_code_for_every_status() -> None:
    assert "| 405 | INVALID_ARGUMENT |" in error_table() and "| 404 | NOT_FOUND |" in error_table()
    assert Path(errors.__file__).name == "errors.py"
