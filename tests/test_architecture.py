"""The layout the repository promises (docs/design.md §3), read from the code's own imports and calls.

Each package has one job and imports only the layers below it:

    common      infrastructure both processes share      imports nothing of ours
    contract    the store both processes share           common
    featcache   process 1: teacher → store               common, contract
    trainer     process 2: store + images → student      common, contract
    report      customkd report: runs → results page     common, contract, featcache, trainer
    bench       make bench: speed ratios                 common, contract, featcache, trainer
    cli         the Typer commands                       everything but bench
    customkd    the library entry point                  common, contract, featcache, trainer, report
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "common": set(),
    "contract": {"common"},
    "featcache": {"common", "contract"},
    "trainer": {"common", "contract"},
    "report": {"common", "contract", "featcache", "trainer"},
    "bench": {"common", "contract", "featcache", "trainer"},
    "cli": {"common", "contract", "featcache", "trainer", "report"},
    "customkd": {"common", "contract", "featcache", "trainer", "report"},  # the front door (report: customkd.compare)
}


PACKAGE = ROOT / "customkd"  # the installed namespace; its subpackages are the layers


def _modules() -> dict[str, Path]:
    """Module name -> file, named without the ``customkd.`` prefix of the layers (``trainer.data``); ``customkd`` is
    the namespace's own ``__init__`` and ``bench`` the repository's benchmark tool."""
    found = {"customkd": PACKAGE / "__init__.py"}
    for package in LAYERS:
        if package == "customkd":
            continue
        base = ROOT if package == "bench" else PACKAGE
        for path in sorted((base / package).rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imported(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (``from a import b`` counts a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return {name.removeprefix("customkd.") if name.startswith("customkd.") else name for name in names}


GRAPH = {name: {m for m in _imported(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                cycles.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_the_import_graph_finds_every_package():
    assert {name.split(".")[0] for name in MODULES} == set(LAYERS)
    assert "contract.store" in GRAPH["trainer.data"] and "common.errors" in GRAPH["contract.store"]
    assert "contract.store" in GRAPH["featcache.extract"]


def test_no_module_imports_itself_back():
    assert _cycles(GRAPH) == []
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]  # the check itself sees a cycle


def test_each_package_imports_only_the_layers_below_it():
    wrong = sorted(f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets
                   if b.split(".")[0] != a.split(".")[0] and b.split(".")[0] not in LAYERS[a.split(".")[0]])
    assert wrong == []


def _private_uses(path: Path) -> list[str]:
    """``from project.module import _name`` and ``module._name`` on a project module, in one file."""
    tree = ast.parse(path.read_text())
    aliases = {}  # local name -> project module
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LAYERS:
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"{node.module}.{alias.name}")
                elif f"{node.module}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LAYERS:
                    aliases[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id in aliases):
            found.append(f"{aliases[node.value.id]}.{node.attr}")
    return found


def test_bench_and_report_use_public_names_and_patch_nothing():
    package_of = {name: name.split(".")[0] for name in MODULES}
    for name, path in MODULES.items():
        if package_of[name] not in ("bench", "report"):
            continue
        foreign = [p for p in _private_uses(path) if p.split(".")[0] != package_of[name]]
        assert foreign == [], f"{path.relative_to(ROOT)} uses private names {foreign}"
        text = path.read_text()
        assert not re.search(r"\bsetattr\(|monkeypatch|^\s*(?!self\.)[\w.]+\.(forward|_\w+)\s*=[^=]", text, re.M), (
            f"{path.relative_to(ROOT)} patches another module")
    assert _private_uses(Path(__file__)) == []  # this file uses only public names itself


def test_one_atomic_write_helper():
    """Files appear whole or not at all through common.files.atomic_path; nobody else renames into place."""
    renames = re.compile(r"\bos\.(replace|rename)\(|\.rename\(|\btmp\.replace\(|\.mv\(")
    offenders = [str(path.relative_to(ROOT)) for name, path in MODULES.items()
                 if name != "common.files" and renames.search(path.read_text())]
    assert offenders == []
    assert renames.search(MODULES["common.files"].read_text())


def test_the_manifest_is_read_through_the_contract():
    """Outside contract/schema.py nobody walks the manifest dict by string paths (``["fingerprint"]["layout"]``):
    readers take :class:`contract.schema.Manifest` attributes, so a renamed key is one change, in one file."""
    string_paths = re.compile(r"""\[["'](fingerprint|augmentation|recipe)["']\]|\bmanifest\[|\bmanifest\.get\(""")
    offenders = [f"{path.relative_to(ROOT)}:{number}" for name, path in MODULES.items() if name != "contract.schema"
                 for number, line in enumerate(path.read_text().splitlines(), 1) if string_paths.search(line)]
    assert offenders == []
    assert string_paths.search('recipe = manifest["fingerprint"]["augmentation"]["recipe"]')


def test_the_trainer_outside_its_methods_never_names_customization():
    """CustomKD's protocol (schedule, θ^h_t's optimiser and reset, its epoch, broadcast, metrics) lives in
    trainer/methods/customkd.py, its settings in trainer/methods/options.py: the loop, the driver, the assembly and
    the run's config go through Method's hooks and the option groups."""
    found = [f"{path.name}:{number}" for path in sorted((PACKAGE / "trainer").glob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1) if "customiz" in line.lower()]
    assert not found, found


# every file name of a run folder (trainer/run_folder.py spells each once)
RUN_FILE_NAME = re.compile(r"(?<![\w.-])((model/)?config\.json|metrics\.json|metrics\.csv|checkpoint\.pt|"
                           r"(student(-best|-last)?|method)\.safetensors|(model/)?model\.safetensors|timing\.json|"
                           r"alignment\.json|\.lock|\.customkd-run)(?![\w-])")
# the packages that may import trainer.run_folder; common, contract and featcache sit below it (a teacher folder's
# config.json is not a run's)
RUN_FILE_PACKAGES = ("trainer", "report", "bench", "cli", "customkd")


def _strings_outside_docstrings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant in a file but its docstrings (f-strings count by their literal parts)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def _run_file_literals(path: Path) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line}" for line, text in _strings_outside_docstrings(path)
            if RUN_FILE_NAME.search(text)]


def test_run_files_are_named_through_the_contract():
    """Outside trainer/run_folder.py no code spells a run file's name (in a path, a check or a message): readers and
    writers use its constants and functions, so a renamed or added run file is one change, in one file."""
    offenders = [hit for name, path in MODULES.items() if name.split(".")[0] in RUN_FILE_PACKAGES
                 and name != "trainer.run_folder" for hit in _run_file_literals(path)]
    assert offenders == []
    assert _run_file_literals(MODULES["trainer.run_folder"])  # the check itself sees a literal name
    assert all(RUN_FILE_NAME.fullmatch(name) for name in _run_file_names())  # and every name the contract declares
    assert not RUN_FILE_NAME.search("uv.lock, pytorch_model.bin, zarr.json, config.jsonl")


def _run_file_names() -> list[str]:
    from customkd.trainer.run_folder import FILES

    return [name for name in FILES if "*" not in name]
