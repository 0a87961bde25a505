"""The ``customkd`` command line: a thin Typer app over featcache and trainer."""
