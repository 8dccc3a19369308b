"""Private keys in the Admin API: inline key material goes out as a marker; the marker sent back keeps the stored key.

A GET answers a file path as it is, and anything else in a key field (inline PEM) as REDACTED, so
a client can read an object, change it and PUT it back: REDACTED in a write stands for the key the
object has stored in that field. A write with REDACTED where nothing is stored is refused.
`protogate export` reads the store itself and keeps the keys (it is the operator's backup).
"""

from __future__ import annotations

import copy
import re
from typing import Any

REDACTED = "[redacted]"  # Envoy's word for secrets in its config dump

_BASE64 = re.compile(r"[A-Za-z0-9+/=_-]+")
_LONG = 40  # base64 of the smallest private key (Ed25519, PKCS#8 DER) is 64 characters

# Where objects of each kind hold a private key (field names from the object's top).
KEY_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "ssls": (("key",),),
    "upstreams": (("tls", "client_key"),),
    "routes": (("upstream", "tls", "client_key"),),
    "services": (("upstream", "tls", "client_key"),),
    "plugin_runners": (("tls", "client_key"),),
}


def is_key_material(value: Any) -> bool:
    """Whether a key field's value must not be shown: anything that does not look like a file path.

    PEM, or a key pasted without its PEM lines (long base64). A long path without a dot is hidden too,
    which costs only its display: the marker sent back keeps it like any other hidden value.
    """
    if not isinstance(value, str):
        return value is not None
    if "-----" in value or any(c in value for c in "\n\r\t"):
        return True
    compact = value.replace(" ", "")
    return len(compact) >= _LONG and _BASE64.fullmatch(compact) is not None


def redact(kind: str, value: dict[str, Any]) -> dict[str, Any]:
    """`value` as the Admin API shows it: key material replaced by REDACTED (a copy; the store's value is untouched)."""
    out = value
    for path in KEY_FIELDS.get(kind, ()):
        parent = _holder(out, path)
        if parent is None or not is_key_material(parent.get(path[-1])):
            continue
        if out is value:
            out = copy.deepcopy(value)
            parent = _holder(out, path)
            assert parent is not None
        parent[path[-1]] = REDACTED
    return out


def restore(kind: str, value: dict[str, Any], stored: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """`value` with each REDACTED key field replaced by what `stored` holds there, and the fields where it holds none.

    Only a value that redact() hid can be kept this way: a stored file path was shown, so it is sent back as it is.
    """
    out, missing = value, []
    for path in KEY_FIELDS.get(kind, ()):
        parent = _holder(out, path)
        if parent is None or parent.get(path[-1]) != REDACTED:
            continue
        held = _holder(stored, path) if stored is not None else None
        kept = held.get(path[-1]) if held is not None else None
        if not isinstance(kept, str) or not is_key_material(kept):
            missing.append(".".join(path))
            continue
        if out is value:
            out = copy.deepcopy(value)
            parent = _holder(out, path)
            assert parent is not None
        parent[path[-1]] = kept
    return out, missing


def _holder(value: Any, path: tuple[str, ...]) -> dict[str, Any] | None:
    """The dict in `value` that holds the last name of `path`, if the names before it lead to one."""
    for name in path[:-1]:
        value = value.get(name) if isinstance(value, dict) else None
    return value if isinstance(value, dict) else None
