"""Settings declared once: a config dataclass's field carries its default, help text, known values and help
panel (:func:`option`); the command line, config files and docs derive from it (:func:`field_hints`)."""

from __future__ import annotations

import dataclasses
import typing

from customkd.common.errors import UserError

# DataLoader worker processes: each one imports torch (a few hundred MB), so a count far above any machine's cores
# only exhausts memory and the process table
MAX_WORKERS = 256


def check_workers(workers: int) -> None:
    """Refuse a ``--workers`` count below 0 or above :data:`MAX_WORKERS`."""
    if not 0 <= workers <= MAX_WORKERS:
        raise UserError(f"--workers must be >= 0 and <= {MAX_WORKERS} (each is a process of a few hundred MB), got "
                        f"{workers}")


def option(default, help: str, *, choices: tuple[str, ...] = (), group: str = "",  # noqa: A002 - typer's word
           aliases: tuple[str, ...] = (), repeatable: bool = False, negatable: bool = True):
    """A field's default with what the command line and docs show of it: its help text, its known values
    (the config checks them), the ``--help`` panel it belongs to (empty: the command's own) and other flag
    names it answers to (timm's ``train.py`` names: ``--model``, ``-b``…). A ``repeatable`` tuple is given as the
    flag once per item; other tuples as one comma-separated value. A switch is ``--name/--no-name`` unless not
    ``negatable`` (``--name`` alone)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "group": group,
                                                        "aliases": aliases, "repeatable": repeatable,
                                                        "negatable": negatable})


def field_hints(config_class) -> list[tuple[dataclasses.Field, object]]:
    """Each field of a config dataclass with its resolved type."""
    hints = typing.get_type_hints(config_class)
    return [(f, hints[f.name]) for f in dataclasses.fields(config_class)]
