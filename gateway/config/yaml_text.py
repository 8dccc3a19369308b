"""YAML as config files and data files are read: safe types only, a repeated key refused, errors in one line."""

from __future__ import annotations

from typing import Any

import yaml


def parse_yaml(text: str) -> Any:
    """yaml.safe_load, except that a key given twice in one mapping is a yaml.YAMLError (YAML keeps the
    last one silently, so a second `plugins:` under a route would drop the first without a word)."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key repeated in one mapping is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden key by key
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given at line {first.line + 1})", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line report as one line: where, what, and the construct it was in."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem is None:
        return " ".join(str(exc).split())
    where = exc.problem_mark or exc.context_mark
    text = f"line {where.line + 1}, column {where.column + 1}: {exc.problem}" if where else str(exc.problem)
    if exc.context and exc.context_mark is not None:
        text += f" ({exc.context} at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
    elif exc.context:
        text += f" ({exc.context})"
    return text
