"""Helpers every connector uses to judge JSON it was sent."""

from __future__ import annotations

from typing import Any


def has_surrogate(value: Any) -> bool:
    """True when a decoded JSON value holds an unpaired surrogate (``"\\ud800"``): valid JSON, but not
    text that can be encoded as UTF-8, so the record is rejected as ``not_utf8``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(has_surrogate(k) or has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_surrogate(v) for v in value)
    return False
