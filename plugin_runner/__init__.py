"""The plugin-runner SDK for external plugins (Python); the protocol lives in protos/protogate/plugin/v1.

A plugin author subclasses `Plugin`, overrides `on_request` and/or `on_response`, and starts a runner with
`python -m plugin_runner --plugins my_module` or `plugin_runner.run(plugins=[MyPlugin])`. The gateway talks to
the runner with `plugin_runner.client.RunnerClient`. `plugin_runner.testing` runs a plugin in plain pytest.
"""

from __future__ import annotations

from plugin_runner.chain import ConfigError
from plugin_runner.sdk import Plugin, Request, Response
from plugin_runner.server import run

__all__ = ["ConfigError", "Plugin", "Request", "Response", "run"]
