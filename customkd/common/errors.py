"""The one exception type that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations

import unicodedata

# Unicode categories that must never reach a terminal raw: control (escape sequences, newlines),
# format (bidi overrides), surrogates, private use and unassigned code points.
_UNPRINTABLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def printable(text: object) -> str:
    """``text`` with control and format characters written as Python escapes (``\\x1b``, ``\\u202e``).

    Strings from a store (attributes, names) come from someone else: printed raw, an escape
    sequence would drive the reader's terminal, and a newline would forge output lines."""
    return "".join(ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in _UNPRINTABLE else ch
                   for ch in str(text))


MAX_LINE_CHARS = 2000  # an error or log line; a longer one quotes something (a forged name) no one reads whole


def one_line(text: object, limit: int = MAX_LINE_CHARS) -> str:
    """:func:`printable` ``text`` in at most about ``limit`` characters: a longer one keeps its start and its end
    (where an error's advice is) around a note of how long it was, so a megabyte-long name from a file never
    floods the terminal."""
    raw = str(text)
    if len(raw) <= limit:
        shown = printable(raw)
        if len(shown) <= limit:
            return shown
    half = limit // 2
    return f"{printable(raw[:half])[:half]} … ({len(raw)} characters, cut) … {printable(raw[-half:])[-half:]}"


class UserError(Exception):
    """Bad input from the user: the message names the problem and how to fix it.

    The message is made printable on one line (:func:`one_line`), whatever store or file names it quotes."""

    def __init__(self, message: object = "") -> None:
        super().__init__(one_line(message))
