"""What every cityseg command shares: one-line errors, exit codes, size flags, logging."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence


class CliError(Exception):
    """A user-facing failure: printed as one line on stderr, exit code 2."""


def parse_size(text: str) -> tuple[int, int]:
    """Parses `HxW` (e.g. `512x1024`) into a positive (height, width) pair.

    Raises:
      argparse.ArgumentTypeError: for anything else, so argparse prints a one-line usage error.
    """
    parts = text.lower().split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 512x1024, not {text!r}") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, not {text!r}")
    return height, width


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults and keeps the examples in the epilog as written.

    A default of None is not shown: "(default: None)" tells nothing, and the help of such an
    option says itself what happens when it is not given.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def setup_logging(verbose: bool = False) -> None:
    """Plain INFO logging to stderr; quietens TensorFlow's C++ start-up chatter."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A library that logged at import time (Beam does) has already configured the root logger
    # at WARNING, which makes basicConfig a no-op and would swallow our progress lines; its
    # handlers (and any a test harness added) stay, only the level is raised.
    logging.getLogger().setLevel(level)


def run_cli(prog: str, main: Callable[[Sequence[str] | None], int | None],
            argv: Sequence[str] | None = None) -> int:
    """Runs a command's main, turning expected failures into one line on stderr.

    CliError, FileNotFoundError and ValueError are the failures a user can fix; they print
    `prog: error: reason` and exit 2. Ctrl-C exits 130. Anything else is a bug and keeps its
    traceback.
    """
    try:
        code = main(argv)
    except CliError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
