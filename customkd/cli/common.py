"""What every command shares: logging setup and the one-line error contract (exit code 2)."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import sys
import typing
from collections.abc import Callable
from typing import Annotated, TypeVar

import typer

from customkd.common import interrupt
from customkd.common.distributed import is_main_process
from customkd.common.errors import one_line
from customkd.common.options import field_hints

T = TypeVar("T")
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")]
EXIT_USAGE = 2


def config_defaults(config_class) -> dict:
    """Field name → default of a config dataclass: the one source of the command line's defaults."""
    return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(config_class)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}


class PrintableFormatter(logging.Formatter):
    """Every log message on one bounded line with control and format characters escaped
    (:func:`common.errors.one_line`): log lines quote file, folder, store and object names that someone else
    chose, as errors do."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        # one_line is imported with the module: a record logged while Python shuts down (asyncio's, below) cannot
        # import anything, and logging would print its own traceback instead
        record.message = one_line(record.message)
        return super().formatMessage(record)


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose or os.environ.get("CUSTOMKD_DEBUG") else logging.INFO
    level = logging.WARNING if quiet and not verbose else level
    if not is_main_process():  # under torchrun, rank 0 speaks for everyone
        level = logging.WARNING
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr,
                        force=True)
    for handler in logging.getLogger().handlers:  # open_clip logs on the root logger; our errors summarise it
        handler.addFilter(lambda record: record.name != "root")
        handler.setFormatter(PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
    for ours in ("customkd", "bench"):
        logging.getLogger(ours).setLevel(level)
    for noisy in ("huggingface_hub", "timm", "urllib3", "httpx"):  # retries are summarised in our one-line error
        logging.getLogger(noisy).setLevel(logging.ERROR)


def run_or_exit(action: Callable[[], T],
                interrupted: Callable[[], str] = lambda: "rerun the same command to resume") -> T:
    """Run a library call; a UserError becomes ``error: …`` on one line and exit code 2. ``interrupted``: what
    Ctrl-C prints after "interrupted; "."""
    from customkd.common.errors import UserError

    try:
        with interrupt.work():
            result = action()
    except UserError as exc:
        _close_progress_bars()
        _quiet_shutdown()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        _close_progress_bars()
        _quiet_shutdown()
        typer.echo(f"\ninterrupted; {interrupted()}", err=True)  # on its own line, after any progress bar
        raise typer.Exit(interrupt.EXIT_INTERRUPTED) from None
    _leave_process_group()
    return result


def _quiet_shutdown() -> None:
    """After a failed or interrupted action its line is the last: zarr's writes still pending on its event loop
    (Ctrl-C mid-write) are destroyed as the process exits, and asyncio would log an ERROR for each after it."""
    logging.getLogger("asyncio").disabled = True


def _close_progress_bars() -> None:
    """Clear the progress bars a failed action left open before its line is printed: a bar closed later (when the
    process exits) would return to the start of the terminal line and blank the error printed after it."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def _leave_process_group() -> None:
    """Under torchrun: wait for every rank, then close the process group before exiting. Without it a
    rank could exit while gloo still talks to it, and the other rank's gloo aborts (SIGABRT)."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()
        _group_closed.append(True)


_group_closed: list[bool] = []  # set once this process has closed a torchrun process group


def leave(code: int | str | None) -> None:
    """After a torchrun process group was closed, end the process with ``os._exit`` once every stream is
    flushed: the interpreter's own exit tears down what gloo's threads still hold, and under load that
    aborted a rank now and then (SIGABRT, "terminate called without an active exception", 2 runs in 10
    of a 2-rank extract). Otherwise nothing: the normal exit runs."""
    if not _group_closed:
        return
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def _as_option(field: dataclasses.Field, hint) -> inspect.Parameter:
    """A config field as a typer option: its type (a tuple of names is typed as one comma-separated string, or as
    a repeatable flag), its default, its help, its panel and its other names (a switch given names is that flag
    alone, without its ``--no-`` form)."""
    default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    if typing.get_origin(hint) is tuple and field.metadata.get("repeatable"):
        hint, default = list[str] | None, None
    elif typing.get_origin(hint) is tuple:
        hint, default = str, ",".join(map(str, default))
    aliases = field.metadata.get("aliases", ())
    negatable = field.metadata.get("negatable", True)
    names = (f"--{field.name.replace('_', '-')}", *aliases) if aliases or not negatable else ()
    info = typer.Option(*names, help=field.metadata.get("help"), rich_help_panel=field.metadata.get("group") or None)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[hint, info])


def config_command(config_class, skip: tuple[str, ...] = ()):
    """Give a command one option per field of ``config_class`` (:func:`common.options.option` declares each), after
    ``--config`` and before its other own options; the command receives them as ``**values``. ``skip``: fields the
    command builds itself."""

    def decorate(command: Callable) -> Callable:
        own = [p if p.name == "ctx" else p.replace(kind=p.KEYWORD_ONLY)
               for p in inspect.signature(command, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
        generated = [_as_option(f, hint) for f, hint in field_hints(config_class) if f.name not in skip]
        first, last = ("ctx", "config"), ("verbose", "quiet")  # the shared switches close the list
        command.__signature__ = inspect.Signature(
            [*(p for p in own if p.name in first), *generated, *(p for p in own if p.name not in first + last),
             *(p for p in own if p.name in last)])
        command.__annotations__ = {**{p.name: p.annotation for p in generated}, **command.__annotations__}
        return command

    return decorate
