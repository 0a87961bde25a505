"""The Typer app: ``customkd extract | distill | teachers | students | cache …``. Heavy imports live in command bodies."""

from __future__ import annotations

import typer

from cli import cache_cmd, distill_cmd, extract_cmd, run_cmd, students_cmd

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Cache a frozen teacher's features once, then distil small students from the cache.")
app.command("extract")(extract_cmd.extract)
app.command("teachers")(extract_cmd.teachers)
app.command("distill")(distill_cmd.distill)
app.command("students")(students_cmd.students)
app.command("evaluate")(run_cmd.evaluate)
app.command("export")(run_cmd.export)
app.add_typer(cache_cmd.app, name="cache")


def main() -> None:
    app(prog_name="customkd")


if __name__ == "__main__":
    main()
