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


class UserError(Exception):
    """Bad input from the user: the message names the problem and how to fix it.

    The message is made printable on one line, whatever store or file names it quotes."""

    def __init__(self, message: object = "") -> None:
        super().__init__(printable(message))
