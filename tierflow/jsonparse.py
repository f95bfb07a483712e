"""Strict parsing of JSON that tierflow is sent: what every connector and the query-log importer accept.

RFC 8259 JSON only. Python's ``json`` module is lenient where a document store must not be:

- ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON; ``json.loads`` accepts them, and a document
  whose metadata holds one cannot be written back out as JSON (lineage, the cold tier, reports);
- a number such as ``1e999`` parses as ``inf``;
- a name repeated in one object silently keeps the last value;
- ``"\\ud800"`` is valid JSON but not text that can be encoded as UTF-8.

:func:`loads` refuses all of these with a :class:`JsonRejected` that carries the dead-letter reason
(``not_utf8`` or ``malformed_json``) and a one-line explanation.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

# json.loads raises a plain ValueError, not a JSONDecodeError, for an integer of more digits than this
TOO_MANY_DIGITS = f"a number has more than {sys.get_int_max_str_digits()} digits, more than can be parsed"


class JsonRejected(ValueError):
    """Input that is not strict, UTF-8 JSON. ``reason`` is ``not_utf8`` or ``malformed_json``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _Invalid(ValueError):
    """Raised from inside the decoder's hooks; turned into a JsonRejected by :func:`loads`."""


def loads(data: bytes | str) -> Any:
    """Decode ``data`` (UTF-8 bytes or text) as strict JSON; raise :class:`JsonRejected` otherwise."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise JsonRejected("not_utf8", f"invalid UTF-8 at byte {err.start}: {err.reason}") from None
    else:
        text = data
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
            parse_float=_finite_float,
        )
    except json.JSONDecodeError as err:
        raise JsonRejected("malformed_json", f"{err.msg} at line {err.lineno} column {err.colno}") from None
    except _Invalid as err:
        raise JsonRejected("malformed_json", str(err)) from None
    except ValueError:
        raise JsonRejected("malformed_json", TOO_MANY_DIGITS) from None
    except RecursionError:
        raise JsonRejected("malformed_json", "JSON nested too deeply to parse") from None
    if ("\\ud" in text or "\\uD" in text) and has_surrogate(value):
        raise JsonRejected("not_utf8", "a string holds an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)")
    return value


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages: ``object``, ``array``, ``number``..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


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


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for name, value in pairs:
        if name in record:
            raise _Invalid(f"duplicate name {name!r} in a JSON object")
        record[name] = value
    return record


def _no_constants(name: str) -> Any:
    raise _Invalid(f"{name} is not valid JSON (JSON has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as Infinity, which JSON cannot carry back out
        shown = text if len(text) <= 24 else f"{text[:20]}..."
        raise _Invalid(f"the number {shown} is too large for a double (it would be Infinity)")
    return value
