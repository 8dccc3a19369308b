"""RuleMatcher: which binding a method and path reach, by precedence, and which methods a path allows."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest

from transcoder.descriptors import HttpBinding
from transcoder.errors import TranscodeError
from transcoder.httprule import parse_template
from transcoder.matcher import Match, RuleMatcher


def binding(http_method: str, template: str, name: str | None = None) -> HttpBinding:
    # The matcher never looks at `method`; a name stands in for the MethodInfo so tests can tell bindings apart.
    return HttpBinding(http_method, parse_template(template), "", "", cast(Any, name or f"{http_method} {template}"))


def matched_name(matcher: RuleMatcher, http_method: str, path: str) -> str | None:
    found = matcher.match(http_method, path)
    return None if found is None else cast(str, found.binding.method)


def test_match_returns_binding_and_variables() -> None:
    get_book = binding("GET", "/v1/shelves/{shelf}/books/{book.id}")
    matcher = RuleMatcher.build([binding("GET", "/v1/shelves"), get_book])
    found = matcher.match("GET", "/v1/shelves/1/books/a%20b")
    assert found == Match(get_book, {"shelf": "1", "book.id": "a b"})


@pytest.mark.parametrize(
    ("http_method", "path"),
    [
        ("GET", "/v1/novels"),
        ("GET", "/v1/shelves/"),
        ("GET", "v1/shelves"),
        ("GET", ""),
        ("GET", "/"),
        ("POST", "/v1/shelves"),
        ("PATCH", "/v1/shelves/1"),
        ("GET", "/v1/shelves/1/books/2/x"),
    ],
)
def test_no_match(http_method: str, path: str) -> None:
    matcher = RuleMatcher.build([binding("GET", "/v1/shelves"), binding("GET", "/v1/shelves/{shelf}/books/{book}")])
    assert matcher.match(http_method, path) is None


def test_empty_matcher_matches_nothing() -> None:
    matcher = RuleMatcher.build([])
    assert matcher.match("GET", "/v1") is None
    assert matcher.allowed_methods("/v1") == []


@pytest.mark.parametrize(
    ("templates", "path", "winner"),
    [
        # literal beats "*", whatever the order they are listed in
        (["/v1/shelves/{id}", "/v1/shelves/default"], "/v1/shelves/default", "/v1/shelves/default"),
        (["/v1/shelves/default", "/v1/shelves/{id}"], "/v1/shelves/other", "/v1/shelves/{id}"),
        # "*" beats "**"
        (["/v1/{rest=**}", "/v1/shelves/{id}"], "/v1/shelves/1", "/v1/shelves/{id}"),
        (["/v1/**", "/v1/*/books"], "/v1/x/books", "/v1/*/books"),
        # earlier segments decide first
        (["/v1/*/books", "/v1/shelves/*"], "/v1/shelves/books", "/v1/shelves/*"),
        (["/v1/{name=shelves/*}", "/v1/*/default"], "/v1/shelves/default", "/v1/{name=shelves/*}"),
        # an exact template beats "**" matching nothing
        (["/v1/**", "/v1"], "/v1", "/v1"),
        (["/v1/{a=**}", "/v1/{b}"], "/v1/x", "/v1/{b}"),
        # longer literal prefixes beat shorter ones before "**"
        (["/v1/**", "/v1/shelves/**"], "/v1/shelves/1/2", "/v1/shelves/**"),
        # a verb that matched beats no verb
        (["/v1/{name}", "/v1/{name}:publish"], "/v1/a:publish", "/v1/{name}:publish"),
        (["/v1/shelves/{id}", "/v1/{name=**}:publish"], "/v1/shelves/a:publish", "/v1/{name=**}:publish"),
        (["/v1/{name}", "/v1/{name}:publish"], "/v1/a:cancel", "/v1/{name}"),
        (["/v1/{name}:publish", "/v1/{name}:cancel"], "/v1/a:cancel", "/v1/{name}:cancel"),
        # ties go to the binding listed first
        (["/v1/{a}", "/v1/{b}"], "/v1/x", "/v1/{a}"),
        (["/v1/{b}", "/v1/{a}"], "/v1/x", "/v1/{b}"),
        (["/v1/{a=**}", "/v1/**"], "/v1/x/y", "/v1/{a=**}"),
    ],
)
def test_most_specific_template_wins(templates: list[str], path: str, winner: str) -> None:
    matcher = RuleMatcher.build([binding("GET", t, t) for t in templates])
    assert matched_name(matcher, "GET", path) == winner


def test_tie_goes_to_first_listed_binding_of_same_template() -> None:
    matcher = RuleMatcher.build([binding("GET", "/v1/x", "first"), binding("GET", "/v1/x", "second")])
    assert matched_name(matcher, "GET", "/v1/x") == "first"


def test_methods_are_kept_apart() -> None:
    matcher = RuleMatcher.build(
        [
            binding("GET", "/v1/shelves/{id}", "get"),
            binding("DELETE", "/v1/shelves/{id}", "delete"),
            binding("POST", "/v1/shelves", "create"),
            binding("PURGE", "/v1/shelves", "custom"),
        ]
    )
    assert matched_name(matcher, "GET", "/v1/shelves/1") == "get"
    assert matched_name(matcher, "DELETE", "/v1/shelves/1") == "delete"
    assert matched_name(matcher, "POST", "/v1/shelves") == "create"
    assert matched_name(matcher, "PURGE", "/v1/shelves") == "custom"
    assert matched_name(matcher, "post", "/v1/shelves") == "create"
    assert matched_name(matcher, "POST", "/v1/shelves/1") is None


def test_head_falls_back_to_get_only_without_a_head_binding() -> None:
    matcher = RuleMatcher.build(
        [
            binding("GET", "/v1/shelves", "get-shelves"),
            binding("GET", "/v1/books", "get-books"),
            binding("HEAD", "/v1/books", "head-books"),
        ]
    )
    assert matched_name(matcher, "HEAD", "/v1/shelves") == "get-shelves"
    assert matched_name(matcher, "HEAD", "/v1/books") == "head-books"
    assert matched_name(matcher, "HEAD", "/v1/novels") is None


def test_allowed_methods() -> None:
    matcher = RuleMatcher.build(
        [
            binding("GET", "/v1/shelves/{id}"),
            binding("PATCH", "/v1/shelves/{shelf.id}"),
            binding("DELETE", "/v1/shelves/{id}"),
            binding("GET", "/v1/shelves/{id}:x"),
            binding("POST", "/v1/shelves"),
            binding("POST", "/v1/shelves/{id}:publish"),
        ]
    )
    assert matcher.allowed_methods("/v1/shelves/1") == ["DELETE", "GET", "PATCH"]
    assert matcher.allowed_methods("/v1/shelves") == ["POST"]
    assert matcher.allowed_methods("/v1/shelves/1:publish") == ["DELETE", "GET", "PATCH", "POST"]
    assert matcher.allowed_methods("/v1/novels") == []
    assert matcher.allowed_methods("nope") == []


def test_allowed_methods_does_not_raise_on_bad_escapes() -> None:
    matcher = RuleMatcher.build([binding("GET", "/v1/shelves/{id}")])
    assert matcher.allowed_methods("/v1/shelves/%zz") == ["GET"]


def test_invalid_escape_in_best_match_raises() -> None:
    matcher = RuleMatcher.build([binding("GET", "/v1/shelves/{id}"), binding("GET", "/v1/{rest=**}")])
    with pytest.raises(TranscodeError, match="invalid percent-encoding"):
        matcher.match("GET", "/v1/shelves/%zz")


def test_percent_encoded_literal_reaches_its_binding() -> None:
    matcher = RuleMatcher.build([binding("GET", "/v1/shelves", "shelves"), binding("GET", "/v1/{x}", "x")])
    assert matched_name(matcher, "GET", "/v1/%73helves") == "shelves"
    assert matched_name(matcher, "GET", "/v1/%7Ahelves") == "x"


@pytest.mark.parametrize(
    ("path", "winner"),
    [
        ("/v1", "/v1/**"),  # "/v1/**:verb" cannot match without ":verb"
        ("/v1:verb", "/v1:verb"),
        ("/v1/a:verb", "/v1/**:verb"),
        ("/v1/a/b/c/d/e/f/g", "/v1/**"),
        ("/v2/a/b/c/d/e/f/g", "/{x=**}"),
        ("/v1/shelves/1/books/2", "/v1/shelves/{s}/books/{b}"),
        ("/v1/shelves/1/books/2:verb", "/v1/**:verb"),
    ],
)
def test_lookup_across_segment_counts_and_verbs(path: str, winner: str) -> None:
    templates = ["/{x=**}", "/v1/**", "/v1:verb", "/v1/**:verb", "/v1/shelves/{s}/books/{b}", "/v1/{a}/{b}"]
    matcher = RuleMatcher.build([binding("GET", t, t) for t in templates])
    assert matched_name(matcher, "GET", path) == winner


def test_many_bindings_agree_with_brute_force_and_stay_fast() -> None:
    templates: list[str] = []
    for i in range(100):
        templates += [
            f"/v1/res{i}",
            f"/v1/res{i}/{{id}}",
            f"/v1/res{i}/{{id}}:act",
            f"/v1/{{name=res{i}/*/sub/*}}",
        ]
    templates += ["/v1/{rest=**}", "/v2/{a}/{b}/{c}"]
    bindings = [binding("GET", t, t) for t in templates]
    matcher = RuleMatcher.build(bindings)
    paths = ["/v1/res7", "/v1/res42/x", "/v1/res99/x:act", "/v1/res3/a/sub/b", "/v1/nope/x", "/v2/a/b/c", "/v3"]

    def brute_force(path: str) -> str | None:
        matching = [b for b in bindings if b.template.match(path) is not None]
        best = max(matching, key=lambda b: b.template.specificity, default=None)
        return None if best is None else cast(str, best.method)

    for path in paths:
        assert matched_name(matcher, "GET", path) == brute_force(path)

    started = time.perf_counter()
    for _ in range(2000):
        for path in paths:
            matcher.match("GET", path)
    # 14k lookups over 402 templates; trying every template would take several seconds
    assert time.perf_counter() - started < 1.5
