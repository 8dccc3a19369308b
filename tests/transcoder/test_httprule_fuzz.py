"""Seeded random mutations of templates and paths: parse_template and match raise only TranscodeError."""

from __future__ import annotations

import random

from transcoder.descriptors import HttpBinding
from transcoder.errors import TranscodeError
from transcoder.httprule import PathTemplate, parse_template
from transcoder.matcher import RuleMatcher

SEED_TEMPLATES = [
    "/v1/shelves",
    "/v1/shelves/{shelf}",
    "/v1/{name=shelves/*/books/*}",
    "/v1/{name=shelves/*/books/*}:publish",
    "/v1/{name=**}",
    "/v1/**:verb",
    "/v1/{a.b.c}",
    "/{x=a/*/b/**}",
    "/v1/a.b-c~d/{id}:x:y",
    "/v1/a%20b/{book.id}",
]
SEED_PATHS = [
    "/v1/shelves",
    "/v1/shelves/1",
    "/v1/shelves/1/books/a%2Fb:publish",
    "/v1/a/b/c:verb",
    "/v1/x%20y",
    "/a/1/b/c/d",
    "/v1/a.b-c~d/7:x:y",
    "/",
]
# Characters the grammar gives meaning to, plus a few it must refuse.
ALPHABET = [*"/{}=*.:%_-~aZ09", "**", "%2F", "%zz", "%C3", "%e2%82%ac", "é", "\x00", " ", "?", "//", "{a}"]
CASES = 3000


def mutate(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 4)):
        pos = rng.randint(0, len(text))
        action = rng.randrange(4)
        if action == 0:  # insert
            text = text[:pos] + rng.choice(ALPHABET) + text[pos:]
        elif action == 1:  # delete a short run
            text = text[:pos] + text[pos + rng.randint(1, 3) :]
        elif action == 2:  # replace one character
            text = text[:pos] + rng.choice(ALPHABET) + text[pos + 1 :]
        else:  # splice in a piece of another seed
            other = rng.choice(SEED_TEMPLATES + SEED_PATHS)
            start = rng.randint(0, len(other))
            text = text[:pos] + other[start : start + rng.randint(1, 8)] + text[pos:]
    return text


def try_parse(text: str) -> PathTemplate | None:
    try:
        return parse_template(text)
    except TranscodeError:
        return None


def try_match(template: PathTemplate, path: str) -> None:
    try:
        captured = template.match(path)
    except TranscodeError:
        return
    if captured is not None:
        assert set(captured) == {v.name for v in template.variables}
        assert all(isinstance(value, str) for value in captured.values())


def test_mutated_templates_and_paths_raise_only_transcode_error() -> None:
    rng = random.Random(20240611)
    templates = [parse_template(t) for t in SEED_TEMPLATES]
    parsed = 0
    for _ in range(CASES):
        template = try_parse(mutate(rng.choice(SEED_TEMPLATES), rng))
        if template is not None:
            parsed += 1
            # A template that parses must parse the same way again and match its own shape.
            assert parse_template(template.text) == template
            templates.append(template)
        path = mutate(rng.choice(SEED_PATHS), rng)
        try_match(rng.choice(templates), path)
        if template is not None:
            try_match(template, path)
    # The mutations must keep some templates valid, or the match half tests little.
    assert parsed > CASES // 10


def test_matcher_over_mutated_templates_raises_only_transcode_error() -> None:
    rng = random.Random(7)
    templates = [t for t in (try_parse(mutate(rng.choice(SEED_TEMPLATES), rng)) for _ in range(600)) if t]
    templates += [parse_template(t) for t in SEED_TEMPLATES]
    methods = ["GET", "POST", "HEAD"]
    bindings = [HttpBinding(rng.choice(methods), t, "", "", None) for t in templates]  # type: ignore[arg-type]
    matcher = RuleMatcher.build(bindings)
    for _ in range(CASES // 3):
        path = mutate(rng.choice(SEED_PATHS), rng)
        try:
            found = matcher.match(rng.choice(methods), path)
        except TranscodeError:
            continue
        allowed = matcher.allowed_methods(path)
        if found is not None:
            assert found.binding.http_method in allowed
