"""Ctrl-C at any moment of a ``customkd`` process ends with one line and exit code 130, never a traceback.

Python turns SIGINT into KeyboardInterrupt wherever the main thread happens to be: inside an import of torch, in
Typer's argument parsing, or while the interpreter shuts down, each a traceback (or two). So the process keeps one
handler per phase:

- before the work (imports, option parsing): print one line and leave at once (``os._exit``); nothing was written
  yet, so there is nothing to clean up;
- during the work (:func:`cli.common.run_or_exit`'s action): KeyboardInterrupt as usual, so the work removes its
  partial files and releases its locks, and run_or_exit prints the one line;
- after the work failed or was interrupted, once its line is printed: SIGINT is ignored, the process only exits;
- after the work succeeded: one line and leave at once, as before the work (what is left is printing its summary,
  or, for ``report``, starting its next piece of work).

Only the ``customkd`` program itself (``customkd …``, ``python -m customkd.cli …``) changes its handlers; a process that
imports ``cli`` (the tests, typer's CliRunner) keeps its own. Kept free of heavy imports: it runs first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a process ended by Ctrl-C
_owns_handlers = False


def started_as_program() -> bool:
    """Whether this process is the ``customkd`` command (console script or ``python -m customkd.cli``)."""
    args = getattr(sys, "orig_argv", [])
    as_module = "-m" in args[:-1] and args[args.index("-m") + 1] == "customkd.cli"
    return as_module or Path(sys.argv[0]).name in ("customkd", "customkd.exe")


def _leave(message: str):
    def handler(signum, frame) -> None:
        for stream in (sys.stdout, sys.stderr):  # what was printed before stays printed
            with contextlib.suppress(Exception):  # closed, or interrupted inside its own write
                stream.flush()
        with contextlib.suppress(OSError):  # stderr closed: the exit code still says it
            os.write(2, f"\n{message}\n".encode())
        os._exit(EXIT_INTERRUPTED)

    return handler


def own_handlers() -> None:
    """Make Ctrl-C before the work one line (called when the program starts, see :func:`started_as_program`)."""
    global _owns_handlers
    _owns_handlers = True
    signal.signal(signal.SIGINT, _leave("interrupted before any work began; nothing was written"))


@contextlib.contextmanager
def work() -> Iterator[None]:
    """Around a command's work: Ctrl-C raises KeyboardInterrupt inside, so the work cleans up after itself; see the
    module docstring for what it does after. A no-op in a process that is not the program."""
    if not _owns_handlers:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    except BaseException:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise
    signal.signal(signal.SIGINT, _leave("interrupted; nothing was left half-done"))
