"""The ``customkd`` command line: a thin Typer app over featcache and trainer. The program's Ctrl-C handling is
installed by the namespace's own ``__init__`` (:mod:`customkd.common.interrupt`), which runs before this."""
