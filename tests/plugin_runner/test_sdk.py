"""The SDK as a plugin author meets it: the testing harness, Request/Response helpers, chains, the loader."""

from __future__ import annotations

import base64
import hashlib
import hmac
from email.utils import formatdate
from typing import ClassVar

import pytest
from pydantic import BaseModel
from runner_harness import HMAC_AUTH, REWRITE, SAMPLES

from plugin_runner import ConfigError, Plugin, Request, Response
from plugin_runner.chain import PluginFailed, prepare_chain
from plugin_runner.loader import PluginLoadError, load_plugins, registry_of
from plugin_runner.testing import check_config, run_request, run_response

SECRET = "0123456789abcdef-secret"
[HMAC] = load_plugins([str(HMAC_AUTH)])
[REWRITE_PLUGIN] = load_plugins([f"{REWRITE}:PathRewrite"])


def signature(text: str, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()).decode()


# -- config ---------------------------------------------------------------------------------------


def test_hmac_config_refusals_name_each_field() -> None:
    with pytest.raises(ConfigError) as refused:
        check_config(HMAC, {"secret": "short", "signed_parts": ["method", "body"], "extra": 1})
    paths = [path for path, _ in refused.value.errors]
    assert paths == ["config.secret", "config.signed_parts[1]", "config.extra"]


def test_rewrite_config_checks_prefixes() -> None:
    with pytest.raises(ConfigError, match="strip_prefix must start with '/'"):
        check_config(REWRITE_PLUGIN, {"strip_prefix": "api"})


# -- hmac-auth through the harness ----------------------------------------------------------------


async def test_hmac_missing_signature_stops_with_401_json() -> None:
    result = await run_request(HMAC, {"secret": SECRET}, method="GET", path="/x")
    assert result.stopped and result.status == 401
    assert result.json() == {"message": "missing x-signature header"}
    assert result.header("Content-Type") == "application/json"


async def test_hmac_valid_signature_passes() -> None:
    date = formatdate(usegmt=True)
    headers = {"Date": date, "X-Signature": signature(f"GET\n/x\n{date}")}
    result = await run_request(HMAC, {"secret": SECRET}, method="GET", path="/x", headers=headers)
    assert result.passed


async def test_hmac_signs_query_in_order_and_can_hide_the_header() -> None:
    config = {"secret": SECRET, "signed_parts": ["method", "path", "query"], "clock_skew": 0, "hide_credentials": True}
    args = [("b", "2"), ("a", "1")]
    good = {"x-signature": signature("POST\n/x\nb=2&a=1")}
    result = await run_request(HMAC, config, method="POST", path="/x", args=args, headers=good)
    assert result.rewritten and result.removed_headers == ["x-signature"]
    reordered = await run_request(HMAC, config, method="POST", path="/x", args=list(reversed(args)), headers=good)
    assert reordered.stopped and reordered.json() == {"message": "invalid signature"}


async def test_hmac_wrong_secret_or_stale_date_is_refused() -> None:
    date = formatdate(usegmt=True)
    wrong = {"date": date, "x-signature": signature(f"GET\n/x\n{date}", secret="another-secret-value")}
    result = await run_request(HMAC, {"secret": SECRET}, path="/x", headers=wrong)
    assert result.stopped and result.json()["message"] == "invalid signature"

    old = formatdate(0, usegmt=True)
    stale = {"date": old, "x-signature": signature(f"GET\n/x\n{old}")}
    result = await run_request(HMAC, {"secret": SECRET}, path="/x", headers=stale)
    assert result.stopped and result.json()["message"] == "missing or stale Date header"


# -- path-rewrite through the harness -------------------------------------------------------------


async def test_rewrite_replaces_whole_prefix_segments_and_sets_headers() -> None:
    config = {"strip_prefix": "/api", "replace_prefix": "/v2", "request_headers": {"X-From": "gw"}}
    result = await run_request(REWRITE_PLUGIN, config, path="/api/books/1")
    assert result.rewritten and result.path == "/v2/books/1" and result.set_headers == [("x-from", "gw")]
    assert (await run_request(REWRITE_PLUGIN, config, path="/apix")).path is None
    assert (await run_request(REWRITE_PLUGIN, {"strip_prefix": "/api"}, path="/api")).path == "/"


async def test_rewrite_adds_a_response_header() -> None:
    result = await run_response(REWRITE_PLUGIN, {"response_headers": {"X-Served-By": "runner"}}, status=204)
    assert result.changed and result.status is None and result.set_headers == [("x-served-by", "runner")]


# -- helpers --------------------------------------------------------------------------------------


def test_header_changes_merge_per_name() -> None:
    request = Request(method="GET", path="/", headers=[("a", "1"), ("b", "1"), ("a", "2")])
    request.set_header("A", "x")
    request.remove_header("a")  # set then remove: remove only
    request.remove_header("b")
    request.add_header("b", "3")  # remove then add: exactly these values
    request.add_header("c", "1")
    request.set_header("d", "1")
    request.add_header("d", "2")  # add after set: both values
    changes = request.header_changes
    assert changes.remove == ["a"]
    assert changes.set == {"b": ["3"], "d": ["1", "2"]}
    assert changes.add == {"c": ["1"]}
    assert request.headers == [("b", "3"), ("c", "1"), ("d", "1"), ("d", "2")]
    assert request.get_headers("D") == ["1", "2"] and request.get_header("missing") is None


def test_args_keep_their_place_and_order() -> None:
    request = Request(method="GET", path="/", args=[("a", "1"), ("b", "1"), ("a", "2")])
    request.set_arg("a", "x")
    request.set_arg("c", "new")
    request.remove_arg("b")
    assert request.args == [("a", "x"), ("c", "new")]
    assert request.arg_sets == {"a": ["x"], "c": ["new"]} and request.arg_removes == ["b"]
    request.set_arg("b", "back")
    assert request.arg_removes == [] and request.get_arg("b") == "back"


def test_stop_encodes_bodies_and_checks_status() -> None:
    request = Request(method="GET", path="/")
    request.stop(429, body=["slow down"], headers={"Retry-After": "1"})
    assert request.stopped is not None
    assert request.stopped.headers == [("retry-after", "1"), ("content-type", "application/json")]
    assert request.stopped.body == b'["slow down"]'
    with pytest.raises(ValueError, match=r"100\.\.599"):
        request.stop(42)
    with pytest.raises(ValueError, match="start with '/'"):
        request.rewrite_path("relative")


def test_response_helpers_record_changes() -> None:
    response = Response(status=200, headers=[("content-type", "text/plain")], body=b"x")
    assert not response.changed
    response.set_status(502)
    response.set_body({"ok": False})
    assert response.new_status == 502 and response.new_body == b'{"ok":false}'
    assert response.get_header("content-type") == "text/plain"  # an existing content-type is kept


class Stopper(Plugin):
    name: ClassVar[str] = "stopper"

    async def on_request(self, request: Request, config: object) -> None:
        request.stop(403, body="no")


class Tagger(Plugin):
    """Adds a header naming the path it saw."""

    name: ClassVar[str] = "tagger"

    class Config(BaseModel):
        value: str = "t"

    async def on_request(self, request: Request, config: Tagger.Config) -> None:
        request.set_header("x-saw-path", request.path)


async def test_chain_rewrites_accumulate_and_later_plugins_see_them() -> None:
    chain = [(REWRITE_PLUGIN, {"strip_prefix": "/api"}), (Tagger(), None)]
    result = await run_request(chain, path="/api/v1")
    assert result.path == "/v1" and result.set_headers == [("x-saw-path", "/v1")]


async def test_chain_stops_at_the_first_stop() -> None:
    result = await run_request([(REWRITE_PLUGIN, {"strip_prefix": "/api"}), (Stopper(), None), (Tagger(), None)])
    assert result.stopped and (result.status, result.body) == (403, b"no")


async def test_plugin_exception_names_the_plugin() -> None:
    [boom] = load_plugins([f"{SAMPLES}:Boom"])
    with pytest.raises(PluginFailed, match="plugin 'boom' failed in on_request: RuntimeError: kaput"):
        await run_request(boom)


def test_prepare_chain_reports_every_error_with_its_index() -> None:
    registry = registry_of([HMAC, REWRITE_PLUGIN])
    with pytest.raises(ConfigError) as refused:
        prepare_chain(registry, [("path-rewrite", {}), ("path-rewrite", {}), ("gone", {}), ("hmac-auth", {})])
    assert [path for path, _ in refused.value.errors] == [
        "plugins[1].name",
        "plugins[2].name",
        "plugins[3](hmac-auth).config.secret",
    ]


def test_plugin_metadata_from_the_class() -> None:
    assert Tagger.description() == "Adds a header naming the path it saw."
    assert Stopper.description() == ""
    assert Tagger.implements_request() and not Tagger.implements_response()


def test_loader_accepts_module_and_file_specs_and_refuses_bad_ones() -> None:
    assert [p.name for p in load_plugins([str(SAMPLES)])] == ["boom", "slow", "own-timeout", "echo-body"]
    assert [p.name for p in load_plugins(["sample_plugins:Slow"])] == ["slow"]  # tests/plugin_runner is on sys.path
    with pytest.raises(PluginLoadError, match="is not a Plugin subclass with a name"):
        load_plugins(["plugin_runner.sdk:Plugin"])
    with pytest.raises(PluginLoadError, match="no 'Nope'"):
        load_plugins([f"{SAMPLES}:Nope"])
    with pytest.raises(PluginLoadError, match="cannot import 'no_such_module'"):
        load_plugins(["no_such_module"])
    with pytest.raises(PluginLoadError, match="two plugins are named 'boom'"):
        load_plugins([str(SAMPLES), f"{SAMPLES}:Boom"])
