"""The shape of the code: imports go one way (stages above the library, the library's
sub-packages in layers, readers below writers, the world below its expert), and no
module reaches into another's privates."""

from __future__ import annotations

import ast

import pytest
import yaml

from conftest import REPO
from hsa_pipeline.pipeline.closure import import_graph


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



def _anchors(markdown: str) -> set[str]:
    """GitHub's anchor of each heading: lower case, punctuation dropped, spaces -> '-'."""
    import re

    heads = re.findall(r"^#+ (.+)$", markdown, flags=re.M)
    return {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_every_link_between_the_docs_leads_to_a_file_and_heading_that_exist():
    import re

    docs = [REPO / "README.md", *(REPO / "docs").rglob("*.md")]
    broken = []
    for doc in docs:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text()):
                broken.append(f"{doc.relative_to(REPO)} -> {target} (no such heading)")
    assert broken == []


def test_the_readme_starts_fast():
    """Issue #32: the README is the front door (under 15 KB); the rest lives in docs/."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) < 15_000
    assert "make demo" in readme and "make test" in readme

# The library's sub-packages, lowest first: a package may import only those before it (and
# itself); `errors` and `config` are below everything. Each package's __init__ docstring
# says the same ("May import: ...").
LAYERS = ["errors", "config", "pipeline", "data", "geometry", "features", "world", "aloha", "model", "training", "serving",
          "evaluation", "cli"]


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "hsa_pipeline" or len(parts) < 2:
        return None
    return LAYERS.index(parts[1])


def test_every_module_of_the_library_belongs_to_a_layer():
    modules = [m for m in import_graph() if m.startswith("hsa_pipeline.")]
    assert modules and all(m.split(".")[1] in LAYERS for m in modules), \
        [m for m in modules if m.split(".")[1] not in LAYERS]


def test_imports_go_down_the_layers_only():
    upward = sorted(f"{m} imports {d}" for m, deps in import_graph().items() if layer_of(m) is not None
                    for d in deps if layer_of(d) is not None and layer_of(d) > layer_of(m))
    assert upward == []


def test_the_layer_check_finds_an_upward_import():
    """The rule above, on a made-up graph: a model module importing the evaluation."""
    graph = {"hsa_pipeline.model.act": {"hsa_pipeline.evaluation.evaluate", "hsa_pipeline.data.caches"}}
    upward = [d for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m)]
    assert upward == ["hsa_pipeline.evaluation.evaluate"]


def test_each_package_says_what_it_may_import():
    """The docstring of every sub-package names exactly the layers below it that it may use."""
    import importlib

    for i, name in enumerate(LAYERS):
        if name in ("errors", "cli"):
            continue
        doc = importlib.import_module(f"hsa_pipeline.{name}").__doc__ or ""
        assert "May import:" in doc, name
        allowed = {w.strip(" .,") for w in doc.split("May import:")[1].split(".")[0].split(",")}
        assert allowed <= set(LAYERS[:i]), (name, allowed - set(LAYERS[:i]))


# Issue #41: nothing that trains or serves a policy reads the simulator's truth. Only the
# simulators themselves (the touch world, gym-aloha's tasks), the evaluation (which runs
# policies in them and judges them by their truth), the stages that record them (synth) and
# run them (evaluate), and the CLI's world commands may import them.
TRUTH = ("hsa_pipeline.world", "hsa_pipeline.aloha", "hsa_pipeline.evaluation")
MAY_READ_TRUTH = (*TRUTH, "stages.synth", "stages.evaluate")
CLI_WORLD_COMMANDS = {"rollout", "calibrate_record_demo"}


def truth_imports(root) -> list[str]:
    """Every import (lazy ones included) of a simulator or the evaluation by a module that may
    not read them, in the tree under `root`."""
    found = [f"{m} imports {d}" for m, deps in import_graph(root).items()
             if not m.startswith(MAY_READ_TRUTH) and m != "hsa_pipeline.cli" for d in deps if d.startswith(TRUTH)]
    cli = ast.parse((root / "hsa_pipeline" / "cli.py").read_text())
    for node in ast.walk(cli):
        if isinstance(node, ast.ImportFrom) and f"hsa_pipeline.{node.module}".startswith(TRUTH) and node.level == 1:
            owner = next((f.name for f in cli.body if isinstance(f, ast.FunctionDef)
                          and f.lineno <= node.lineno <= f.end_lineno), "module level")
            if owner not in CLI_WORLD_COMMANDS:
                found.append(f"hsa_pipeline.cli ({owner}) imports hsa_pipeline.{node.module}")
    return sorted(found)


def test_no_learner_module_imports_the_worlds_truth():
    assert truth_imports(REPO) == []


@pytest.mark.parametrize("module, line", [
    ("hsa_pipeline/model/act.py", "def _peek():\n    from ..world.tasks import ArmTask  # noqa\n"),
    ("hsa_pipeline/training/loop.py", "import hsa_pipeline.evaluation.rollout  # noqa\n"),
    ("stages/train.py", "def _peek():\n    from hsa_pipeline.world import TouchWorld  # noqa\n"),
    ("hsa_pipeline/cli.py", "def serve_peek():\n    from .world import TouchWorld  # noqa\n"),
])
def test_the_truth_rule_finds_a_forbidden_import_in_a_copy(tmp_path, module, line):
    import shutil

    for package in ("hsa_pipeline", "stages"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    assert truth_imports(tmp_path) == []
    with open(tmp_path / module, "a") as f:
        f.write("\n\n" + line)
    assert len(truth_imports(tmp_path)) == 1, module


def test_every_default_a_docs_table_quotes_is_the_codes():
    """Issue #44: docs/hsa-loss.md quoted defaults the code had changed. Every table whose
    header is `| key | default | ...` (docs/params.md aside: it is generated) must quote
    each key's default as the typed config has it."""
    import dataclasses

    from hsa_pipeline.config import Params

    def default(dotted: str):
        cls, value = Params, None
        for name in dotted.split("."):
            f = {f.name: f for f in dataclasses.fields(cls)}[name]
            value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            cls = type(value)
        return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()

    quoted = 0
    for doc in sorted((REPO / "docs").glob("*.md")):
        if doc.name == "params.md":
            continue
        in_table = False
        for line in doc.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
            if cells[:2] == ["key", "default"]:
                in_table = True
                continue
            if not cells:
                in_table = False
            if not in_table or set(cells[0]) <= set("-"):
                continue
            keys = [k.strip(" `") for k in cells[0].split(",")]
            values = [v.strip(" `") for v in cells[1].split(",")]
            assert len(keys) == len(values), (doc.name, line)
            for key, value in zip(keys, values, strict=True):
                assert value == default(key), f"{doc.name}: {key} quoted as {value}, the code's default is {default(key)}"
                quoted += 1
    assert quoted >= 12  # the HSA knobs at least


def test_the_guides_stage_table_lists_each_stages_declared_params():
    """docs/guide.md's stage table, column "params it declares", against each stage's PARAMS."""
    import importlib

    rows = [line for line in (REPO / "docs" / "guide.md").read_text().splitlines()
            if line.startswith("| `") and line.count("|") == 5]
    table = {}
    for line in rows:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        table[cells[0].strip("`")] = [] if cells[3] == "-" else [p.strip(" `") for p in cells[3].split(",")]
    stages = ["code", "synth", "prepare", "geometry", "features", "train", "evaluate"]
    assert {s: table.get(s) for s in stages} == {s: importlib.import_module(f"stages.{s}").PARAMS for s in stages}


def test_every_module_of_the_library_is_under_400_lines():
    """Issue #44: one concern per module; a module past 400 lines is split by concern."""
    long = {str(p.relative_to(REPO)): n for p in sorted((REPO / "hsa_pipeline").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) >= 400}
    assert long == {}
