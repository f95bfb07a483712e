"""Helpers every connector uses to judge JSON it was sent."""

from __future__ import annotations

import math
import sys
from typing import Any

# json.loads raises a plain ValueError, not a JSONDecodeError, for an integer of more digits than this
TOO_MANY_DIGITS = f"a number has more than {sys.get_int_max_str_digits()} digits, more than can be parsed"


def has_surrogate(value: Any) -> bool:
    """True when a decoded JSON value holds an unpaired surrogate (``"\\ud800"``): valid JSON, but not
    text that can be encoded as UTF-8, so the record is rejected as ``not_utf8``.

    Walks the value without recursion: JSON nested as deeply as the parser accepts must not overflow
    the stack here.
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def is_finite_number(value: int | float) -> bool:
    """True for a finite float, or an integer a float can hold (``math.isfinite(10**400)`` raises)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
