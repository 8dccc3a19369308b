"""RuleMatcher: HTTP method + raw path -> the most specific HttpBinding and its captured variables."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from transcoder.descriptors import HttpBinding
from transcoder.httprule import PathTemplate, literal_form


@dataclass(frozen=True)
class Match:
    """The binding a request matched, with its path variables (dotted field path -> decoded value)."""

    binding: HttpBinding
    variables: dict[str, str]


@dataclass(frozen=True)
class _Bucket:
    """The candidates for one segment count, in precedence order, indexed on one literal position.

    `pivot` is the path position whose literal best splits the candidates (grouping by first literal
    alone does nothing when every route starts with "/v1"); `by_literal[x]` holds the candidates with
    literal x there plus every candidate without an indexed literal, `others` only the latter.
    """

    pivot: int
    by_literal: dict[str, tuple[HttpBinding, ...]]
    others: tuple[HttpBinding, ...]

    def candidates(self, parts: list[str]) -> tuple[HttpBinding, ...]:
        if not self.by_literal:
            return self.others
        segment = literal_form(parts[self.pivot])
        if segment is None:
            return self.others
        return self.by_literal.get(segment, self.others)


class RuleMatcher:
    """Compiled once per descriptor set; match() runs per request and never tries every template.

    Bindings are grouped by HTTP method, then by the number of path segments, then on one literal.
    When several templates match, the most specific wins: a template with a verb first, then segment
    by segment a literal beats a single-segment wildcard, which beats "**"; ties go to the binding
    listed first. A HEAD request matches GET bindings when no HEAD binding matches its path.
    """

    def __init__(self, tables: dict[str, tuple[_Bucket, ...]]) -> None:
        # tables[method][n - 1] holds the candidates for n path segments; the last bucket also
        # serves every longer path, which only templates ending in "**" can match.
        self._tables = tables

    @classmethod
    def build(cls, bindings: Iterable[HttpBinding]) -> RuleMatcher:
        by_method: dict[str, list[HttpBinding]] = {}
        for binding in bindings:
            by_method.setdefault(binding.http_method.upper(), []).append(binding)
        tables: dict[str, tuple[_Bucket, ...]] = {}
        for method, method_bindings in by_method.items():
            # sorted() is stable, also with reverse=True, so equal templates keep their listed order.
            ranked = sorted(method_bindings, key=lambda b: b.template.specificity, reverse=True)
            longest = max(b.template.min_segments for b in ranked)
            tables[method] = tuple(_bucket(ranked, n) for n in range(1, longest + 2))
        return cls(tables)

    def match(self, http_method: str, path: str) -> Match | None:
        """The binding for a raw path (percent-encoded, no query string), or None.

        Raises TranscodeError(INVALID_ARGUMENT) when the best template matches but a captured segment
        is not valid percent-encoding.
        """
        if not path.startswith("/"):
            return None
        parts = path[1:].split("/")
        method = http_method.upper()
        found = self._match_in(method, parts)
        if found is None and method == "HEAD":
            found = self._match_in("GET", parts)
        return found

    def allowed_methods(self, path: str) -> list[str]:
        """The HTTP methods that have a template matching `path`, sorted (for a 405's Allow header)."""
        if not path.startswith("/"):
            return []
        parts = path[1:].split("/")
        return sorted(
            method
            for method, buckets in self._tables.items()
            if any(
                b.template.match_segments(parts, decode=False) is not None
                for b in buckets[min(len(parts), len(buckets)) - 1].candidates(parts)
            )
        )

    def _match_in(self, method: str, parts: list[str]) -> Match | None:
        buckets = self._tables.get(method)
        if buckets is None:
            return None
        for binding in buckets[min(len(parts), len(buckets)) - 1].candidates(parts):
            variables = binding.template.match_segments(parts)
            if variables is not None:
                return Match(binding, variables)
        return None


def _bucket(ranked: list[HttpBinding], n: int) -> _Bucket:
    """The bucket for paths of n segments; `ranked` is in precedence order and stays so."""
    candidates = [b for b in ranked if _fits(b.template, n)]
    best: tuple[int, int, dict[str, list[HttpBinding]], list[HttpBinding]] | None = None
    for pivot in range(n):
        groups: dict[str, list[HttpBinding]] = {}
        unindexed: list[HttpBinding] = []
        for binding in candidates:
            literal = _indexable_literal(binding.template, pivot, n)
            if literal is None:
                unindexed.append(binding)
            else:
                groups.setdefault(literal, []).append(binding)
        if not groups:
            continue
        # The cost is the longest list a request can end up walking.
        cost = max(len(g) for g in groups.values()) + len(unindexed)
        if best is None or cost < best[0]:
            best = (cost, pivot, groups, unindexed)
    if best is None:
        return _Bucket(0, {}, tuple(candidates))
    _, pivot, groups, unindexed = best
    unindexed_ids = {id(b) for b in unindexed}
    by_literal: dict[str, tuple[HttpBinding, ...]] = {}
    for literal, group in groups.items():
        wanted = unindexed_ids | {id(b) for b in group}
        by_literal[literal] = tuple(b for b in candidates if id(b) in wanted)
    return _Bucket(pivot, by_literal, tuple(unindexed))


def _fits(template: PathTemplate, n: int) -> bool:
    if template.has_deep_wildcard:
        return n >= template.min_segments
    return n == template.min_segments


def _indexable_literal(template: PathTemplate, pivot: int, n: int) -> str | None:
    """The literal a path must have at `pivot` for the template to match, if there is a fixed one."""
    if template.has_deep_wildcard and pivot >= template.min_segments:
        return None  # "**" may cover this position
    if template.verb is not None and pivot == n - 1:
        return None  # the path's last segment still carries ":verb"
    return template.literal_at(pivot)
