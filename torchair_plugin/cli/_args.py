"""argparse value types that reject bad values with a usage error (exit 2), not a traceback."""

from __future__ import annotations

import argparse
import math
import sys

from torchair_plugin.cli import EXIT_BAD_INPUT


def usage_error(command: str, message: str) -> int:
    """Print ``<command>: error: <message>`` (one line, as argparse does) and return exit status 2."""
    print(f"{command}: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def int_in(low: int, high: int):
    """An argparse ``type`` accepting an int in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def finite_float_at_least(low: float):
    """An argparse ``type`` accepting a finite float >= low."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"must be a finite number >= {low}, got {text}")
        return value

    parse.__name__ = "number"
    return parse
