"""Strict parsing of query and path parameters: nothing a client sends is a 500.

Python's own parsers are too lenient for a wire format: ``str.isdigit`` is true for
``"²"`` (and ``int("²")`` then raises), ``int``/``float`` take any Unicode digit
(``"٣"`` is 3), underscores, surrounding spaces, ``inf`` and ``nan``, and ``int`` of
more than 4300 digits raises. So every number is matched against an ASCII pattern of
bounded length before it is converted, and every id against the UUID's ASCII shape.

A refused value is a 400 ``{"error": "Invalid parameter", "params": {"name", "value"}}``;
the value is echoed back truncated, so a huge parameter does not make a huge error.
"""

from __future__ import annotations

import re
from typing import NoReturn

from app.errors import INVALID_JOB_ID, INVALID_PARAMETER
from app.formatting import clipped

_INTEGER = re.compile(r"[0-9]{1,9}")
_SIZE = re.compile(r"[0-9]{1,18}")
_DECIMAL = re.compile(r"[0-9]{1,9}(?:\.[0-9]{0,9})?|\.[0-9]{1,9}")
#: The UUID forms clients send: canonical (any case), or 32 hex digits.
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
#: An ``Idempotency-Key``: 1 to 255 visible ASCII characters (no space, no control).
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def invalid(name: str, value: str) -> NoReturn:
    raise INVALID_PARAMETER.error({"name": name, "value": clipped(value)})


def integer(name: str, value: str, minimum: int, maximum: int) -> int:
    """An ASCII decimal integer in ``[minimum, maximum]`` (at most 9 digits)."""
    if _INTEGER.fullmatch(value) is None:
        invalid(name, value)
    number = int(value)
    if not minimum <= number <= maximum:
        invalid(name, value)
    return number


def decimal(name: str, value: str, minimum: float, maximum: float) -> float:
    """An ASCII decimal number (``3``, ``0.25``, ``.5``) in ``[minimum, maximum]``: no
    sign, exponent, ``inf`` or ``nan``."""
    if _DECIMAL.fullmatch(value) is None:
        invalid(name, value)
    number = float(value)
    if not minimum <= number <= maximum:
        invalid(name, value)
    return number


def flag(name: str, value: str) -> bool:
    """``true`` or ``false``, exactly."""
    if value == "true":
        return True
    if value == "false":
        return False
    invalid(name, value)


def uuid_text(value: str) -> str | None:
    """``value`` as a canonical (lower-case, hyphenated) UUID, or None when it is not one."""
    if _CANONICAL_UUID.fullmatch(value) is not None:  # what clients send: no work
        return value
    if _UUID.fullmatch(value) is None:
        return None
    digits = value.replace("-", "").lower()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def uuid_param(name: str, value: str) -> str:
    """A UUID query parameter (canonical form), or a 400 ``Invalid parameter``."""
    parsed = uuid_text(value)
    if parsed is None:
        invalid(name, value)
    return parsed


def job_id(value: str) -> str:
    """A job id (canonical form), or a 400 ``Invalid job id`` ``{"id"}``."""
    parsed = uuid_text(value)
    if parsed is None:
        raise INVALID_JOB_ID.error({"id": clipped(value)})
    return parsed


def content_length(value: str | None) -> int | None:
    """An announced body size, or None when absent or not a plain ASCII number (the
    server has already refused those; the streamed size is checked anyway)."""
    if value is None or _SIZE.fullmatch(value) is None:
        return None
    return int(value)


def idempotency_key(value: str) -> str:
    """The ``Idempotency-Key`` header of a submit (SPEC §8), as sent, or a 400."""
    if _IDEMPOTENCY_KEY.fullmatch(value) is None:
        invalid("Idempotency-Key", value)
    return value
