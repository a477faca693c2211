"""The package reads as layers by stage, its imports pointing one way (issue 19).

Static checks of every ``autoprune/**/*.py`` by an ``ast`` walk (nothing is imported, so the checks cost a second
and cannot be fooled by import order):

(a) no import circle among autoprune modules;
(b) no private name (``_x``, dunders excepted) imported from another module -- a helper two modules use is public in
    the lower one; a private *module* (``autoprune._files``) is fine, the module itself is the unit;
(c) no module imports a module of a higher layer (:data:`LAYERS`, the target layout of docs/issue 19); a module the
    table does not place fails, and the message says to place it;
(d) no module over :data:`MAX_LINES` lines;
(e) an import inside a function is of an optional heavy dependency (:data:`HEAVY`) or says why on its line or the
    line above, ``# lazy: <reason>`` (the comment above the first of a run of imports covers the run); an autoprune
    module is never imported inside a function.

Every import counts, at module level or inside a function (also under ``if TYPE_CHECKING:``); ``from . import x``
where ``x`` is a submodule is an import of that submodule. Importing a module runs its package's ``__init__``
first, so ``from .graph import core`` depends on ``autoprune.graph`` too -- except the importer's own enclosing
packages, which are always initialised first (``from . import budget`` in ``autoprune.cli.main`` depends on
``autoprune.cli.budget`` only).

``python tests/test_layering.py`` prints every violation of the five checks.
"""
from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "autoprune"
SRC = ROOT / PACKAGE

#: The layers, lowest first: a module may import modules of its own layer or lower ones, never higher ones. Keys are
#: module prefixes (a package and everything in it); the longest matching prefix wins. docs/architecture.md draws
#: the same table; a new module at the top of the package (``autoprune/x.py``) is not placed until it is added here.
LAYERS: dict[str, int] = {
    # 0 -- base utilities, importing nothing of autoprune: version, atomic files, hashing, a model's lineage
    "autoprune._version": 0,
    "autoprune._files": 0,
    "autoprune._hashing": 0,
    "autoprune._lineage": 0,
    # 1 -- the engine (trace, rules, analysis, groups, surgery, MAC cost, fvcore counting) and the model zoo
    "autoprune.graph": 1,
    "autoprune.models": 1,
    # 2 -- data: augmentation, splits, sources and their cache, the adapter for user data, data fingerprints
    "autoprune.data": 2,
    # 3 -- criteria: weight and activation kernels, accumulators, the registry, group scores (reads batches)
    "autoprune.criteria": 3,
    # 4 -- training: fine-tuning, evaluation, BatchNorm re-estimation, distillation, polish
    "autoprune.train": 4,
    # 5 -- deployment: saved files, export, latency (needs only the engine; budgets and fronts save through it)
    "autoprune.deploy": 5,
    # 6 -- allocation: sensitivity table and its cache, one module per method, budget, repetitive, criteria compared
    "autoprune.allocation": 6,
    # 7 -- the config schema, and the builder of what a config describes (data, base model, example input)
    "autoprune.config": 7,
    "autoprune.build": 7,
    # 8 -- the search: session, storage, objective, early stopping, front, speed, report, ray/
    "autoprune.study": 8,
    # 9 -- the command line: parsing and printing only
    "autoprune.cli": 9,
}

#: Modules that sit on top of every layer (they re-export the API) and may import anything.
EXEMPT = {"autoprune"}

MAX_LINES = 500

#: Optional or heavy third-party packages that may be imported inside a function (top-level package names), and why.
HEAVY = {
    "ray": "Ray starts slowly and only --backend ray needs it",
    "onnx": "optional extra autoprune[deploy]",
    "onnxruntime": "optional extra autoprune[deploy]",
    "onnxscript": "optional extra autoprune[deploy]",
    "timm": "optional (tests and user models only)",
    "matplotlib": "half a second to import, plots only",
    "plotly": "optional extra autoprune[report]",
    "optuna_dashboard": "slow to import, the dashboard command only",
    "psycopg": "PostgreSQL storages only",
}

LAZY_COMMENT = re.compile(r"#\s*lazy:\s*\S")


# ------------------------------------------------------------------------------------------------------------
# the import graph


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # an autoprune module, or the top-level name of a third-party one
    names: tuple[str, ...]  # the names taken (``from M import a, b``); () for ``import M``
    path: str  # file, relative to the repository
    line: int
    in_function: bool
    internal: bool
    justified: bool  # a ``# lazy:`` comment on the line or above (or covering the run of imports it belongs to)

    def where(self) -> str:
        return f"{self.path}:{self.line}" + (" (in a function)" if self.in_function else "")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _known(name: str, modules: Mapping[str, object]) -> str:
    """``name`` if it is a module, else its longest prefix that is one (``import a.b.attr`` cannot happen, but
    ``from a import b`` may name an attribute)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    return _parse_imports(module, _is_package(path), path.read_text(), str(path.relative_to(ROOT)), modules)


def _parse_imports(module: str, is_package: bool, text: str, rel: str, modules: Mapping[str, object]) -> list[Import]:
    """The imports of ``module`` (source ``text``; ``modules``: every module name of the package)."""
    lines = text.splitlines()
    tree = ast.parse(text, rel)
    pkg = module if is_package else module.rpartition(".")[0]
    out: list[Import] = []
    justified_stmts: set[int] = set()  # id() of import statements whose lazy comment is valid

    def has_comment(stmt: ast.stmt) -> bool:
        own = lines[stmt.lineno - 1: stmt.end_lineno]
        above = lines[stmt.lineno - 2].strip() if stmt.lineno > 1 else ""
        return any(LAZY_COMMENT.search(s) for s in own) or (above.startswith("#") and bool(LAZY_COMMENT.search(above)))

    def visit(node: ast.AST, in_function: bool) -> None:
        body = getattr(node, "body", None)
        prev: ast.stmt | None = None
        children = list(ast.iter_child_nodes(node))
        for child in children:
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                ok = has_comment(child)
                if not ok and prev is not None and isinstance(prev, (ast.Import, ast.ImportFrom)) \
                        and id(prev) in justified_stmts and prev.end_lineno == child.lineno - 1:
                    ok = True  # a run of imports under one comment
                if ok:
                    justified_stmts.add(id(child))
                out.extend(_resolve(child, in_function, ok))
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)
            if isinstance(body, list) and child in body:
                prev = child  # type: ignore[assignment]

    def _resolve(stmt: ast.Import | ast.ImportFrom, in_function: bool, ok: bool) -> list[Import]:
        found: list[Import] = []

        def add(target: str, names: tuple[str, ...], internal: bool) -> None:
            found.append(Import(module, target, names, rel, stmt.lineno, in_function, internal, ok))

        if isinstance(stmt, ast.Import):
            for a in stmt.names:
                if a.name == PACKAGE or a.name.startswith(PACKAGE + "."):
                    add(_known(a.name, modules), (), True)
                else:
                    add(a.name.split(".")[0], (), False)
            return found
        if stmt.level:
            base_parts = pkg.split(".")
            base_parts = base_parts[: len(base_parts) - (stmt.level - 1)]
            base = ".".join(base_parts + ([stmt.module] if stmt.module else []))
        else:
            base = stmt.module or ""
        if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
            add(base.split(".")[0], tuple(a.name for a in stmt.names), False)
            return found
        base = _known(base, modules)
        attrs = []
        for a in stmt.names:
            sub = f"{base}.{a.name}"
            if sub in modules:
                add(sub, (), True)  # ``from . import x``: the submodule x
            else:
                attrs.append(a.name)
        # The base package's __init__ runs too -- unless it encloses the importer (it is initialised first anyway);
        # names taken from its namespace are a dependency on it in every case.
        if attrs or (base not in _ancestors(module) and base != module):
            if base != module:
                add(base, tuple(attrs), True)
        return found

    visit(tree, False)
    return out


def _all_imports() -> tuple[dict[str, Path], list[Import]]:
    modules = _modules()
    imports = [imp for m, p in modules.items() for imp in _imports(m, p, modules)]
    return modules, imports


# ------------------------------------------------------------------------------------------------------------
# (a) circles


def _sccs(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    out.append(sorted(comp))
    return out


def _shortest_path(src: str, dst: str, edges: dict[str, set[str]], within: set[str]) -> list[str] | None:
    prev: dict[str, str | None] = {src: None}
    q = deque([src])
    while q:
        v = q.popleft()
        if v == dst:
            path = [v]
            while prev[path[-1]] is not None:
                path.append(prev[path[-1]])  # type: ignore[arg-type]
            return path[::-1]
        for w in sorted(edges.get(v, ())):
            if w in within and w not in prev:
                prev[w] = v
                q.append(w)
    return None


def circles() -> list[str]:
    """One entry per knot of modules that import each other (directly or not): its members, then every distinct
    shortest circle through each of its imports, as a chain with the line of each import."""
    modules, imports = _all_imports()
    edges: dict[str, set[str]] = defaultdict(set)
    where: dict[tuple[str, str], Import] = {}
    for imp in imports:
        if imp.internal and imp.target in modules and imp.target != imp.importer:
            edges[imp.importer].add(imp.target)
            where.setdefault((imp.importer, imp.target), imp)
    report = []
    for comp in _sccs(sorted(modules), edges):
        if len(comp) < 2:
            continue
        members = set(comp)
        seen: set[tuple[str, ...]] = set()
        chains = []
        for u in comp:
            for v in sorted(edges[u] & members):
                back = _shortest_path(v, u, edges, members)
                if back is None:
                    continue
                cycle = [u] + back  # u -> v -> ... -> u
                ring = cycle[:-1]
                k = ring.index(min(ring))
                canon = tuple(ring[k:] + ring[:k])
                if canon in seen:
                    continue
                seen.add(canon)
                chain = list(canon) + [canon[0]]
                steps = "\n".join(f"        {a} -> {b}   {where[(a, b)].where()}" for a, b in zip(chain, chain[1:]))
                chains.append((len(canon), " -> ".join(chain), steps))
        chains.sort()
        body = "\n".join(f"    circle: {c}\n{s}" for _, c, s in chains)
        report.append(f"knot of {len(comp)} modules: {', '.join(comp)}\n{body}")
    return report


# ------------------------------------------------------------------------------------------------------------
# (b) private names, (c) layers, (d) size, (e) imports inside functions


def private_imports() -> list[str]:
    _, imports = _all_imports()
    out = []
    for imp in imports:
        if not imp.internal:
            continue
        for n in imp.names:
            if n.startswith("_") and not (n.startswith("__") and n.endswith("__")):
                out.append(f"{imp.where()}: {imp.importer} imports the private name {n} of {imp.target}; make it "
                           "public in the lower module (or move it to the one module that uses it)")
    return out


def layer_of(module: str) -> int | None:
    best, layer = "", None
    for prefix, n in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
            best, layer = prefix, n
    return layer


def unplaced() -> list[str]:
    modules, _ = _all_imports()
    return [f"{m} ({p.relative_to(ROOT)}): no layer; move it into a layer package or place it in LAYERS"
            for m, p in modules.items() if m not in EXEMPT and layer_of(m) is None]


def upward_imports() -> list[str]:
    modules, imports = _all_imports()
    out = []
    for imp in imports:
        if not imp.internal or imp.importer in EXEMPT or imp.target not in modules:
            continue
        if imp.target in EXEMPT:
            out.append(f"{imp.where()}: {imp.importer} imports the API package {imp.target} (it sits on top of "
                       "every layer); import the module that defines what is needed")
            continue
        lo, hi = layer_of(imp.importer), layer_of(imp.target)
        if lo is None or hi is None:
            continue  # reported by test_every_module_has_a_layer
        if hi > lo:
            names = f" ({', '.join(imp.names)})" if imp.names else ""
            out.append(f"{imp.where()}: {imp.importer} (layer {lo}) imports {imp.target}{names} (layer {hi})")
    return out


def long_modules() -> list[str]:
    out = []
    for m, p in _modules().items():
        n = len(p.read_text().splitlines())
        if n > MAX_LINES:
            out.append(f"{p.relative_to(ROOT)}: {n} lines (> {MAX_LINES}); split it by job")
    return out


def function_imports() -> list[str]:
    _, imports = _all_imports()
    out = []
    seen = set()
    for imp in imports:
        if not imp.in_function or (imp.path, imp.line, imp.target) in seen:
            continue
        seen.add((imp.path, imp.line, imp.target))
        if imp.internal:
            out.append(f"{imp.where()}: {imp.importer} imports {imp.target} inside a function; import it at the "
                       "top (a circle is fixed by moving code down a layer, not by hiding the import)")
        elif imp.target not in HEAVY and not imp.justified:
            out.append(f"{imp.where()}: {imp.importer} imports {imp.target} inside a function; move it to the top, "
                       "or give the reason on the line or above: '# lazy: <reason>'")
    return out


# ------------------------------------------------------------------------------------------------------------
# the tests


def _fail(title: str, items: list[str]) -> str:
    return f"{len(items)} {title}:\n" + "\n".join(items)


def test_no_import_circle():
    found = circles()
    assert not found, _fail("import circle(s) among autoprune modules", found)


def test_no_private_name_is_imported_across_modules():
    found = private_imports()
    assert not found, _fail("private name(s) imported from another module", found)


def test_every_module_has_a_layer():
    found = unplaced()
    assert not found, _fail(f"module(s) without a layer (layers: {', '.join(f'{n} {p}' for p, n in LAYERS.items())})",
                            found)


def test_no_module_imports_a_higher_layer():
    found = upward_imports()
    assert not found, _fail("import(s) of a higher layer", found)


def test_no_module_is_over_the_line_limit():
    found = long_modules()
    assert not found, _fail(f"module(s) over {MAX_LINES} lines", found)


def test_imports_inside_functions_are_heavy_or_say_why():
    found = function_imports()
    assert not found, _fail("import(s) inside functions without a reason", found)


def test_the_checker_sees_what_it_checks():
    """The walk itself: relative imports resolve, submodules of ``from . import x`` are found, lines are right."""
    modules, imports = _all_imports()
    assert "autoprune" in modules and "autoprune.graph" in modules
    assert any(i.internal for i in imports)
    assert all(i.target in modules for i in imports if i.internal), "an autoprune import did not resolve"
    assert layer_of("autoprune.graph.core") == LAYERS["autoprune.graph"]
    assert layer_of("autoprune.datax") is None  # prefixes match whole dotted names only


def test_the_walk_on_a_made_up_module():
    """Relative imports, submodules of ``from . import x``, enclosing packages, private names and lazy comments."""
    modules = dict.fromkeys(["autoprune", "autoprune.a", "autoprune.a.m", "autoprune.a.n", "autoprune.b"])
    src = "\n".join([
        "from . import n",  # 1: the submodule autoprune.a.n, not the enclosing package
        "from ..b import thing, _hidden",  # 2
        "def f():",
        "    import ray",  # 4: heavy, allowed
        "    # lazy: fcntl is POSIX-only",
        "    import fcntl",  # 6: justified by the line above
        "    import json",  # 7: justified as the run continues
        "",
        "    import yaml  # lazy: yaml only for files",  # 9: justified on its line
        "",
        "    import copy",  # 11: not justified (a blank line ended the run)
        "    from . import m",  # 12: internal, inside a function
    ])
    found = _parse_imports("autoprune.a.m", False, src, "autoprune/a/m.py", modules)
    by_line = {(i.line, i.target): i for i in found}
    assert (1, "autoprune.a.n") in by_line and not any(i.target == "autoprune.a" for i in found)
    assert by_line[(2, "autoprune.b")].names == ("thing", "_hidden")
    assert by_line[(6, "fcntl")].justified and by_line[(7, "json")].justified and by_line[(9, "yaml")].justified
    assert not by_line[(11, "copy")].justified and by_line[(4, "ray")].in_function
    assert by_line[(12, "autoprune.a.m")].internal and by_line[(12, "autoprune.a.m")].in_function
    assert not by_line[(1, "autoprune.a.n")].in_function


if __name__ == "__main__":
    checks = [("(a) import circles", circles), ("(b) private names imported across modules", private_imports),
              ("(c) modules without a layer", unplaced), ("(c) imports of a higher layer", upward_imports),
              (f"(d) modules over {MAX_LINES} lines", long_modules),
              ("(e) imports inside functions without a reason", function_imports)]
    total = 0
    for title, fn in checks:
        items = fn()
        total += len(items)
        print(f"== {title}: {len(items)}")
        for item in items:
            print(item)
        print()
    sys.exit(1 if total else 0)
