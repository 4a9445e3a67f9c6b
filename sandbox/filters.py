"""The list filter of Vertex AI's batchPredictionJobs.list: a subset of Google's filtering
language (AIP-160) over the fields Vertex documents for it.

    state="JOB_STATE_RUNNING"                  state: = and !=
    create_time>="2026-01-02T03:04:05Z"        create_time (or createTime): = != < <= > >=, RFC 3339
    display_name:"nightly-*"                   display_name (or displayName): = != and : (wildcard *)
    labels.team=search  labels.team:*          labels.<key>: = != and : (`:*` = the key exists)
    a AND b, a OR b, NOT a, -a, (a), a b       `a b` is `a AND b`; OR binds tighter than AND

A value is a quoted string ("..." or '...') or a bare word (it may contain `:` and `.`). Anything
else is a FilterError, which the simulator answers as 400 INVALID_ARGUMENT.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

OPERATORS = ("<=", ">=", "!=", "=", "<", ">", ":")
_SPECIAL = set("()\"' \t\r\n") | set("<>=!:")


class FilterError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Job:
    """What a filter can look at in one job."""

    state: str
    create_time: int
    display_name: str
    labels: dict[str, str]


Predicate = Callable[[Job], bool]


def parse_filter(text: str) -> Predicate:
    """The predicate a filter string denotes (an empty filter accepts every job)."""
    parser = _Parser(text)
    if not text.strip():
        return lambda job: True
    predicate = parser.expression()
    parser.skip_space()
    if not parser.at_end():
        raise FilterError(f"unexpected {text[parser.pos :]!r} at position {parser.pos}")
    return predicate


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_space(self) -> None:
        while not self.at_end() and self.text[self.pos].isspace():
            self.pos += 1

    def peek_keyword(self, keyword: str) -> bool:
        self.skip_space()
        end = self.pos + len(keyword)
        following = self.text[end : end + 1]
        return self.text[self.pos : end] == keyword and (not following or following.isspace() or following == "(")

    def expression(self) -> Predicate:
        """AND of OR-terms (an implicit AND between juxtaposed terms)."""
        terms = [self.or_term()]
        while True:
            self.skip_space()
            if self.at_end() or self.text[self.pos] == ")":
                break
            if self.peek_keyword("AND"):
                self.pos += 3
            terms.append(self.or_term())
        return terms[0] if len(terms) == 1 else lambda job: all(term(job) for term in terms)

    def or_term(self) -> Predicate:
        terms = [self.unary()]
        while self.peek_keyword("OR"):
            self.pos += 2
            terms.append(self.unary())
        return terms[0] if len(terms) == 1 else lambda job: any(term(job) for term in terms)

    def unary(self) -> Predicate:
        self.skip_space()
        if self.peek_keyword("NOT"):
            self.pos += 3
            inner = self.unary()
            return lambda job: not inner(job)
        if self.text.startswith("-", self.pos):
            self.pos += 1
            inner = self.unary()
            return lambda job: not inner(job)
        if self.text.startswith("(", self.pos):
            self.pos += 1
            inner = self.expression()
            self.skip_space()
            if not self.text.startswith(")", self.pos):
                raise FilterError(f"missing ')' at position {self.pos}")
            self.pos += 1
            return inner
        return self.comparison()

    def comparison(self) -> Predicate:
        field = self.word()
        if not field:
            raise FilterError(f"expected a field at position {self.pos}")
        self.skip_space()
        operator = next((op for op in OPERATORS if self.text.startswith(op, self.pos)), None)
        if operator is None:
            raise FilterError(f"expected a comparison after {field!r} at position {self.pos}")
        self.pos += len(operator)
        self.skip_space()
        value = self.value()
        return _compare(field, operator, value)

    def word(self) -> str:
        start = self.pos
        while not self.at_end() and self.text[self.pos] not in _SPECIAL:
            self.pos += 1
        return self.text[start : self.pos]

    def value(self) -> str:
        if self.at_end():
            raise FilterError("expected a value at the end of the filter")
        quote = self.text[self.pos]
        if quote in "\"'":
            out, self.pos = [], self.pos + 1
            while not self.at_end() and self.text[self.pos] != quote:
                if self.text[self.pos] == "\\" and self.pos + 1 < len(self.text):
                    self.pos += 1
                out.append(self.text[self.pos])
                self.pos += 1
            if self.at_end():
                raise FilterError("unterminated string")
            self.pos += 1
            return "".join(out)
        start = self.pos
        while not self.at_end() and not self.text[self.pos].isspace() and self.text[self.pos] not in "()":
            self.pos += 1
        if start == self.pos:
            raise FilterError(f"expected a value at position {start}")
        return self.text[start : self.pos]


def _compare(field: str, operator: str, value: str) -> Predicate:
    if field == "state":
        if operator not in ("=", "!="):
            raise FilterError(f"state supports = and !=, not {operator}")
        return _equality(operator, lambda job: job.state, value)
    if field in ("create_time", "createTime"):
        if operator == ":":
            raise FilterError("create_time does not support :")
        when = _timestamp(value)
        compare = {
            "=": lambda t: t == when,
            "!=": lambda t: t != when,
            "<": lambda t: t < when,
            "<=": lambda t: t <= when,
            ">": lambda t: t > when,
            ">=": lambda t: t >= when,
        }[operator]
        return lambda job: compare(job.create_time)
    if field in ("display_name", "displayName"):
        if operator == ":":
            return lambda job: fnmatch.fnmatchcase(job.display_name, value)
        if operator not in ("=", "!="):
            raise FilterError(f"display_name supports =, != and :, not {operator}")
        return _equality(operator, lambda job: job.display_name, value)
    if field.startswith("labels.") and len(field) > len("labels."):
        key = field[len("labels.") :]
        if operator == ":":
            if value == "*":
                return lambda job: key in job.labels
            return lambda job: job.labels.get(key) == value
        if operator not in ("=", "!="):
            raise FilterError(f"labels support =, != and :, not {operator}")
        return _equality(operator, lambda job: job.labels.get(key), value)
    raise FilterError(f"unsupported filter field {field!r}")


def _equality(operator: str, get: Callable[[Job], str | None], value: str) -> Predicate:
    if operator == "=":
        return lambda job: get(job) == value
    return lambda job: get(job) != value


def _timestamp(value: str) -> float:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(f"create_time must be an RFC 3339 timestamp, not {value!r}") from None
    if when.tzinfo is None:
        raise FilterError(f"create_time must be an RFC 3339 timestamp with an offset, not {value!r}")
    return when.astimezone(UTC).timestamp()
