"""The layering of docs/architecture.md, read from the source: the library never imports the
application, and no two modules import each other (directly or through others, at load time or
inside a function)."""

import ast
from pathlib import Path

from helpers import ROOT

PACKAGE = ROOT / "eplcanet"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """The eplcanet modules `path` imports (relative imports resolved; not the annotation-only
    ones under TYPE_CHECKING); with top_level_only, only those run when the module is loaded
    (not those inside functions)."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # annotations only: never run
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            node.body = []
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for alias in node.names:  # `from . import plots` names a module
                candidate = f"{base}.{alias.name}"
                found.add(candidate if _exists(candidate) else base)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m == "eplcanet" or m.startswith("eplcanet.")}


def _exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _sources():
    return sorted(PACKAGE.rglob("*.py"))


def test_the_library_never_imports_the_application():
    offenders = {_module(p): sorted(m for m in _imports(p, False) if m.startswith("eplcanet.app"))
                 for p in _sources() if not _module(p).startswith("eplcanet.app")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_library_has_no_command_line():
    parsers = [_module(p) for p in _sources() if not _module(p).startswith("eplcanet.app")
               and "argparse" in {a.name for n in ast.walk(ast.parse(p.read_text()))
                                  if isinstance(n, ast.Import) for a in n.names}]
    assert parsers == []


def _find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of `graph` (module -> modules it imports) as a path, or []."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str]:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        done.add(node)
        return []

    for node in sorted(graph):
        found = visit(node, [node]) if node not in done else []
        if found:
            return found
    return []


def test_no_import_cycles_not_even_through_imports_inside_functions():
    graph = {_module(p): _imports(p, False) for p in _sources()}
    graph = {k: {m for m in v if m in graph and m != k} for k, v in graph.items()}
    assert _find_cycle(graph) == []


def test_the_checker_sees_a_cycle_and_an_upward_import():
    """The readers above find what they are meant to find (a check that cannot fail is none)."""
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    # a module-level import is seen, a function-level one only when asked for
    assert "eplcanet.energy.activations" in _imports(PACKAGE / "energy" / "networks.py", True)
    robustness = PACKAGE / "app" / "robustness.py"
    assert "eplcanet.app.plots" in _imports(robustness, False)
    assert "eplcanet.app.plots" not in _imports(robustness, True)
