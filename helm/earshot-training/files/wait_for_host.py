"""Wait until a host name resolves (multi-node training: rank 0's pod DNS record).

Usage: python wait_for_host.py HOST [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import socket
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--interval", type=float, default=2.0)
    args = p.parse_args(argv)
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            socket.getaddrinfo(args.host, None)
            print(f"{args.host} resolves", flush=True)
            return 0
        except socket.gaierror:
            if time.monotonic() > deadline:
                print(f"{args.host} did not resolve within {args.timeout:.0f}s", file=sys.stderr)
                return 1
            time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
