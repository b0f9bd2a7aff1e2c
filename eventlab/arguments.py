"""Argparse ``type``s shared by the command lines, each refusing a bad value in one line naming it,
and :func:`is_number`, the type check of a number given to the Python API."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TypeGuard

__all__ = ["LARGEST_INT64", "directory", "home_expanded", "is_number", "seconds", "utf8_text", "whole_number"]

#: The largest whole number SQLite, PostgreSQL (bigint) and DuckDB hold: the bound of an id or a count.
LARGEST_INT64 = 2**63 - 1


def is_number(value: object) -> TypeGuard[int | float]:
    """Whether ``value`` is an int or a float, and not a bool (which Python counts as an int).

    >>> is_number(2.5), is_number(True), is_number("2")
    (True, False, False)
    """
    return isinstance(value, int | float) and not isinstance(value, bool)


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` taking a whole number from ``low`` (to ``high``, when given).

    >>> whole_number(1, 9)("3")
    3
    >>> whole_number(0)("-1")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: not a whole number of at least 0: '-1'
    """
    bounds = f"of at least {low}" if high is None else f"from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"not a whole number {bounds}: {text!r}")
        return value

    return parse


def seconds(low: float, high: float) -> Callable[[str], float]:
    """An argparse ``type`` taking a number of seconds from ``low`` to ``high`` (``nan``, ``inf`` refused).

    >>> seconds(0.1, 3600)("2.5")
    2.5
    >>> seconds(0.1, 3600)("nan")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: not a number of seconds from 0.1 to 3,600: 'nan'
    """

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:  # NaN compares false both ways
            raise argparse.ArgumentTypeError(f"not a number of seconds from {_shown(low)} to {_shown(high)}: {text!r}")
        return value

    return parse


def _shown(bound: float) -> str:
    """A bound as people write it: ``0.1``, ``3,600``, ``1,000,000,000``."""
    return f"{bound:,.0f}" if float(bound).is_integer() else f"{bound:g}"


def utf8_text(text: str) -> str:
    """Text that is UTF-8 (an argparse ``type``): other bytes (a shell's ``$'\\xff'``) reach Python as
    lone surrogates, which no store can look up (its driver raised ``UnicodeEncodeError``).

    >>> utf8_text("order.lifecycle.created")
    'order.lifecycle.created'
    >>> utf8_text("\\udcff")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: holds bytes that are not UTF-8 (character 1)
    """
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise argparse.ArgumentTypeError(f"holds bytes that are not UTF-8 (character {exc.start + 1})") from None
    return text


def directory(text: str) -> Path:
    """A directory (an argparse ``type``), ``~`` expanded: not empty or blank, which would be the
    working directory, nor under the home of a user there is not.

    >>> directory("/srv/shop")
    PosixPath('/srv/shop')
    >>> directory("")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: empty: give a directory (an empty path would be the working directory)
    >>> directory("~nosuchuser/shop")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: cannot expand '~nosuchuser': no such user, or no home directory
    """
    if not text.strip():  # "$DIR" of an unset variable: files would be written where the command runs
        raise argparse.ArgumentTypeError("empty: give a directory (an empty path would be the working directory)")
    try:
        return home_expanded(Path(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def home_expanded(path: Path) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded; ``ValueError`` saying why when there is no
    such user or no home directory (Python says only ``RuntimeError: Could not determine home directory``).

    >>> home_expanded(Path("~nosuchuser/shop"))
    Traceback (most recent call last):
    ValueError: cannot expand '~nosuchuser': no such user, or no home directory
    """
    try:
        return path.expanduser()
    except RuntimeError:
        raise ValueError(f"cannot expand {path.parts[0]!r}: no such user, or no home directory") from None
