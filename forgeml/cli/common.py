"""What every forgeml command line shares: the parser's frame and the one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from forgeml.errors import ForgeError


def new_parser(prog: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """A parser with the examples kept as written and `--debug` (tracebacks instead of lines)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    return parser


def run(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """`command(args)`; a user mistake (ForgeError) prints one line and returns its exit code
    (2; 130/143 for an interrupted training), `--debug` raises it instead."""
    try:
        return command(args)
    except ForgeError as exc:
        if args.debug:
            raise
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
