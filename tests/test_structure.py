"""The shape of the code: imports go one way (stages above the library, readers below
writers, the world below its expert), and no module reaches into another's privates."""

from __future__ import annotations

import ast

from conftest import REPO
from hsa_pipeline.closure import import_graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_has_no_cycles():
    assert cycles(import_graph()) == []


def test_the_library_never_imports_the_stages():
    graph = import_graph()
    offenders = {m: sorted(d for d in deps if d.split(".")[0] == "stages")
                 for m, deps in graph.items() if m.startswith("hsa_pipeline")}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_no_module_imports_a_private_name_of_another():
    found = []
    for path in sorted([*(REPO / "hsa_pipeline").rglob("*.py"), *(REPO / "stages").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                found += [f"{path.relative_to(REPO)}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and a.name != "__version__"]
    assert found == []


def test_every_image_the_docs_show_exists_and_every_image_is_shown():
    import re

    docs = [REPO / "README.md", *(REPO / "docs").rglob("*.md")]
    shown = {(d.parent / m).resolve() for d in docs for m in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", d.read_text())}
    assert shown and all(p.is_file() for p in shown), [str(p) for p in shown if not p.is_file()]
    images = {p.resolve() for p in (REPO / "docs" / "images").glob("*")}
    assert images <= shown, f"images nothing shows: {sorted(str(p) for p in images - shown)}"
