"""A protocol 1 plugin runner (unary calls only, no Calls stream), for the gateway's compatibility tests.

The Python SDK runner with Describe saying protocol_version 1 and Calls not registered (UNIMPLEMENTED, as in a
runner generated from the protocol 1 proto). `--claim 2` keeps Describe at 2 while Calls stays unregistered: a
runner that is wrong about itself, which the gateway must survive too.

    python tests/servers/ext_plugins/legacy_runner.py [--claim N] --plugins SPEC ...   (the address from the env)
"""

from __future__ import annotations

import functools
import sys

import plugin_runner.server
import plugin_runner.service
from plugin_runner.__main__ import main

if __name__ == "__main__":
    args = sys.argv[1:]
    claim = 1
    if args[:1] == ["--claim"]:
        claim, args = int(args[1]), args[2:]
    plugin_runner.service.PROTOCOL_VERSION = claim  # what Describe reports
    plugin_runner.server.add_to_server = functools.partial(plugin_runner.service.add_to_server, calls=False)
    sys.exit(main(args))
