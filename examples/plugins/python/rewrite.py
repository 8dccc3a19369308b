"""path-rewrite: add request headers, replace a path prefix, and add response headers (example runner plugin).

Run it: `python -m plugin_runner --plugins examples/plugins/python/rewrite.py --socket /tmp/runner.sock`.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from plugin_runner import Plugin, Request, Response


class RewriteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    request_headers: dict[str, str] = Field(default_factory=dict, description="set on the proxied request")
    strip_prefix: str | None = Field(None, description="path prefix to replace, e.g. /api")
    replace_prefix: str = Field("", description="what replaces strip_prefix; empty strips it")
    response_headers: dict[str, str] = Field(default_factory=dict, description="set on the client's response")

    @model_validator(mode="after")
    def _prefixes_are_paths(self) -> RewriteConfig:
        if self.strip_prefix is not None and not self.strip_prefix.startswith("/"):
            raise ValueError("strip_prefix must start with '/'")
        if self.replace_prefix and not self.replace_prefix.startswith("/"):
            raise ValueError("replace_prefix must start with '/'")
        return self


def replace_prefix(path: str, prefix: str, replacement: str) -> str | None:
    """`path` with `prefix` replaced, matching whole segments only (/api matches /api/x, not /apix); else None."""
    prefix = prefix.rstrip("/")
    if path != prefix and not path.startswith(prefix + "/"):
        return None
    rest = path[len(prefix) :]
    new = replacement.rstrip("/") + rest
    return new if new.startswith("/") else "/" + new


class PathRewrite(Plugin):
    """Add request headers, replace a path prefix, add response headers."""

    name: ClassVar[str] = "path-rewrite"
    Config = RewriteConfig

    async def on_request(self, request: Request, config: RewriteConfig) -> None:
        for name, value in config.request_headers.items():
            request.set_header(name, value)
        if config.strip_prefix is not None:
            new_path = replace_prefix(request.path, config.strip_prefix, config.replace_prefix)
            if new_path is not None:
                request.rewrite_path(new_path)

    async def on_response(self, response: Response, config: RewriteConfig) -> None:
        for name, value in config.response_headers.items():
            response.set_header(name, value)


if __name__ == "__main__":
    import plugin_runner

    plugin_runner.run(plugins=[PathRewrite])
