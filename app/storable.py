"""What a JSON value must be for the node to store it and read it back (SPEC §10).

Two things pass JSON decoding and then fail later, where they take others down with them:

- a NUL character (``"\\u0000"``): PostgreSQL refuses it in JSONB (and in text), so the
  statement that carries it fails, and with it every other job committed in that
  statement (group commits of submits and step results);
- deep nesting: encoding, decoding and answering a value recurse once per level, and
  past ~1000 levels (less, with the stack already in use) they raise ``RecursionError``,
  on writing (SQLite: the JSON column's encoder) or on every read of the job.

So input (``app.jobs.requests``) and container output (``app.containers.client``) are
checked here, before anything is grouped, against ``server.max_json_depth``.

Every job and every step passes through these checks, so each has a fast path on the
raw bytes that rules the problem out for almost every value without looking at it: a
NUL can only arrive as the escape ``\\u0000`` (JSON refuses a raw NUL byte, and so does
msgspec), and a value can only be deeper than N when its text has more than N ``{`` or
``[`` bytes. Only a value that fails a fast path is walked, iteratively (a recursive
walk would be the very ``RecursionError``), since ``\\u0000`` may be a literal backslash
followed by ``u0000`` and brackets may be inside strings.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

# The reasons' texts are the catalogue's; re-exported for the output checks (app.containers).
from app.errors import NUL_REFUSED as NUL_REFUSED
from app.errors import nested_too_deep as nested_too_deep

#: ``server.max_json_depth``'s default.
DEFAULT_MAX_DEPTH = 64

NUL_ESCAPE = b"\\u0000"


def contains_nul(value: Any) -> bool:
    """Whether a string, or an object key, anywhere in ``value`` holds a NUL character."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            if "\x00" in item:
                return True
        elif kind is dict:
            for key, child in item.items():
                if "\x00" in key:
                    return True
                stack.append(child)
        elif kind is list:
            stack.extend(item)
    return False


def deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` objects/arrays (``{}`` is 1, a scalar 0).

    Level by level, so that a flat object (most job data) costs one pass over its values."""
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below = []
        for item in level:
            for child in item.values() if type(item) is dict else item:
                if type(child) is dict or type(child) is list:
                    below.append(child)
        level = below
    return False


def unstorable(value: Any, limit: int, nul: bool = True, depth: bool = True) -> str | None:
    """Why ``value`` cannot be stored (the end of a sentence: "<what> contains …"), or None.

    ``nul`` and ``depth`` say which checks are still needed (the fast paths ruled the
    others out)."""
    if nul and contains_nul(value):
        return NUL_REFUSED
    if depth and deeper_than(value, limit):
        return nested_too_deep(limit)
    return None


def may_be_deeper(raw: bytes, limit: int) -> bool:
    """False when the JSON text cannot nest more than ``limit`` levels: that takes more
    than ``limit`` opening brackets (and as many closing ones)."""
    return len(raw) > 2 * limit and raw.count(b"{") + raw.count(b"[") > limit


def check_raw(raw: bytes, value: Any, limit: int) -> str | None:
    """``unstorable`` of ``value``, decoded from ``raw``, after the fast paths: a few
    hundred nanoseconds for a value that is fine."""
    nul = NUL_ESCAPE in raw
    depth = may_be_deeper(raw, limit)
    if not (nul or depth):
        return None
    return unstorable(value, limit, nul, depth)


#: A JSON string (escapes included), or a bracket: what ``too_deep_key`` reads of a text.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]]')
_COLON = re.compile(rb"\s*:")


def too_deep_key(raw: bytes, limit: int) -> str | None:
    """The key of the top-level object ``raw`` whose value nests deeper than ``limit``,
    read from the text: for a body too deep to decode at all (``RecursionError``), so that
    the answer can still name the field. It reads up to the first level too deep only."""
    depth = 0
    key: bytes | None = None
    for token in _TOKEN.finditer(raw):
        first = raw[token.start()]
        if first == 0x22:  # '"'
            if depth == 1 and _COLON.match(raw, token.end()):
                key = token.group()
        elif first in (0x7B, 0x5B):  # '{', '['
            depth += 1
            if depth > limit + 1:
                if key is None:
                    return None
                try:
                    return str(msgspec.json.decode(key))
                except msgspec.DecodeError:
                    return None
        else:
            depth -= 1
    return None
