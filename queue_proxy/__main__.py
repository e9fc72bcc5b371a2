"""`kapa queue-proxy` / `python -m queue_proxy`: configured only by environment variables (see README.md)."""

from __future__ import annotations

import argparse
import os
import sys

import uvloop

from kapa.core import log
from queue_proxy.config import Config, ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kapa queue-proxy",
        description="The queue-proxy sidecar. Configured by environment variables: see queue_proxy/README.md.",
    )
    parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = Config.from_env(os.environ)
    except ConfigError as error:
        print(f"kapa queue-proxy: invalid configuration: {error}", file=sys.stderr)
        return 2
    log.configure()
    from queue_proxy.server import serve  # after the config check: a bad env fails fast

    try:
        return uvloop.run(serve(config))
    except OSError as error:  # a port in use, an address not on this host
        print(f"kapa queue-proxy: cannot listen: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
