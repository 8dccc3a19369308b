"""APISIX-style variables for plugins: `$var` templates and lua-resty-expr conditions, compiled once."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.responses import ProxyResponse

# APISIX's resolve_var grammar: `\$name` is a literal `$name`, `${name}` and `$name` are variables, and
# `${name ?? text}` is `text` when the variable has no value.
_TOKEN = re.compile(r"\\\$([0-9A-Za-z_]+)|\$\{\s*([0-9A-Za-z_]+)\s*(?:\?\?\s*([^}]*?)\s*)?\}|\$([0-9A-Za-z_]+)")
# ctx.vars key of the regex_uri match proxy-rewrite made: `$1`, `${2}` in its header values read its groups.
CAPTURES = "proxy_rewrite_regex_uri_captures"
_PLAIN_VARS = frozenset(
    {
        "uri",
        "request_uri",
        "args",
        "query_string",
        "is_args",
        "host",
        "remote_addr",
        "request_method",
        "scheme",
        "route_id",
        "consumer_name",
        "consumer_group_id",
        "request_id",
        "status",
    }
)
_PREFIXES = ("http_", "arg_", "cookie_")


def is_known_var(name: str, captures: bool = False) -> bool:
    """A variable the gateway can resolve; `captures`: also `$1`-style regex groups (proxy-rewrite headers)."""
    if captures and name.isdigit():
        return True
    if name in _PLAIN_VARS:
        return True
    return any(name.startswith(prefix) and len(name) > len(prefix) for prefix in _PREFIXES)


def resolve_var(name: str, ctx: RequestContext, response: ProxyResponse | None = None) -> str | None:
    """One variable's value for this request (and answer, for `status`); None when it has none.

    Request variables read the request as the plugins have left it so far (`uri` is the current,
    normalised, still percent-encoded path), except `request_uri`: the target the client sent,
    as in nginx.
    """
    if name == "uri":
        return ctx.path
    if name == "request_uri":
        return ctx.request.raw_path
    if name in ("args", "query_string"):
        return ctx.query
    if name == "is_args":
        return "?" if ctx.query else ""
    if name == "host":
        host = ctx.headers.get("Host") or ctx.request.host
        return _strip_port(host).lower()
    if name == "remote_addr":
        return ctx.client_ip
    if name == "request_method":
        return ctx.method
    if name == "scheme":
        return ctx.request.scheme
    if name == "route_id":
        return ctx.route_id
    if name == "consumer_name":
        return ctx.consumer.username if ctx.consumer is not None else None
    if name == "consumer_group_id":
        return ctx.consumer.group_id if ctx.consumer is not None else None
    if name == "status":
        return str(response.status) if response is not None else None
    if name.isdigit():
        match = ctx.vars.get(CAPTURES)
        if not isinstance(match, re.Match) or int(name) > (match.re.groups or 0):
            return None
        return match.group(int(name))
    if name.startswith("http_"):
        # nginx's spelling: http_x_api_key is the header X-Api-Key, in any letter case.
        values = ctx.headers.getall(name[5:].replace("_", "-"), [])
        return ",".join(values) if values else None
    if name.startswith("arg_"):
        return query_arg(ctx.query, name[4:])
    if name.startswith("cookie_"):
        return ctx.request.cookies.get(name[7:])
    value = ctx.vars.get(name)
    return None if value is None else str(value)


def query_arg(query: str, name: str) -> str | None:
    """The first value of a query argument, still percent-encoded as nginx's `$arg_name` is."""
    if not query or name not in query:
        return None
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == name:
            return value
    return None


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclass(frozen=True)
class Template:
    """A string with `$var` / `${var}` references, split once; `render` fills them per request."""

    parts: tuple[str | tuple[str, str | None], ...]  # literal text, or (variable name, default text)

    @classmethod
    def parse(cls, text: str) -> Template:
        parts: list[str | tuple[str, str | None]] = []
        pos = 0
        for match in _TOKEN.finditer(text):
            if match.start() > pos:
                parts.append(text[pos : match.start()])
            escaped, braced, default, bare = match.groups()
            parts.append("$" + escaped if escaped else (braced or bare, default))
            pos = match.end()
        if pos < len(text):
            parts.append(text[pos:])
        return cls(tuple(parts))

    @property
    def names(self) -> list[str]:
        return [part[0] for part in self.parts if isinstance(part, tuple)]

    @property
    def is_literal(self) -> bool:
        return not self.names

    def render(
        self,
        ctx: RequestContext,
        response: ProxyResponse | None = None,
        escape: Callable[[str], str] | None = None,
    ) -> str:
        """The text with each variable's value (its default, else empty, when missing), through `escape` if given."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            name, default = part
            value = resolve_var(name, ctx, response)
            if value is None:
                value = default or ""
            out.append(escape(value) if escape is not None else value)
        return "".join(out)


def check_template(text: str, captures: bool = False) -> Template:
    """Parse a template and refuse variables the gateway does not know (a typo would render as "")."""
    template = Template.parse(text)
    unknown = [name for name in template.names if not is_known_var(name, captures)]
    if unknown:
        raise ValueError(f"unknown variable(s) {', '.join('$' + n for n in unknown)} ({VAR_HELP})")
    return template


VAR_HELP = f"known: {', '.join(sorted(_PLAIN_VARS))}, http_<header>, arg_<name>, cookie_<name>"

# --- lua-resty-expr conditions ------------------------------------------------------------------

_OPS = frozenset({"==", "~=", ">", "<", ">=", "<=", "in", "has", "~~", "~*"})


@dataclass(frozen=True)
class Condition:
    var: str
    op: str
    value: Any
    negate: bool = False
    pattern: re.Pattern[str] | None = None

    def matches(self, ctx: RequestContext, response: ProxyResponse | None) -> bool:
        result = self._test(resolve_var(self.var, ctx, response))
        return not result if self.negate else result

    def _test(self, actual: str | None) -> bool:
        op, expected = self.op, self.value
        if op == "in":
            return actual is not None and any(_equal(actual, item) for item in expected)
        if op == "has":
            return actual is not None and str(expected) in actual.split(",")
        if op in ("~~", "~*"):
            return actual is not None and self.pattern is not None and self.pattern.search(actual) is not None
        if op == "==":
            return actual is not None and _equal(actual, expected)
        if op == "~=":
            return actual is None or not _equal(actual, expected)
        left, right = _number(actual), _number(expected)
        if left is None or right is None:
            return False
        return {">": left > right, "<": left < right, ">=": left >= right, "<=": left <= right}[op]


@dataclass(frozen=True)
class Expression:
    """Conditions joined by AND (the default, as in lua-resty-expr) or OR; items may nest."""

    items: tuple[Condition | Expression, ...]
    any_of: bool = False

    def matches(self, ctx: RequestContext, response: ProxyResponse | None = None) -> bool:
        test = any if self.any_of else all
        return test(item.matches(ctx, response) for item in self.items)


def compile_expression(raw: Any) -> Expression:
    """`[["status", "==", 200], ["arg_x", "in", ["a", "b"]]]`, optionally led by "AND" / "OR"; ValueError if bad."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("an expression is a non-empty list of conditions, e.g. [['status', '==', 200]]")
    any_of = False
    items: Sequence[Any] = raw
    if isinstance(raw[0], str) and raw[0].upper() in ("AND", "OR", "!AND", "!OR"):
        if raw[0].startswith("!"):
            raise ValueError("negated groups ('!AND', '!OR') are not supported")
        any_of = raw[0].upper() == "OR"
        items = raw[1:]
        if not items:
            raise ValueError(f"{raw[0]!r} needs at least one condition")
    elif isinstance(raw[0], str):
        # A single bare condition, `["status", "==", 200]`.
        return Expression((_condition(raw),))
    compiled: list[Condition | Expression] = []
    for item in items:
        nested = isinstance(item, list) and item and (isinstance(item[0], list) or item[0] in ("AND", "OR"))
        compiled.append(compile_expression(item) if nested else _condition(item))
    return Expression(tuple(compiled), any_of)


def _condition(raw: Any) -> Condition:
    if not isinstance(raw, list) or len(raw) not in (3, 4) or not isinstance(raw[0], str):
        raise ValueError(f"a condition is [var, op, value] or [var, '!', op, value], not {raw!r}")
    negate = len(raw) == 4
    if negate and raw[1] != "!":
        raise ValueError(f"a four-item condition needs '!' second: {raw!r}")
    var, op, value = raw[0], raw[-2], raw[-1]
    if not is_known_var(var):
        raise ValueError(f"unknown variable {var!r} ({VAR_HELP})")
    if op not in _OPS:
        raise ValueError(f"unknown operator {op!r} (known: {', '.join(sorted(_OPS))})")
    pattern = None
    if op == "in":
        if not isinstance(value, list):
            raise ValueError(f"'in' needs a list value: {raw!r}")
    elif op in ("~~", "~*"):
        if not isinstance(value, str):
            raise ValueError(f"{op!r} needs a regex string: {raw!r}")
        try:
            pattern = re.compile(value, re.IGNORECASE if op == "~*" else 0)
        except re.error as exc:
            raise ValueError(f"invalid regex {value!r}: {exc}") from None
    elif op in (">", "<", ">=", "<=") and _number(value) is None:
        raise ValueError(f"{op!r} needs a number: {raw!r}")
    elif isinstance(value, list | dict):
        raise ValueError(f"{op!r} needs a string or number value: {raw!r}")
    return Condition(var, op, value, negate, pattern)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _equal(actual: str, expected: Any) -> bool:
    # A number in the rule compares numerically (`["status", "==", 200]` matches "200"), as in lua-resty-expr.
    if isinstance(expected, int | float) and not isinstance(expected, bool):
        number = _number(actual)
        return number is not None and number == float(expected)
    return actual == str(expected)
