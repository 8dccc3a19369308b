"""Parse google.api.http path templates into PathTemplates and match raw request paths against them."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import NoReturn
from urllib.parse import unquote_to_bytes

from transcoder.errors import TranscodeError
from transcoder.status import Code

WILDCARD = "*"  # one path segment
DEEP_WILDCARD = "**"  # zero or more path segments; only ever the last segment

_IDENT_START = frozenset(string.ascii_letters + "_")
_IDENT_CHARS = _IDENT_START | frozenset(string.digits)
# RFC 3986 pchar, less "*" and "=" (tokens of the template grammar); "%" escapes are checked apart.
_LITERAL_CHARS = frozenset(string.ascii_letters + string.digits + "-._~" + "!$&'()+,;" + ":@")
_HEX = frozenset(string.hexdigits)

# Compiled once at import: matching runs per request.
_INVALID_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPED_SLASH = re.compile(r"(%2[Ff])")

# Ranks of what a template has at one path position, for precedence between templates that match the
# same path. _END (the template stops here) outranks only "**": an exact template beats "**" matching nothing.
_RANK_DEEP = 0
_RANK_END = 1
_RANK_WILDCARD = 2
_RANK_LITERAL = 3


@dataclass(frozen=True)
class Variable:
    """A `{field.path=...}` capture: the template segments [start, end) it covers."""

    field_path: tuple[str, ...]
    start: int
    end: int  # for a variable ending in "**" this is len(segments): it runs to the end of the path

    @property
    def name(self) -> str:
        return ".".join(self.field_path)


@dataclass(frozen=True)
class PathTemplate:
    """A compiled path template. Build it with parse_template(); `segments` holds each segment's text
    as written ("*", "**" or a literal, still percent-encoded), variables flattened into their segments.
    """

    text: str
    segments: tuple[str, ...]
    variables: tuple[Variable, ...]
    verb: str | None
    # What match() needs, worked out once here so that a request only compares strings.
    specificity: tuple[int, ...] = field(init=False, repr=False, compare=False)
    min_segments: int = field(init=False, repr=False, compare=False)
    has_deep_wildcard: bool = field(init=False, repr=False, compare=False)
    _literals: tuple[tuple[int, str], ...] = field(init=False, repr=False, compare=False)
    _wildcards: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _captures: tuple[tuple[str, int, int, bool], ...] = field(init=False, repr=False, compare=False)
    _verb_suffix: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        deep = bool(self.segments) and self.segments[-1] == DEEP_WILDCARD
        literals = tuple(
            (i, _literal_value(s)) for i, s in enumerate(self.segments) if s not in (WILDCARD, DEEP_WILDCARD)
        )
        captures: list[tuple[str, int, int, bool]] = []
        for var in self.variables:
            covered = self.segments[var.start : var.end]
            to_end = DEEP_WILDCARD in covered
            # end -1: up to the end of the path, however many segments "**" took
            captures.append((var.name, var.start, -1 if to_end else var.end, to_end or len(covered) != 1))
        ranks = [
            _RANK_WILDCARD if s == WILDCARD else _RANK_DEEP if s == DEEP_WILDCARD else _RANK_LITERAL
            for s in self.segments
        ]
        if not deep:
            ranks.append(_RANK_END)
        # The verb comes first: a path ending in ":verb" is meant for the custom method (Envoy's choice too).
        specificity = (1 if self.verb else 0, *ranks)
        set_ = object.__setattr__
        set_(self, "specificity", specificity)
        set_(self, "min_segments", len(self.segments) - 1 if deep else len(self.segments))
        set_(self, "has_deep_wildcard", deep)
        set_(self, "_literals", literals)
        set_(self, "_wildcards", tuple(i for i, s in enumerate(self.segments) if s == WILDCARD))
        set_(self, "_captures", tuple(captures))
        set_(self, "_verb_suffix", f":{self.verb}" if self.verb else "")

    def literal_at(self, index: int) -> str | None:
        """The decoded literal the template has at segment `index`, or None for a wildcard or past its end."""
        for i, value in self._literals:
            if i == index:
                return value
        return None

    def match(self, path: str) -> dict[str, str] | None:
        """Match a raw path (percent-encoded, no query): {"dotted.field": decoded value} or None.

        Raises TranscodeError(INVALID_ARGUMENT) when the path matches but a captured segment is not
        valid percent-encoded UTF-8.
        """
        if not path.startswith("/"):
            return None
        return self.match_segments(path[1:].split("/"))

    def match_segments(self, parts: list[str], *, decode: bool = True) -> dict[str, str] | None:
        """match() on a path already split at "/" (RuleMatcher splits once for all templates).

        With decode=False only the shape is checked and {} is returned on a match, never raising.
        """
        n = len(parts)
        if n < self.min_segments or (n != self.min_segments and not self.has_deep_wildcard):
            return None
        suffix = self._verb_suffix
        if suffix:
            last = parts[-1]
            # ":verb" alone is an empty segment followed by a verb, which grpc-gateway refuses too.
            if len(last) <= len(suffix) or not last.endswith(suffix):
                return None
            parts = [*parts[:-1], last[: -len(suffix)]]
        for i, literal in self._literals:
            segment = parts[i]
            if "%" in segment:
                if literal_form(segment) != literal:
                    return None
            elif segment != literal:
                return None
        for i in self._wildcards:
            # An empty segment ("/shelves//books") is a client error, not an empty field value.
            if not parts[i]:
                return None
        if not decode:
            return {}
        captured: dict[str, str] = {}
        for name, start, end, multi in self._captures:
            if multi:
                captured[name] = _decode("/".join(parts[start : n if end < 0 else end]), keep_slash=True)
            else:
                captured[name] = _decode(parts[start], keep_slash=False)
        return captured


def parse_template(text: str) -> PathTemplate:
    """Parse a google.api.http path template; TranscodeError(INVALID_ARGUMENT) says where it is wrong."""
    return _Parser(text).parse()


def literal_form(segment: str) -> str | None:
    """A raw path segment as a template literal is compared to it: percent-decoded, or None if it
    is not valid percent-encoded UTF-8 (then it equals no literal).
    """
    if "%" not in segment:
        return segment
    try:
        return _decode(segment, keep_slash=False)
    except TranscodeError:
        return None


def _decode(raw: str, *, keep_slash: bool) -> str:
    """Percent-decode a captured value. A multi-segment value keeps "%2F"/"%2f" as written, as
    google/api/http.proto asks (reserved expansion, RFC 6570), so a "/" inside a segment survives.
    """
    if "%" not in raw:
        return raw
    if _INVALID_ESCAPE.search(raw):
        raise TranscodeError(Code.INVALID_ARGUMENT, f"invalid percent-encoding in path {raw!r}")
    if keep_slash:
        # Odd items are the escaped slashes themselves; no UTF-8 sequence contains 0x2F, so none is split.
        parts = _ESCAPED_SLASH.split(raw)
        return "".join(p if i % 2 else _unquote(p, raw) for i, p in enumerate(parts))
    return _unquote(raw, raw)


def _unquote(part: str, whole: str) -> str:
    try:
        return unquote_to_bytes(part).decode("utf-8")
    except UnicodeDecodeError:
        raise TranscodeError(Code.INVALID_ARGUMENT, f"invalid percent-encoding in path {whole!r}: not UTF-8") from None


def _literal_value(raw: str) -> str:
    return unquote_to_bytes(raw).decode("utf-8") if "%" in raw else raw


class _Parser:
    """Recursive descent over the grammar of google/api/http.proto, one character at a time."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.segments: list[str] = []
        self.segment_positions: list[int] = []
        self.variables: list[Variable] = []
        self.verb: str | None = None

    def parse(self) -> PathTemplate:
        if not self.text.startswith("/"):
            self.fail("a template must start with '/'", 0)
        self.pos = 1
        self.parse_segments(in_variable=False)
        if self.peek() == ":":
            self.parse_verb()
        if self.pos != len(self.text):
            self.fail(f"unexpected {self.peek()!r}")
        for i, segment in enumerate(self.segments[:-1]):
            if segment == DEEP_WILDCARD:
                self.fail("'**' must be the last segment", self.segment_positions[i])
        return PathTemplate(self.text, tuple(self.segments), tuple(self.variables), self.verb)

    def fail(self, reason: str, pos: int | None = None) -> NoReturn:
        at = self.pos if pos is None else pos
        raise TranscodeError(Code.INVALID_ARGUMENT, f"invalid path template {self.text!r}: {reason} (at position {at})")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def parse_segments(self, *, in_variable: bool) -> None:
        while True:
            self.parse_segment(in_variable=in_variable)
            if self.peek() != "/":
                return
            self.pos += 1

    def parse_segment(self, *, in_variable: bool) -> None:
        start = self.pos
        char = self.peek()
        if char == "*":
            wildcard = DEEP_WILDCARD if self.text.startswith(DEEP_WILDCARD, start) else WILDCARD
            self.pos += len(wildcard)
            self.add_segment(wildcard, start)
        elif char == "{":
            if in_variable:
                self.fail("a variable may not contain another variable")
            self.parse_variable()
        elif char in ("", "/") or (char == "}" and in_variable):
            self.fail("empty segment")
        elif char == "}":
            self.fail("unbalanced '}'")
        else:
            self.parse_literal(in_variable=in_variable)
        follower = self.peek()
        if follower in ("", "/") or (follower == "}" and in_variable) or (follower == ":" and not in_variable):
            return
        if follower == "}":
            self.fail("unbalanced '}'")
        self.fail(f"unexpected {follower!r}: a segment is '*', '**', a literal or a whole variable")

    def parse_literal(self, *, in_variable: bool) -> None:
        start = self.pos
        self.scan_literal(allow_colon=True)
        raw = self.text[start : self.pos]
        if not raw:
            self.fail(f"unexpected {self.peek()!r}")
        # The last top-level segment may carry the verb; like grpc-gateway, the last ":" starts it.
        if not in_variable and self.pos == len(self.text) and ":" in raw:
            colon = raw.rindex(":")
            raw, verb = raw[:colon], raw[colon + 1 :]
            if not raw:
                self.fail("empty segment before the verb", start)
            if not verb:
                self.fail("empty verb", start + colon)
            self.verb = verb
        self.add_segment(raw, start)

    def scan_literal(self, *, allow_colon: bool) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char == "%":
                escape = text[self.pos + 1 : self.pos + 3]
                if len(escape) != 2 or not set(escape) <= _HEX:
                    self.fail("invalid percent-encoding")
                self.pos += 3
            elif char in _LITERAL_CHARS and (allow_colon or char != ":"):
                self.pos += 1
            else:
                return

    def add_segment(self, segment: str, pos: int) -> None:
        if segment not in (WILDCARD, DEEP_WILDCARD):
            try:
                _literal_value(segment)
            except UnicodeDecodeError:
                self.fail("percent-encoding is not UTF-8", pos)
        self.segments.append(segment)
        self.segment_positions.append(pos)

    def parse_variable(self) -> None:
        open_pos = self.pos
        self.pos += 1
        field_path: list[str] = []
        while True:
            start = self.pos
            if self.peek() not in _IDENT_START:
                self.fail("expected a field name (letters, digits, '_', not starting with a digit)")
            while self.pos < len(self.text) and self.text[self.pos] in _IDENT_CHARS:
                self.pos += 1
            field_path.append(self.text[start : self.pos])
            if self.peek() != ".":
                break
            self.pos += 1
        first_segment = len(self.segments)
        if self.peek() == "=":
            self.pos += 1
            self.parse_segments(in_variable=True)
        else:
            self.add_segment(WILDCARD, open_pos)  # {var} is {var=*}
        if self.peek() != "}":
            if not self.peek():
                self.fail("unbalanced '{'", open_pos)
            self.fail(f"unexpected {self.peek()!r} in a variable's field path")
        self.pos += 1
        variable = Variable(tuple(field_path), first_segment, len(self.segments))
        if any(v.field_path == variable.field_path for v in self.variables):
            self.fail(f"duplicate variable {variable.name!r}", open_pos)
        self.variables.append(variable)

    def parse_verb(self) -> None:
        colon = self.pos
        self.pos += 1
        # After '*', '**' or '}' the whole rest is the verb, colons included (grpc-gateway does the same).
        self.scan_literal(allow_colon=True)
        if self.pos == colon + 1:
            self.fail("empty verb", colon)
        self.verb = self.text[colon + 1 : self.pos]
