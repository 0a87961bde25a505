"""``customkd report``: every regime × method × seed through the CLI, written up in docs/results.md."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from customkd.cli.common import Quiet, Verbose, config_defaults, run_or_exit, setup_logging
from customkd.report.config import ReportConfig

D = config_defaults(ReportConfig)


def report(
    data: Annotated[str, typer.Option(help="Dataset spec, as extract --data.")] = D["data"],
    teacher: Annotated[str, typer.Option(help="The teacher of every regime but large-teacher.")] = D["teacher"],
    large_teacher: Annotated[str, typer.Option(help="The large-teacher regime's teacher.")] = D["large_teacher"],
    cache: Annotated[str | None, typer.Option(help="--teacher's store (default caches/<data>-<teacher>.zarr).")] = None,
    large_cache: Annotated[str | None, typer.Option(help="--large-teacher's store (default likewise).")] = None,
    views: Annotated[int, typer.Option(help="Views per image of each extraction.")] = D["views"],
    teacher_weights: Annotated[str | None, typer.Option(help="Passed to extract --weights ('random' in tests).")] = None,
    student: Annotated[str | None, typer.Option(help="Student of the regimes that do not name one (default: distill's).")] = None,
    out: Annotated[Path, typer.Option(help="The report's run folder.")] = D["out"],
    regimes: Annotated[str, typer.Option(help="Comma-separated regimes: headroom, pretrained, main, large-teacher, supervised.")] = D["regimes"],
    variants: Annotated[str, typer.Option(help="Keep only these variants in every regime (default: all).")] = D["variants"],
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds (each seed also draws its label subset).")] = D["seeds"],
    regime_seeds: Annotated[str, typer.Option(help="Per-regime seeds overriding --seeds, e.g. 'pretrained=0,1,2' (separate regimes with ';').")] = D["regime_seeds"],
    epochs: Annotated[int | None, typer.Option(help="distill --epochs for every run (default: distill's).")] = None,
    min_steps: Annotated[int | None, typer.Option(help="distill --min-steps for every run (0 makes --epochs exact on small data).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Student resolution (default: distill's).")] = None,
    label_fraction: Annotated[float, typer.Option(help="SSL label budget.")] = D["label_fraction"],
    parallel: Annotated[int, typer.Option(help="Runs at once; the cores are split between them.")] = D["parallel"],
    eval_split: Annotated[str, typer.Option(help="test, or dev: every run scored on a fixed 20 % of the training rows (for choosing settings; the test rows stay untouched).")] = D["eval_split"],
    extra: Annotated[str, typer.Option(help="More distill flags for every run, e.g. --extra='--lr 1e-3'.")] = D["extra"],
    docs: Annotated[Path | None, typer.Option(help="Where results.md and results/ are written (default: docs/ in the customkd repository, else --out).")] = None,
    readme: Annotated[Path | None, typer.Option(help="README whose headline block is rewritten (default: README.md in the customkd repository, else none).")] = None,
    no_docs: Annotated[bool, typer.Option("--no-docs", help="Write nothing outside --out.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Smoke run: main regime, 1 seed, 1 epoch, 2 variants, no docs.")] = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Run every regime x method x seed on the embedded default and write docs/results.md, figures and the
    README's headline table. Finished runs are reused, interrupted ones resume."""
    given = dict(locals())
    setup_logging(verbose, quiet)
    values = {f.name: given[f.name] for f in dataclasses.fields(ReportConfig)}
    cfg = run_or_exit(lambda: ReportConfig(**values))
    from customkd.report.compare import make_report

    command = shlex.join(["customkd", "report", *sys.argv[2:]]) if sys.argv[1:2] == ["report"] else "customkd report"
    run_or_exit(lambda: make_report(cfg, command))
