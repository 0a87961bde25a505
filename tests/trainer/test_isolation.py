"""The trainer reads the store only through the written contract between the two processes."""

import ast
import subprocess
import sys

from tests.conftest import ROOT

# What of featcache the trainer may load, and why; anything else (teachers, extraction, cache commands) is the
# other process's business.
ALLOWED = {
    "customkd.featcache",  # the package itself (its __init__ imports nothing)
    "customkd.featcache.schema",  # the contract: arrays, layout, manifest, teachers, data-spec grammar
    "customkd.featcache.fingerprint",  # the contract's fingerprint: components, a reader's choice of teachers
    "customkd.featcache.listing",  # the contract's dataset side: row keys and the one staleness check
    "customkd.featcache.store",  # opening, validating and reading a store on storage
    "customkd.featcache.storage",  # a store's objects on local disk or object storage (the store layer's strategy)
    "customkd.featcache.location",  # where a store lives (path or URL); the store layer reads through it
    "customkd.featcache.views",  # replaying the stored views at the student's resolution
    "customkd.featcache.datasets",  # listing the dataset and reading its images (the rows of the store)
    "customkd.featcache.images",  # reading one image file, bounded in bytes and pixels (datasets' and predict's)
    "customkd.featcache.config",  # loaded by the namespace's own __init__ (customkd.ExtractConfig), not the trainer
}


def test_trainer_loads_only_the_contract_from_featcache():
    code = (
        "import importlib, pkgutil, sys, customkd.trainer as trainer\n"
        "for module in pkgutil.walk_packages(trainer.__path__, 'customkd.trainer.'):\n"
        "    importlib.import_module(module.name)\n"
        "print(' '.join(sorted(m for m in sys.modules if m == 'customkd.featcache' "
        "or m.startswith('customkd.featcache.'))))\n"
        "print(' '.join(sorted(m for m in ('open_clip',) if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    loaded, teacher_libraries = result.stdout.split("\n")[:2]
    assert set(loaded.split()) <= ALLOWED, sorted(set(loaded.split()) - ALLOWED)
    assert "customkd.featcache.schema" in loaded.split() and not teacher_libraries


def test_no_trainer_source_imports_more_of_featcache():
    """Also imports inside functions, which loading the modules does not run."""
    imported = set()
    for source in (ROOT / "customkd" / "trainer").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                if node.module == "customkd.featcache":
                    imported |= {f"customkd.featcache.{alias.name}" for alias in node.names}
    from_featcache = {name for name in imported
                      if name == "customkd.featcache" or name.startswith("customkd.featcache.")}
    assert from_featcache <= ALLOWED, sorted(from_featcache - ALLOWED)
