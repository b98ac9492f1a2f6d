"""The package's boundaries: what imports what (read statically) and what ``import`` loads.

The client is a flat set of modules; the bulk job (``asyncembed._bulk``) is an
application on top of it that only the CLI imports; the test server
(``asyncembed.testing``) is imported by the CLI only to serve it (``serve``, ``--local``);
the optional integrations import their frameworks themselves. Imports inside functions
count: a lazy import that closes a cycle is still a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "asyncembed"
BULK = "asyncembed._bulk"
# The modules that may import the bulk job, besides its own.
BULK_USERS = {"asyncembed._cli"}
# Optional dependencies, none of which `import asyncembed` may load.
OPTIONAL = ("pyarrow", "redis", "ray", "langchain_core", "llama_index")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The asyncembed modules ``path`` imports, anywhere in the file but TYPE_CHECKING."""
    name = module_name(path)
    return imports_in(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")


def imports_in(source: str, name: str, is_package: bool) -> set[str]:
    package = name if is_package else name.rpartition(".")[0]
    modules = graph_nodes()
    tree = ast.parse(source)
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("asyncembed"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.startswith("asyncembed"):
                # `from . import _x` imports the submodule (the package is loaded
                # already); `from asyncembed import Embedder` imports the package itself.
                submodules = {f"{target}.{a.name}" for a in node.names} & modules
                found.update(submodules)
                if len(submodules) < len(node.names):
                    found.add(target)
    return {m for m in found if m in modules and m != name}


def graph_nodes() -> set[str]:
    return {module_name(p) for p in PACKAGE.rglob("*.py")}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def test_no_import_cycles() -> None:
    edges = graph()
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> None:
        if node in path:
            cycle = [*path[path.index(node) :], node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        path.append(node)
        for target in sorted(edges.get(node, ())):
            visit(target)
        path.pop()
        done.add(node)

    for node in sorted(edges):
        visit(node)


def test_only_the_cli_imports_the_bulk_job() -> None:
    offenders = {
        name
        for name, targets in graph().items()
        if any(t == BULK or t.startswith(BULK + ".") for t in targets)
        and not name.startswith(BULK)
        and name not in BULK_USERS
    }
    assert not offenders


def test_the_client_never_imports_the_test_server() -> None:
    allowed = {"asyncembed._cli"}  # lazily, for `serve` and `--local`
    offenders = {
        name
        for name, targets in graph().items()
        if any(t.startswith("asyncembed.testing") for t in targets)
        and not name.startswith("asyncembed.testing")
        and name not in allowed
    }
    assert not offenders


def loaded_by(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return set(out.split())


def test_import_asyncembed_loads_only_the_client() -> None:
    loaded = loaded_by("import asyncembed")
    assert "asyncembed._embedder" in loaded  # the probe sees the package
    assert not {m for m in loaded if m.startswith(("asyncembed.testing", BULK, "asyncembed._cli"))}
    assert not {m for m in loaded if m.split(".")[0] in OPTIONAL}


def test_the_cli_loads_the_test_server_only_to_serve() -> None:
    loaded = loaded_by("from asyncembed._cli import main")
    assert BULK in loaded
    assert not {m for m in loaded if m.startswith("asyncembed.testing")}


def test_the_checker_sees_relative_and_lazy_imports() -> None:
    # The static reader must resolve relative imports, or the cycle test passes vacuously.
    edges = graph()
    assert "asyncembed._batch_runner" in edges["asyncembed._embedder"]
    assert "asyncembed._bulk._writers" in edges["asyncembed._bulk._parquet"]
    assert "asyncembed.testing" in edges["asyncembed._cli"]  # a lazy import is counted
    # `from asyncembed import X` is an edge to the package (a cycle through its
    # __init__); `from . import _x` is an edge to the submodule only.
    assert imports_in("from asyncembed import Embedder", "asyncembed._stats", False) == {
        "asyncembed"
    }
    assert imports_in("from .. import _config", "asyncembed.testing._x", False) == {
        "asyncembed._config"
    }
