"""Path templates: parsing the google.api.http grammar and matching raw request paths."""

from __future__ import annotations

import dataclasses

import pytest

from transcoder.errors import TranscodeError
from transcoder.httprule import PathTemplate, Variable, parse_template
from transcoder.status import Code


@pytest.mark.parametrize(
    ("text", "segments", "variables", "verb"),
    [
        ("/v1", ("v1",), (), None),
        ("/v1/shelves", ("v1", "shelves"), (), None),
        ("/v1/shelves/{shelf}", ("v1", "shelves", "*"), (Variable(("shelf",), 2, 3),), None),
        ("/v1/{shelf=*}", ("v1", "*"), (Variable(("shelf",), 1, 2),), None),
        (
            "/v1/{name=shelves/*/books/*}",
            ("v1", "shelves", "*", "books", "*"),
            (Variable(("name",), 1, 5),),
            None,
        ),
        ("/v1/{name=**}", ("v1", "**"), (Variable(("name",), 1, 2),), None),
        ("/v1/**:verb", ("v1", "**"), (), "verb"),
        ("/v1/*", ("v1", "*"), (), None),
        ("/v1/*/x", ("v1", "*", "x"), (), None),
        ("/**", ("**",), (), None),
        ("/v1/{a.b.c}", ("v1", "*"), (Variable(("a", "b", "c"), 1, 2),), None),
        ("/{x=a/*/b/**}", ("a", "*", "b", "**"), (Variable(("x",), 0, 4),), None),
        ("/v1/{name=shelves/*}:publish", ("v1", "shelves", "*"), (Variable(("name",), 1, 3),), "publish"),
        ("/v1/{name}:cancel", ("v1", "*"), (Variable(("name",), 1, 2),), "cancel"),
        ("/v1/shelves:batchGet", ("v1", "shelves"), (), "batchGet"),
        ("/v1/a.b-c~d_e", ("v1", "a.b-c~d_e"), (), None),
        ("/v1/file.tar.gz", ("v1", "file.tar.gz"), (), None),
        ("/v1/user@host/x!$&'()+,;", ("v1", "user@host", "x!$&'()+,;"), (), None),
        ("/v1/a%20b", ("v1", "a%20b"), (), None),
        ("/v1/a:b/c", ("v1", "a:b", "c"), (), None),
        ("/v1/a:b:c", ("v1", "a:b"), (), "c"),  # the last ":" starts the verb, as in grpc-gateway
        ("/v1/{name}:x:y", ("v1", "*"), (Variable(("name",), 1, 2),), "x:y"),
        (
            "/v1/{shelf_id}/books/{book.id_2}",
            ("v1", "*", "books", "*"),
            (Variable(("shelf_id",), 1, 2), Variable(("book", "id_2"), 3, 4)),
            None,
        ),
        ("/{_x}", ("*",), (Variable(("_x",), 0, 1),), None),
        ("/v1/{name=shelves}", ("v1", "shelves"), (Variable(("name",), 1, 2),), None),
    ],
)
def test_parse_valid_template(
    text: str, segments: tuple[str, ...], variables: tuple[Variable, ...], verb: str | None
) -> None:
    template = parse_template(text)
    assert template.text == text
    assert template.segments == segments
    assert template.variables == variables
    assert template.verb == verb


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "must start with '/'"),
        ("v1/shelves", "must start with '/'"),
        ("/", "empty segment"),
        ("//", "empty segment"),
        ("/v1//shelves", "empty segment"),
        ("/v1/", "empty segment"),
        ("/v1/**/x", "'**' must be the last segment"),
        ("/**/**", "'**' must be the last segment"),
        ("/v1/{name=**}/x", "'**' must be the last segment"),
        ("/v1/{a=**}/{b}", "'**' must be the last segment"),
        ("/v1/{a={b}}", "may not contain another variable"),
        ("/v1/{a}/{a}", "duplicate variable 'a'"),
        ("/v1/{a.b}/{a.b=x/*}", "duplicate variable 'a.b'"),
        ("/v1/{a", "unbalanced '{'"),
        ("/v1/{a=b/*", "unbalanced '{'"),
        ("/v1/a}", "unbalanced '}'"),
        ("/v1/}", "unbalanced '}'"),
        ("/v1/{a}}", "unbalanced '}'"),
        ("/v1/{}", "expected a field name"),
        ("/v1/{1a}", "expected a field name"),
        ("/v1/{a.}", "expected a field name"),
        ("/v1/{.a}", "expected a field name"),
        ("/v1/{a-b}", "unexpected '-'"),
        ("/v1/{a b}", "unexpected ' '"),
        ("/v1/{a=}", "empty segment"),
        ("/v1/{a=x/}", "empty segment"),
        ("/v1/{a=/x}", "empty segment"),
        ("/v1:", "empty verb"),
        ("/v1/*:", "empty verb"),
        ("/v1/{a}:", "empty verb"),
        ("/v1/:verb", "empty segment before the verb"),
        ("/v1/a*", "unexpected '*'"),
        ("/v1/***", "unexpected '*'"),
        ("/v1/*a", "unexpected 'a'"),
        ("/v1/a{b}", "unexpected '{'"),
        ("/v1/{a}b", "unexpected 'b'"),
        ("/v1/a=b", "unexpected '='"),
        ("/v1/a b", "unexpected ' '"),
        ("/v1/a?b", "unexpected '?'"),
        ("/v1/é", "unexpected 'é'"),
        ("/v1/%zz", "invalid percent-encoding"),
        ("/v1/%4", "invalid percent-encoding"),
        ("/v1/a%", "invalid percent-encoding"),
        ("/v1/%ff", "not UTF-8"),
        ("/v1/*:a b", "unexpected ' '"),
        ("/v1/{a=*:x}", "unexpected ':'"),
    ],
)
def test_parse_invalid_template(text: str, reason: str) -> None:
    with pytest.raises(TranscodeError) as info:
        parse_template(text)
    assert info.value.code == Code.INVALID_ARGUMENT
    assert reason in info.value.message
    assert repr(text) in info.value.message
    assert "at position" in info.value.message


def test_parse_error_names_the_position() -> None:
    with pytest.raises(TranscodeError, match=r"at position 6\)"):
        parse_template("/v1/a/{b")


def test_template_is_immutable() -> None:
    template = parse_template("/v1/{name}")
    with pytest.raises(dataclasses.FrozenInstanceError):
        template.verb = "x"  # type: ignore[misc]
    assert template == parse_template("/v1/{name}")
    assert isinstance(template, PathTemplate)


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("/v1/shelves", "/v1/shelves", {}),
        ("/v1/shelves", "/v1/shelves/", None),
        ("/v1/shelves", "/v1/shelve", None),
        ("/v1/shelves", "/v1", None),
        ("/v1/shelves", "v1/shelves", None),
        ("/v1/shelves", "", None),
        ("/v1/shelves/{shelf}", "/v1/shelves/7", {"shelf": "7"}),
        ("/v1/shelves/{shelf}", "/v1/shelves/7/", None),
        ("/v1/shelves/{shelf}", "/v1/shelves/", None),
        ("/v1/shelves/{shelf}", "/v1/shelves//books", None),
        ("/v1/shelves/{shelf}/books", "/v1/shelves//books", None),
        ("/v1/shelves/{shelf}", "/v1/shelves/7/books", None),
        ("/v1/*/books", "/v1/x/books", {}),
        ("/v1/{shelf.id}/books/{book.id}", "/v1/1/books/2", {"shelf.id": "1", "book.id": "2"}),
        ("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/books/2", {"name": "shelves/1/books/2"}),
        ("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/novels/2", None),
        ("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/books", None),
        ("/v1/{name=**}", "/v1/a/b/c", {"name": "a/b/c"}),
        ("/v1/{name=**}", "/v1/a", {"name": "a"}),
        ("/v1/{name=**}", "/v1", {"name": ""}),
        ("/v1/{name=**}", "/v2/a", None),
        ("/v1/**", "/v1/a/b", {}),
        ("/**", "/", {}),
        ("/**", "/anything/at/all", {}),
        ("/{x=a/*/b/**}", "/a/1/b", {"x": "a/1/b"}),
        ("/{x=a/*/b/**}", "/a/1/b/c/d", {"x": "a/1/b/c/d"}),
        ("/{x=a/*/b/**}", "/a/1/c/d", None),
        ("/v1/{name=shelves}", "/v1/shelves", {"name": "shelves"}),
        ("/v1/a.b-c~d", "/v1/a.b-c~d", {}),
        ("/v1/{name}/x", "/v1/a/x", {"name": "a"}),
    ],
)
def test_match(template: str, path: str, expected: dict[str, str] | None) -> None:
    assert parse_template(template).match(path) == expected


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("/v1/{name}", "/v1/a%2Fb", {"name": "a/b"}),  # one segment: everything is decoded
        ("/v1/{name}", "/v1/a%2fb", {"name": "a/b"}),
        ("/v1/{name}", "/v1/caf%C3%A9%20au%20lait", {"name": "café au lait"}),
        ("/v1/{name}", "/v1/a+b", {"name": "a+b"}),  # "+" is a space only in queries
        ("/v1/{name}", "/v1/100%25", {"name": "100%"}),
        ("/v1/{name}", "/v1/%252F", {"name": "%2F"}),
        ("/v1/{name=**}", "/v1/a%2Fb/c", {"name": "a%2Fb/c"}),  # several segments: %2F stays
        ("/v1/{name=**}", "/v1/a%2fb", {"name": "a%2fb"}),
        ("/v1/{name=**}", "/v1/a%20b/%3A", {"name": "a b/:"}),
        ("/v1/{name=**}", "/v1/%252F", {"name": "%2F"}),
        ("/v1/{name=shelves/*}", "/v1/shelves/a%2Fb", {"name": "shelves/a%2Fb"}),
        ("/v1/{name=shelves/*}", "/v1/shelves/%E2%82%AC", {"name": "shelves/€"}),
        ("/v1/a%20b", "/v1/a%20b", {}),  # literals compare decoded
        ("/v1/a%20b", "/v1/a b", {}),
        ("/v1/shelves", "/v1/%73helves", {}),
        ("/v1/shelves", "/v1/%zzhelves", None),  # a literal never equals an invalid escape
        ("/v1/a%2Fb", "/v1/a%2fb", {}),
    ],
)
def test_match_percent_decoding(template: str, path: str, expected: dict[str, str] | None) -> None:
    assert parse_template(template).match(path) == expected


@pytest.mark.parametrize(
    ("template", "path"),
    [
        ("/v1/{name}", "/v1/%zz"),
        ("/v1/{name}", "/v1/%4"),
        ("/v1/{name}", "/v1/abc%"),
        ("/v1/{name}", "/v1/%ff"),  # decodes, but not to UTF-8
        ("/v1/{name=**}", "/v1/a/%zz/b"),
        ("/v1/{name=**}", "/v1/a%2F%C3"),
        ("/v1/{name=shelves/*}", "/v1/shelves/%g0"),
        ("/v1/{name}:publish", "/v1/%4:publish"),
    ],
)
def test_match_invalid_percent_encoding_raises(template: str, path: str) -> None:
    with pytest.raises(TranscodeError, match="invalid percent-encoding") as info:
        parse_template(template).match(path)
    assert info.value.code == Code.INVALID_ARGUMENT


def test_match_invalid_percent_encoding_outside_a_match_is_no_match() -> None:
    assert parse_template("/v1/{name}").match("/v2/%zz") is None


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("/v1/{name}:publish", "/v1/a:publish", {"name": "a"}),
        ("/v1/{name}:publish", "/v1/a", None),
        ("/v1/{name}:publish", "/v1/a:cancel", None),
        ("/v1/{name}:publish", "/v1/:publish", None),
        ("/v1/{name}:publish", "/v1/a:b:publish", {"name": "a:b"}),
        ("/v1/{name}:publish", "/v1/a:publish/", None),
        ("/v1/{name}", "/v1/a:b", {"name": "a:b"}),  # no verb in the template: ":" is data
        ("/v1/{name}", "/v1/a:publish", {"name": "a:publish"}),
        ("/v1/shelves:batchGet", "/v1/shelves:batchGet", {}),
        ("/v1/shelves:batchGet", "/v1/shelves", None),
        ("/v1/shelves", "/v1/shelves:batchGet", None),
        ("/v1/**:verb", "/v1/a/b:verb", {}),
        ("/v1/**:verb", "/v1:verb", {}),
        ("/v1/{name=**}:verb", "/v1/a/b:verb", {"name": "a/b"}),
        ("/v1/{name=**}:verb", "/v1/a/b", None),
        ("/v1/{name}:x:y", "/v1/a:x:y", {"name": "a"}),
        ("/v1/{name=shelves/*}:publish", "/v1/shelves/a%2Fb:publish", {"name": "shelves/a%2Fb"}),
        ("/v1/{name}:publish", "/v1/a%2Fb:publish", {"name": "a/b"}),
    ],
)
def test_match_verb(template: str, path: str, expected: dict[str, str] | None) -> None:
    assert parse_template(template).match(path) == expected


def test_match_segments_without_decoding_does_not_raise() -> None:
    template = parse_template("/v1/{name}")
    assert template.match_segments(["v1", "%zz"], decode=False) == {}
    assert template.match_segments(["v2", "%zz"], decode=False) is None


def test_specificity_orders_literal_wildcard_deep() -> None:
    literal = parse_template("/v1/shelves").specificity
    wildcard = parse_template("/v1/*").specificity
    deep = parse_template("/v1/**").specificity
    verb = parse_template("/v1/**:x").specificity
    assert verb > literal > wildcard > deep
    # an exact template beats "**" matching nothing
    assert parse_template("/v1").specificity > deep
