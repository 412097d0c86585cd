"""Layers import only downward and no module imports itself back (src/okd and benchmarks/), function-level
imports included: errors/common -> models, data, losses -> methods -> engine -> report/api -> cli."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"errors": 0, "common": 0, "plugins": 0, "models": 1, "data": 1, "losses": 1, "methods": 2, "engine": 3,
         "report": 4, "api": 4, "cli": 5, "__main__": 5}


def modules(folder: Path, package: str) -> dict[str, Path]:
    found = {}
    for path in folder.rglob("*.py"):
        parts = list(path.relative_to(folder).with_suffix("").parts)
        found[".".join([package, *parts[:-1]] if parts[-1] == "__init__" else [package, *parts]).strip(".")] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The known modules ``path`` imports anywhere (``from a import b`` counts ``a.b`` when that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names]
        out |= {n for n in names if n in known}
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules that import each other (Tarjan)."""
    index, low, stack, found, counter = {}, {}, [], [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYER.get(parts[1]) if len(parts) > 1 and parts[0] == "okd" else None


def test_layers_import_only_downward() -> None:
    known = modules(ROOT / "src" / "okd", "okd")
    upward = [f"{m} -> {t}" for m, p in known.items() for t in imports(p, known)
              if layer(m) is not None and layer(t) is not None and layer(t) > layer(m)]
    assert upward == []


def test_no_import_cycles_in_okd_or_benchmarks() -> None:
    for known in (modules(ROOT / "src" / "okd", "okd"), modules(ROOT / "benchmarks", "")):
        graph = {m: imports(p, known) - {m} for m, p in known.items()}
        # a package importing its own submodules (to register them) is how packages work, not a cycle
        graph = {m: {t for t in ts if not (t.startswith(m + ".") and known[m].name == "__init__.py")} for m, ts in graph.items()}
        assert cycles(graph) == []


def test_benchmarks_use_public_names_only() -> None:
    private = [f"{p.name}: {node.module}.{a.name}" for p in (ROOT / "benchmarks").glob("*.py")
               for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.ImportFrom) and node.module
               and node.module.startswith("okd") for a in node.names if a.name.startswith("_")]
    assert private == []


# report modules that print or rebuild the paper's tables: the one place outside methods/ that names methods
PAPER_TABLES = {"collect.py", "paper.py", "render.py", "reproduce.py", "tables.py"}


def _code_words(path: Path) -> list[tuple[int, str]]:
    """Attribute names, string constants and the flags inside strings of ``path`` (docstrings and comments
    aside), with their lines."""
    tree = ast.parse(path.read_text())
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    words = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            words.append((node.lineno, node.attr))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            words += [(node.lineno, node.value), *((node.lineno, w) for w in node.value.split() if w.startswith("-"))]
    return words


def test_engine_cli_data_losses_models_and_report_name_no_method_and_no_method_option() -> None:
    """A method's name, option or flag in the engine, the CLI, the data, the losses, the models or the report (but its paper
    tables) is knowledge that belongs in the method's own file: a new method would have to edit them."""
    import okd.methods
    from okd.methods.base import REGISTRY

    options = [o for cls in REGISTRY.values() for o in cls.declared_options()]
    names = set(REGISTRY) | {o.name for o in options} | {f for o in options for f in o.flags}
    src = ROOT / "src" / "okd"
    files = [*(p for layer in ("engine", "cli", "data", "losses", "models", "report") for p in (src / layer).rglob("*.py")), src / "api.py"]
    leaks = [f"{p.relative_to(src)}:{line}: {word}" for p in files if p.name not in PAPER_TABLES or p.parent.name != "report"
             for line, word in _code_words(p) if word.rstrip(",.;:)") in names]
    assert len(names) > len(okd.methods.list_methods()) > 0
    assert leaks == []
