"""``customkd compare``: chosen methods × seeds on any store, written up under --out only."""

from __future__ import annotations

from pathlib import Path

import typer

from customkd.cli.common import Quiet, Verbose, config_command, run_or_exit, setup_logging
from customkd.report.config import CompareConfig


@config_command(CompareConfig)
def compare(
    verbose: Verbose = False,
    quiet: Quiet = False,
    **values,
) -> None:
    """Run each method x seed on one store with the same settings and write OUT/results.md: a table with per-class
    recall, paired per-seed differences with 95 % intervals and which method to use. Finished runs are reused,
    interrupted ones resume."""
    setup_logging(verbose, quiet)
    from customkd.report.store_compare import compare as run_compare

    summary = run_or_exit(lambda: run_compare(**values))
    if not quiet:
        typer.echo(f"{summary['advice']}\npage: {Path(values['out']) / 'results.md'}")
