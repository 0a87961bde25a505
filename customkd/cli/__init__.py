"""The ``customkd`` command line: a thin Typer app over featcache and trainer."""

from customkd.cli import interrupt

if interrupt.started_as_program():  # first thing, before typer and torch load: Ctrl-C is one line from here on
    interrupt.own_handlers()
