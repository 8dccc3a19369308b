"""`python -m plugin_runner --plugins pkg.module[:Class] [--socket PATH | --address ADDR]`: start a runner."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from plugin_runner.loader import PluginLoadError, load_plugins
from plugin_runner.server import ADDRESS_ENV, CONF_EXPIRY_ENV, run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m plugin_runner",
        description="Serve protogate runner plugins over gRPC (protogate.plugin.v1.PluginRunner).",
    )
    parser.add_argument(
        "--plugins",
        action="append",
        required=True,
        metavar="SPEC",
        help="pkg.module[:Class] or path/to/file.py[:Class]; without :Class, every plugin the module defines "
        "(or its PLUGINS tuple). Repeatable.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="listen on this Unix socket (created 0600)")
    where.add_argument(
        "--address", metavar="ADDR", help=f"unix:PATH or HOST:PORT (default: ${ADDRESS_ENV}, set by the gateway)"
    )
    parser.add_argument("--max-tokens", type=int, default=4096, help="prepared chains kept (LRU); default 4096")
    parser.add_argument(
        "--conf-expiry",
        type=float,
        default=None,
        help=f"forget chains idle this many seconds (default: ${CONF_EXPIRY_ENV}, or never)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: list[str] | None = None) -> int:
    parent_pid = os.getppid()  # first thing: see server.serve
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    address = f"unix:{args.socket}" if args.socket else args.address or os.environ.get(ADDRESS_ENV)
    if not address:
        print(f"plugin runner: no address (use --socket, --address or set {ADDRESS_ENV})", file=sys.stderr)
        return 2
    try:
        plugins = load_plugins(args.plugins)
    except PluginLoadError as exc:
        print(f"plugin runner: {exc}", file=sys.stderr)
        return 2
    run(plugins, address, max_tokens=args.max_tokens, conf_expiry=args.conf_expiry, parent_pid=parent_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
