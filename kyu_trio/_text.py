"""Pure: making text from user code safe to store in PostgreSQL and to put in a log line."""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, and the Unicode line/paragraph separators: anything a terminal
# or a log shipper may treat as a line break or an escape sequence.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def storable(text: str, max_bytes: int | None = None) -> str:
    """``text`` as PostgreSQL ``text`` can hold it: lone surrogates become U+FFFD, NUL
    becomes ``\\x00``, and past ``max_bytes`` of UTF-8 it is cut and ends in ``...``.

    Exception messages come from user code (and from payloads: ``json.loads`` of the
    ASCII ``"\\ud800"`` is a lone surrogate), so they may hold what UTF-8 cannot encode.

    >>> storable("bad \\ud800 and \\x00")
    'bad \\ufffd and \\\\x00'
    """
    if not text.isascii():
        text = _SURROGATE.sub("\ufffd", text)
    text = text.replace("\x00", "\\x00")
    if max_bytes is not None:
        raw = text.encode("utf-8")
        if len(raw) > max_bytes:
            text = raw[: max(max_bytes - 3, 0)].decode("utf-8", "ignore") + "..."
    return text


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def one_line(text: str) -> str:
    """``text`` with every control character escaped, so that a user's string can never
    start a new log line or send a terminal escape sequence.

    >>> one_line("boom\\n2026-01-01 INFO forged")
    'boom\\\\n2026-01-01 INFO forged'
    """
    return _CONTROL.sub(_escape, storable(text))


def indented_block(text: str, prefix: str = "    | ") -> str:
    """A multi-line text (a traceback) for a log record: every line escaped and prefixed,
    so none of them can pass for a record of its own."""
    return "\n".join(prefix + one_line(line) for line in text.rstrip("\n").split("\n"))
