"""The trainer reads the store only through the contract both processes share (customkd/contract/)."""

import ast
import subprocess
import sys

from tests.conftest import ROOT

# The one layer of the other side the trainer may use: the contract package, whole (schema, fingerprint, listing,
# store, storage, location, views, datasets, images). Of featcache (teachers, extraction, cache commands) nothing.
CONTRACT = "customkd.contract"
FEATCACHE = "customkd.featcache"
# What of featcache ``import customkd`` loads by itself, before any trainer module: the namespace's front door
# (customkd.ExtractConfig), not the trainer. Loading every trainer module adds nothing to it.
FRONT_DOOR = {"customkd.featcache", "customkd.featcache.config"}


def _within(package: str, name: str) -> bool:
    return name == package or name.startswith(f"{package}.")


def test_trainer_loads_nothing_of_featcache():
    code = (
        "import importlib, pkgutil, sys, customkd\n"
        "def loaded(package): return ' '.join(sorted(m for m in sys.modules if m == package "
        "or m.startswith(package + '.')))\n"
        f"print(loaded({FEATCACHE!r}))\n"
        "import customkd.trainer as trainer\n"
        "for module in pkgutil.walk_packages(trainer.__path__, 'customkd.trainer.'):\n"
        "    importlib.import_module(module.name)\n"
        f"print(loaded({FEATCACHE!r}))\n"
        f"print(loaded({CONTRACT!r}))\n"
        "print(' '.join(sorted(m for m in ('open_clip',) if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    front_door, with_trainer, contract, teacher_libraries = result.stdout.split("\n")[:4]
    assert set(front_door.split()) == FRONT_DOOR
    assert set(with_trainer.split()) == FRONT_DOOR, sorted(set(with_trainer.split()) - FRONT_DOOR)
    assert "customkd.contract.schema" in contract.split() and not teacher_libraries


def test_no_trainer_source_imports_featcache():
    """Also imports inside functions, which loading the modules does not run."""
    imported = set()
    for source in (ROOT / "customkd" / "trainer").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    from_featcache = sorted(name for name in imported if _within(FEATCACHE, name))
    assert from_featcache == []
    assert "customkd.contract.store" in imported  # the check sees the trainer's imports, `from package import module` too
