"""Settings declared once: a config dataclass's field carries its default, help text, known values and help
panel (:func:`option`); the command line, config files and docs derive from it (:func:`field_hints`)."""

from __future__ import annotations

import dataclasses
import typing


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
