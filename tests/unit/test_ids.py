"""path_segment: a batch id becomes exactly one URL path segment, or is refused with a 400."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.domain.errors import InvalidRequest
from service.infra.providers.base import MAX_ID_LENGTH, path_segment


@pytest.mark.parametrize(
    ("batch_id", "segment"),
    [
        ("batch_abc123", "batch_abc123"),
        ("batch_67a1f2c3d4e5f6a7b8c9d0e1", "batch_67a1f2c3d4e5f6a7b8c9d0e1"),
        ("msgbatch-01HkcTjaV5uDC8jWR4ZsDV8d", "msgbatch-01HkcTjaV5uDC8jWR4ZsDV8d"),
        ("a_b-c.d", "a_b-c.d"),
        ("job.v2", "job.v2"),
        (".hidden", ".hidden"),
        ("ends.", "ends."),
        ("arn:aws:bedrock:us-east-1:123", "arn%3Aaws%3Abedrock%3Aus-east-1%3A123"),
        ("a+b=c&d;e@f", "a%2Bb%3Dc%26d%3Be%40f"),
        ("bätch", "b%C3%A4tch"),
        ("~tilde", "~tilde"),
        ("x" * MAX_ID_LENGTH, "x" * MAX_ID_LENGTH),
    ],
)
def test_accepted_ids_become_one_escaped_segment(batch_id, segment):
    assert path_segment(batch_id) == segment
    assert unquote(segment) == batch_id
    # Used as a path segment, it stays one segment and leaves query and fragment alone.
    parts = urlsplit(f"https://api.example/v1/batches/{segment}/cancel")
    assert parts.path.split("/") == ["", "v1", "batches", segment, "cancel"]
    assert (parts.query, parts.fragment) == ("", "")


REFUSED = [
    pytest.param("", id="empty"),
    pytest.param("/", id="slash"),
    pytest.param("a/b", id="inner-slash"),
    pytest.param("..", id="dotdot"),
    pytest.param(".", id="dot"),
    pytest.param("../etc", id="dotdot-slash"),
    pytest.param("a..b", id="inner-dotdot"),
    pytest.param("a?b", id="question"),
    pytest.param("a#b", id="hash"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("..\\x", id="dotdot-backslash"),
    pytest.param("a%2Fb", id="pct-2F"),
    pytest.param("a%2fb", id="pct-2f"),
    pytest.param("%2e%2e", id="pct-dotdot"),
    pytest.param("%2E%2E", id="pct-DOTDOT"),
    pytest.param("100%", id="bare-percent"),
    pytest.param("a%20b", id="pct-space"),
    pytest.param("a b", id="space"),
    pytest.param(" batch", id="leading-space"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\rb", id="cr"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\x7fb", id="del"),
    pytest.param("a\x1bb", id="esc"),
    pytest.param("a\x85b", id="nel"),
    pytest.param("a\u00a0b", id="nbsp"),
    pytest.param("a\u2028b", id="line-separator"),
    pytest.param("a\u200bb", id="zero-width-space"),
    pytest.param("a\u202eb", id="rtl-override"),
    pytest.param("a\ufeffb", id="bom"),
    pytest.param("a\ud800b", id="lone-surrogate"),
    pytest.param("x" * (MAX_ID_LENGTH + 1), id="too-long"),
]


@pytest.mark.parametrize("batch_id", REFUSED)
def test_refused_ids_are_400_on_batch_id(batch_id):
    with pytest.raises(InvalidRequest) as info:
        path_segment(batch_id)
    error = info.value
    assert error.status_code == 400 and error.param == "batch_id"
    assert error.type == "invalid_request_error" and error.is_bifrost_error is True
    # A fixed message: the id itself (maybe huge, maybe with control characters) is never echoed.
    assert error.message in ("batch_id is required", "batch_id contains characters that are not allowed in a batch id")


def test_empty_id_has_its_own_message():
    with pytest.raises(InvalidRequest, match="^batch_id is required$"):
        path_segment("")


def _check(batch_id: str) -> None:
    try:
        segment = path_segment(batch_id)
    except InvalidRequest as error:
        assert error.status_code == 400 and error.param == "batch_id"
        return
    assert segment and unquote(segment) == batch_id
    assert not set(segment) & set("/?#\\ ")
    assert segment not in (".", "..")
    # An accepted id never carries a separator, an escape or a dot segment, even once decoded.
    assert not set(batch_id) & set("/?#%\\") and ".." not in batch_id
    assert segment.isascii() and segment.isprintable()


_NASTY = st.sampled_from(list("/?#%\\.:;_-~ \t\n\x00\x7f") + ["..", "%2F", "%2e", "\u2028", "\u200b", "é", "日"])


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=40), st.lists(st.one_of(_NASTY, st.text(max_size=3)), max_size=8).map("".join)))
def test_property_any_string_is_refused_or_one_reversible_segment(batch_id):
    _check(batch_id)


@settings(max_examples=100, deadline=None, database=None)
@given(st.text(alphabet=st.characters(codec="ascii", categories=("L", "N")) | st.sampled_from("-_.:"), min_size=1))
def test_property_plain_ids_are_accepted(batch_id):
    if ".." in batch_id or batch_id in (".",) or len(batch_id) > MAX_ID_LENGTH:
        return
    assert unquote(path_segment(batch_id)) == batch_id
