"""``customkd cache info | verify``: look into a store before trusting it."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.common import run_or_exit, setup_logging

app = typer.Typer(no_args_is_help=True, help="Inspect and check feature stores.")


@app.command()
def info(path: Annotated[str, typer.Argument(help="Store path.")],
         as_json: Annotated[bool, typer.Option("--json", help="Print the whole manifest as JSON.")] = False) -> None:
    """Manifest summary: teacher, dataset, N/V/D, views recipe, size, status, fingerprint."""
    setup_logging()
    from featcache.inspect import store_info

    summary = run_or_exit(lambda: store_info(path))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    for key, value in summary.items():
        if key != "manifest":
            typer.echo(f"{key:<14} {value}")


@app.command()
def verify(path: Annotated[str, typer.Argument(help="Store path.")],
           data: Annotated[str | None, typer.Option(help="Dataset spec if the images moved.")] = None) -> None:
    """Structural checks, NaN scan, shard flags, sample keys and image content hashes. Exit 1 on a problem."""
    setup_logging()
    from featcache.inspect import verify_store

    problems = run_or_exit(lambda: verify_store(path, data))
    for problem in problems:
        typer.echo(f"problem: {problem}")
    typer.echo("ok: every check passed" if not problems else f"{len(problems)} problem(s) found")
    raise typer.Exit(1 if problems else 0)
