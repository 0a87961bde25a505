"""The Typer app: ``customkd extract | distill | teachers | students | evaluate | predict | export | report | compare | cache …``. Heavy imports live in command bodies."""

from __future__ import annotations

from typing import Annotated

import typer

from customkd.cli import cache_cmd, compare_cmd, distill_cmd, extract_cmd, report_cmd, run_cmd, students_cmd
from customkd.cli.common import leave

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Cache a frozen teacher's features once, then distil small students from the cache.")


def _version(show: bool) -> None:
    if show:
        import importlib.metadata

        typer.echo(f"customkd {importlib.metadata.version('customkd')}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Cache a frozen teacher's features once, then distil small students from the cache."""


app.command("extract")(extract_cmd.extract)
app.command("teachers")(extract_cmd.teachers)
app.command("distill")(distill_cmd.distill)
app.command("students")(students_cmd.students)
app.command("evaluate")(run_cmd.evaluate)
app.command("predict")(run_cmd.predict)
app.command("export")(run_cmd.export)
app.command("report")(report_cmd.report)
app.command("compare")(compare_cmd.compare)
app.add_typer(cache_cmd.app, name="cache")


def main() -> None:
    try:
        app(prog_name="customkd")
    except SystemExit as done:
        leave(done.code)
        raise


if __name__ == "__main__":
    main()
