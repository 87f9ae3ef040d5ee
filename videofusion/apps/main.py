"""The ``videofusion`` command: one parser over the front ends' commands, and their errors as one line.

``generate`` is :mod:`videofusion.apps.generate`'s, ``train``, ``init-demo`` and ``eval-demo`` are
:mod:`videofusion.apps.cli`'s, ``web`` is
:mod:`videofusion.apps.web`'s and ``batch`` :mod:`videofusion.apps.batch`'s. A user's mistake (a bad option,
a missing file) is printed as ``videofusion COMMAND: error: ...`` with exit code 2, naming the option typed.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import SettingError
from ..version import __version__
from . import batch, cli, convert, generate, web
from .common import CLIError, cli_error


class Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake as one line (``videofusion generate: error: ...``) and exit code 2:
    ``--help`` shows the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="videofusion", description="Text-to-video with UNet3D latent diffusion.")
    parser.add_argument("--version", action="version", version=f"videofusion {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generate.add_parser(sub)
    cli.add_parsers(sub)
    web.add_parser(sub)
    batch.add_parser(sub)
    convert.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except SettingError as e:  # named as typed: an option, or for train a key of the config file
        print(f"videofusion {args.command}: error: {e if args.command == 'train' else cli_error(e)}", file=sys.stderr)
        return 2
    except (CLIError, ValueError, TypeError, OSError) as e:  # OSError: missing, unreadable or unwritable files
        print(f"videofusion {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
