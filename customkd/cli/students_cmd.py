"""``customkd students``: the student registry (the ``distill --student`` names)."""

from __future__ import annotations

import typer

from customkd.cli.common import Quiet, Verbose, setup_logging


def students(verbose: Verbose = False, quiet: Quiet = False) -> None:
    """List the registered students and where --student-pretrained reads their weights."""
    setup_logging(verbose, quiet)
    from customkd.common.weights import BUNDLED_WEIGHTS
    from customkd.trainer.students import list_students

    typer.echo(f"{'name':<19} {'timm model':<24} pretrained")
    for name, spec in list_students():
        source = f"bundled: {BUNDLED_WEIGHTS[spec.model].package}" if spec.pretrained == "bundled" else "timm hub"
        typer.echo(f"{name:<19} {spec.model:<24} {source}")
    typer.echo("generic: any timm model name (pretrained from the timm hub)")
