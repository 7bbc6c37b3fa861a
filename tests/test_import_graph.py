"""The import graph of bench/ and its plug-ins, read with `ast` (nothing is imported, nothing trained):
- the harness (bench/) imports no plug-in package (attacks, defenses, examples, tests);
- bench/ modules import each other without cycles, imports inside functions included;
- plug-ins import only the public plug-in API: `from bench import NAME` with NAME in bench.__all__."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PLUGIN_PACKAGES = ("attacks", "defenses", "examples", "tests")


def _modules(package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under REPO/package (a package is its __init__)."""
    out = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) of every import statement of a module, at any depth."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] + ([node.module] if node.module else [])
                target = ".".join(base)
            else:
                target = node.module
            out.append((target, [a.name for a in node.names], node.lineno))
    return out


def _graph(mods: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {module of `mods` it imports: line}. `from . import x` of a submodule is an edge to that
    submodule, not to the package; an import of a name below a module counts as the module."""
    graph: dict[str, dict[str, int]] = {m: {} for m in mods}
    for m, path in mods.items():
        for target, names, line in _imports(m, path):
            for t in [f"{target}.{n}" if f"{target}.{n}" in mods else target for n in names] or [target]:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m:
                    graph[m].setdefault(t, line)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(graph[w])))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def _public_api() -> set[str]:
    tree = ast.parse((REPO / "bench" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("bench/__init__.py has no __all__")


def test_the_harness_imports_no_plugin():
    found = [f"{path.relative_to(REPO)}:{line} imports {target}"
             for m, path in _modules("bench").items() for target, _, line in _imports(m, path)
             if target.split(".")[0] in PLUGIN_PACKAGES]
    assert not found, "bench/ must reach plug-ins through bench.registry only:\n" + "\n".join(found)


def test_bench_modules_import_each_other_without_cycles():
    graph = _graph(_modules("bench"))
    cycles = _cycles(graph)
    described = ["; ".join(f"{a} -> {b} (line {graph[a][b]})" for a in sorted(c) for b in sorted(graph[a])
                           if b in c) for c in cycles]
    assert not cycles, "import cycles among bench/ modules:\n" + "\n".join(described)


def test_the_graph_reader_finds_cycles_and_function_level_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import g\n")
    (pkg / "c.py").write_text("from pkg import a\n")
    mods = {"pkg": pkg / "__init__.py", **{f"pkg.{n}": pkg / f"{n}.py" for n in "abc"}}
    graph = _graph(mods)
    assert graph["pkg.b"] == {"pkg.a": 2} and graph["pkg.c"] == {"pkg.a": 1}
    assert _cycles(graph) == [{"pkg.a", "pkg.b"}]


def test_plugins_import_only_the_public_api():
    public = _public_api()
    bad = []
    for package in ("attacks", "defenses", "examples"):
        for m, path in _modules(package).items():
            for target, names, line in _imports(m, path):
                where = f"{path.relative_to(REPO)}:{line}"
                if target == "bench":
                    bad += [f"{where} imports bench.{n}, which bench.__all__ does not list" for n in names
                            if n not in public]
                elif target.startswith("bench."):
                    bad.append(f"{where} imports {target} (a harness module): import from bench instead")
    assert not bad, "\n".join(bad)


def test_the_public_api_names_exist():
    import bench

    assert not [n for n in sorted(_public_api()) if not hasattr(bench, n)]


def test_an_attack_context_lends_only_what_the_harness_gave_it():
    from bench import AttackContext, BenchError

    ctx = AttackContext(defense=None, device=torch.device("cpu"), seed=0, batch_size=2)
    for call in (ctx.read_test_split, ctx.artifact_cache, lambda: ctx.trained_defense("pgd_at"),
                 lambda: ctx.attack_entry("pgd_linf")):
        with pytest.raises(BenchError, match="from the harness"):
            call()
    x, y = torch.rand(3, 4), torch.tensor([1, 0, 2])
    lent = AttackContext(defense=None, device=torch.device("cpu"), seed=0, batch_size=2, cache="cache",
                         test_split=lambda: (x, y), surrogates=lambda n: f"trained {n}",
                         attack_entries=lambda n: f"entry {n}")
    sub = lent.on("surrogate", None)
    assert sub.read_test_split()[1] is y and sub.artifact_cache() == "cache" and sub.defense == "surrogate"
    assert sub.trained_defense("a") == "trained a" and sub.attack_entry("b") == "entry b"
    assert sub.predict(lambda t: t, x).tolist() == x.argmax(1).tolist()


def test_defenses_get_a_declared_context():
    from bench import Defense, DefenseContext

    ctx = DefenseContext(entry_name="e", data_root=Path("/data"))
    assert Defense.context == DefenseContext() and ctx.cache is None and ctx.entry_name == "e"
    fields = {"cache", "data_root", "entry_name", "config_root"}  # what the runner once set as loose attributes
    undeclared = [f"{path.relative_to(REPO)}:{node.lineno}" for package in ("attacks", "defenses", "bench")
                  for path in _modules(package).values() for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("getattr", "setattr")
                  and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value in fields]
    assert not undeclared, f"read or set through DefenseContext instead: {undeclared}"


def test_diagnostics_across_models_come_from_the_defense_class(tmp_path):
    """bench diagnose reaches the block-wise comparison figure through Defense.compare_diagnostics (the harness
    imports no plug-in module for it); a defense without one adds nothing."""
    from bench import Defense
    from defenses.hah import HaH, PlainVGG16

    stats = {"hoyer": [0.5, 0.4], "snr_db": [10.0, 8.0]}
    reports = {"hah": {"blockwise": stats}, "vgg16": {"blockwise": stats}, "polarizing": {"danger": 0.1}}
    assert HaH.compare_diagnostics.__qualname__ == PlainVGG16.compare_diagnostics.__qualname__  # called once
    out = HaH.compare_diagnostics(reports, tmp_path, 0.1)
    assert out == {"blockwise_plot": str(tmp_path / "blockwise_hah_vgg16.png")}
    assert (tmp_path / "blockwise_hah_vgg16.png").stat().st_size > 0
    assert Defense.compare_diagnostics(reports, tmp_path, 0.1) == {}


def test_reports_read_verdicts_through_the_verdicts_package():
    """bench/report/ reads audit reports and cross-cell checks through bench.verdicts, never the audit runner (nor
    the runner that attacks), and only bench/verdicts/ applies the paired test behind the masking checks."""
    graph = _graph(_modules("bench"))
    bad = [f"{m} -> {t} (line {line})" for m, edges in graph.items() if m.startswith("bench.report")
           for t, line in edges.items() if t in ("bench.audit", "bench.runner", "bench.suite")]
    assert not bad, "the report package must not import the attack runners:\n" + "\n".join(bad)
    readers = [m for m, edges in graph.items() if "bench.verdicts.audit_reports" in edges or "bench.verdicts" in edges]
    assert any(m.startswith("bench.report") for m in readers), readers
    paired = [m for m, edges in graph.items() if "bench.stats" in edges and not m.startswith("bench.verdicts")
              and any("paired_excess" in names for t, names, _ in _imports(m, _modules("bench")[m]) if t == "bench.stats")]
    assert not paired, f"the paired test is applied in bench/verdicts/ only (bench.verdicts.rules): {paired}"
