"""The README's Make-variable table against what it documents: each variable is passed by the Makefile as the
flag the table names, that flag is an option the config declares, the defaults it quotes are the config's, and
the method and setting names it lists are the registry's. A drift in any of them fails here."""

from __future__ import annotations

import dataclasses
import re

from customkd.featcache.config import ExtractConfig
from customkd.trainer.config import DEFAULT_EPOCHS, SETTINGS, DistillConfig
from customkd.trainer.methods import METHODS
from tests.conftest import ROOT

CONFIGS = {"extract": ExtractConfig, "distill": DistillConfig}


def _rows() -> list[tuple[str, str, str]]:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### Make variables", 1)[1].split("\n### ", 1)[0]
    return [tuple(cell.strip() for cell in line.strip("|").split("|"))
            for line in table.splitlines() if line.startswith("| `")]


def _flags(command: str) -> dict[str, dataclasses.Field]:
    """Every flag name of a command's config fields (their own and their aliases) → the field."""
    flags = {}
    for f in dataclasses.fields(CONFIGS[command]):
        for name in (f"--{f.name.replace('_', '-')}", *f.metadata.get("aliases", ())):
            flags[name] = f
    return flags


def test_every_make_variable_is_passed_as_the_flag_the_readme_names():
    makefile = (ROOT / "Makefile").read_text()
    rows = _rows()
    assert len(rows) >= 14
    for variable, _, passed_as in rows:
        name = variable.strip("`")
        for command, flag in re.findall(r"`(extract|distill) (--[a-z-]+)`", passed_as):
            assert flag in _flags(command) or flag == "--config", (variable, command, flag)
            assert re.search(rf"{re.escape(flag)} \$\({name}\)|{re.escape(flag)} \$\(u\)", makefile), (variable, flag)


def test_the_defaults_and_names_the_readme_quotes_are_the_configs():
    for variable, default, passed_as in _rows():
        quoted = re.fullmatch(r"(extract|distill)'s \(`?([^`),]+)`?.*\)", default)
        if quoted:
            command, value = quoted.groups()
            flag = re.search(rf"`{command} (--[a-z-]+)`", passed_as).group(1)
            field = _flags(command)[flag]
            default = DEFAULT_EPOCHS if field.name == "epochs" else field.default  # None: DEFAULT_EPOCHS, extended
            assert str(default) == value, (variable, value)
    lists = {variable.strip("`"): re.findall(r"\(`([^`]+)`\)", passed_as) for variable, _, passed_as in _rows()}
    assert lists["METHOD"] == [" ".join(METHODS)]
    assert lists["SETTING"] == [" ".join(SETTINGS)]


def test_make_help_names_the_variables_the_readme_documents():
    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r'@echo "Variables: ([A-Z_ ]+)"', makefile).group(1).split()
    assert sorted(listed) == sorted(variable.strip("`") for variable, _, _ in _rows())
