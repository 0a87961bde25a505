"""``customkd report``: every regime × method × seed through the CLI, written up in docs/results.md."""

from __future__ import annotations

import shlex
import sys

from customkd.cli.common import Quiet, Verbose, config_command, run_or_exit, setup_logging
from customkd.report.config import ReportConfig


@config_command(ReportConfig)
def report(
    verbose: Verbose = False,
    quiet: Quiet = False,
    **values,
) -> None:
    """Run every regime x method x seed on the embedded default and write docs/results.md, figures and the
    README's headline table. Finished runs are reused, interrupted ones resume."""
    setup_logging(verbose, quiet)
    cfg = run_or_exit(lambda: ReportConfig(**values))
    from customkd.report.compare import make_report

    command = shlex.join(["customkd", "report", *sys.argv[2:]]) if sys.argv[1:2] == ["report"] else "customkd report"
    run_or_exit(lambda: make_report(cfg, command))
