"""``customkd compare``: chosen methods × seeds on any store, written up under --out only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from customkd.cli.common import Quiet, Verbose, config_defaults, run_or_exit, setup_logging
from customkd.report.config import CompareConfig

D = config_defaults(CompareConfig)


def compare(
    cache: Annotated[str | None, typer.Option(help="The store to compare methods on (made by customkd extract).")] = None,
    methods: Annotated[str, typer.Option(help="Comma-separated methods: student, fitnet, kd, kd+fitnet, dkd, customkd, customkd+kd, customkd+dkd, or an ablation of the report (customkd-random-head, customkd-random-trained, customkd-no-specific).")] = ",".join(D["methods"]),
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; each seed also draws the labeled subset, the same for every method.")] = ",".join(map(str, D["seeds"])),
    out: Annotated[Path | None, typer.Option(help="The folder to write runs, results.md and results/ into (nothing is written elsewhere).")] = None,
    baseline: Annotated[str | None, typer.Option(help="Compare every other method with this one (default: each customkd-family method with each other method).")] = None,
    student: Annotated[str | None, typer.Option(help="distill --student for every run (default: distill's).")] = None,
    epochs: Annotated[int | None, typer.Option(help="distill --epochs for every run.")] = None,
    min_steps: Annotated[int | None, typer.Option(help="distill --min-steps for every run (0 makes --epochs exact on small data).")] = None,
    image_size: Annotated[int | None, typer.Option(help="distill --image-size for every run.")] = None,
    setting: Annotated[str | None, typer.Option(help="distill --setting for every run: supervised, ssl or uda.")] = None,
    labels_per_class: Annotated[int | None, typer.Option(help="distill --labels-per-class for every run (a label budget).")] = None,
    label_fraction: Annotated[float | None, typer.Option(help="distill --label-fraction for every run (a label budget).")] = None,
    eval_split: Annotated[str, typer.Option(help="test, or dev: score on a fixed 20 % of the training rows.")] = D["eval_split"],
    extra: Annotated[str, typer.Option(help="More distill flags for every run, e.g. --extra='--lr 1e-3'.")] = D["extra"],
    parallel: Annotated[int, typer.Option(help="Runs at once; the cores are split between them.")] = D["parallel"],
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Run each method x seed on one store with the same settings and write OUT/results.md: a table with per-class
    recall, paired per-seed differences with 95 % intervals and which method to use. Finished runs are reused,
    interrupted ones resume."""
    given = dict(locals())
    setup_logging(verbose, quiet)
    from customkd.report.store_compare import compare as run_compare

    settings = {k: v for k, v in given.items() if k not in ("verbose", "quiet")}
    summary = run_or_exit(lambda: run_compare(**settings))
    if not quiet:
        typer.echo(f"{summary['advice']}\npage: {Path(settings['out']) / 'results.md'}")
