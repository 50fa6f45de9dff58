"""`python -m service [--host H] [--port P] [--with-worker]`: what `sgmim serve` runs."""

import argparse
import sys

from service.cli_entry import ServerConfigError, run_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sgmim serve", description=__doc__)
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--with-worker", action="store_true")
    args = parser.parse_args(argv)
    try:
        run_server(args.host, args.port, with_worker=args.with_worker)
    except ServerConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
