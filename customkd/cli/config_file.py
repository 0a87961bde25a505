"""``--config FILE`` on the command line: the file's settings under the flags typed (:mod:`common.config_file`)."""

from __future__ import annotations

import typing

import typer

from customkd.common.config_file import settings_from_file
from customkd.trainer.run_folder import as_given


def merge_config_file(ctx: typer.Context, params: dict, path: str | None) -> dict:
    """``params`` (the command's option values) with the file's values for every option not typed as a flag;
    the file's values converted as the command's options would be."""
    if not path:
        return params
    options = typing.get_type_hints(ctx.command.callback, include_extras=True)
    options.pop("ctx", None)
    options.pop("return", None)
    from_file = settings_from_file(path, options, as_given)
    return {**params, **{name: value for name, value in from_file.items()
                         if ctx.get_parameter_source(name).name != "COMMANDLINE"}}  # a flag typed wins
