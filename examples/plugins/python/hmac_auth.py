"""hmac-auth: authenticate a request by an HMAC-SHA256 signature header (example runner plugin).

The client signs the selected parts of the request, one per line, in the configured order:

    signing string = "\\n".join([METHOD, path, query, date])      # the parts listed in `signed_parts`
    header         = base64(hmac_sha256(secret, signing string))

`query` is the raw query as the gateway forwards it (name=value pairs joined by "&", in order); `date` is the
value of the `Date` header, which must be within `clock_skew` seconds of now (0 disables that check).

Run it: `python -m plugin_runner --plugins examples/plugins/python/hmac_auth.py --socket /tmp/runner.sock`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from email.utils import parsedate_to_datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from plugin_runner import Plugin, Request

Part = Literal["method", "path", "query", "date"]


class HmacAuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: str = Field(min_length=16, repr=False, description="shared secret, at least 16 characters")
    header: str = Field("x-signature", min_length=1, description="header carrying the base64 signature")
    signed_parts: list[Part] = Field(["method", "path", "date"], min_length=1)
    clock_skew: int = Field(300, ge=0, description="max |now - Date| in seconds; 0 disables the check")
    hide_credentials: bool = Field(False, description="remove the signature header before proxying")


def signing_string(request: Request, parts: list[Part]) -> str:
    values = {
        "method": request.method.upper(),
        "path": request.path,
        "query": "&".join(f"{name}={value}" for name, value in request.args),
        "date": request.get_header("date") or "",
    }
    return "\n".join(values[part] for part in parts)


def sign(secret: str, text: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()).decode()


class HmacAuth(Plugin):
    """Authenticate requests by an HMAC-SHA256 signature header."""

    name: ClassVar[str] = "hmac-auth"
    Config = HmacAuthConfig

    async def on_request(self, request: Request, config: HmacAuthConfig) -> None:
        given = request.get_header(config.header)
        if not given:
            request.stop(401, body={"message": f"missing {config.header} header"})
            return
        if config.clock_skew and not _date_is_fresh(request.get_header("date"), config.clock_skew):
            request.stop(401, body={"message": "missing or stale Date header"})
            return
        expected = sign(config.secret, signing_string(request, config.signed_parts))
        # Constant-time: the comparison must not tell an attacker how many leading bytes matched.
        if not hmac.compare_digest(given.encode(), expected.encode()):
            request.stop(401, body={"message": "invalid signature"})
            return
        if config.hide_credentials:
            request.remove_header(config.header)


def _date_is_fresh(value: str | None, skew: int) -> bool:
    if not value:
        return False
    try:
        sent = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return False
    return abs(time.time() - sent) <= skew


if __name__ == "__main__":
    import plugin_runner

    plugin_runner.run(plugins=[HmacAuth])
