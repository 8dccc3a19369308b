"""A raw query string -> (name, value) pairs, refusing the malformed escapes Go's url.ParseQuery refuses."""

from __future__ import annotations

import json
import re
from urllib.parse import unquote_to_bytes

from transcoder.errors import TranscodeError
from transcoder.status import Code

__all__ = ["parse_query_string"]

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def parse_query_string(raw: str) -> list[tuple[str, str]]:
    """`a=1&b=x+y&c` -> [("a", "1"), ("b", "x y"), ("c", "")], in order, repeats kept.

    "+" is a space and "%XX" a byte, as in HTML forms and Go's url.ParseQuery (grpc-gateway's parser). A "%"
    that starts no escape, or escapes that are not UTF-8, are TranscodeError(INVALID_ARGUMENT): a lenient
    parser would pass "%zz" on literally and turn bytes that are not UTF-8 into U+FFFD, so the backend
    would get a value the client never sent.
    """
    pairs: list[tuple[str, str]] = []
    for part in raw.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((_decode(name, name), _decode(value, name)))
    return pairs


def _decode(text: str, name: str) -> str:
    if "+" in text:
        text = text.replace("+", " ")
    if "%" not in text:
        return text
    if _BAD_ESCAPE.search(text) is not None:
        raise TranscodeError(Code.INVALID_ARGUMENT, f"query parameter {_show(name)}: invalid percent-encoding")
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise TranscodeError(Code.INVALID_ARGUMENT, f"query parameter {_show(name)}: not UTF-8") from None


def _show(text: str) -> str:
    return json.dumps(text if len(text) <= 64 else text[:61] + "...", ensure_ascii=False)
