"""Argument types of the numeric options: a value out of range (NaN, infinity, zero or a negative where
they mean nothing) is refused while the command line is parsed, before any work, in one line naming
the option (``latent-thoughts: error: VERB: argument --k: must be a positive integer, got 0``)."""

from __future__ import annotations

import argparse
import math


def _int(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value


def _float(text: str, zero: bool, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    """An integer of at least 1 (a count, a size, a number of tokens)."""
    return _int(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer of at least 0 (a seed, a number of exemplars that may be none)."""
    return _int(text, 0, "an integer of 0 or more")


def positive_float(text: str) -> float:
    """A finite number above 0 (seconds, a learning rate)."""
    return _float(text, False, "a positive finite number")


def non_negative_float(text: str) -> float:
    """A finite number of 0 or more (a greedy temperature of 0, a delay of none)."""
    return _float(text, True, "a finite number of 0 or more")


def port(text: str) -> int:
    """A TCP port: 0 (any free port) to 65535."""
    value = _int(text, 0, "a port from 0 to 65535")
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, got {value}")
    return value


NUMERIC_TYPES = (positive_int, non_negative_int, positive_float, non_negative_float, port)
"""Every numeric argument type: a verb's option of type ``int`` or ``float`` takes any number."""
