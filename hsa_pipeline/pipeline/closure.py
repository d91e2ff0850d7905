"""Which source files a module runs: its import closure inside this repository.

Two users: the `code` stage writes each stage's `code_fingerprint` to
outputs/code/<stage>.sha256, the file dvc.yaml lists as the stage's code dependency (so
DVC reruns a stage when, and only when, code it runs changes: a docstring or comment edit
reruns nothing), and `code_fingerprint` keys resumable work (feature shards, training
checkpoints) on the code that produced it. Imports are read from the source with `ast`,
including imports inside functions, so lazy imports count too.

A fingerprint also covers the versions of the libraries whose arithmetic or file formats
the results depend on (`LIBRARIES`): an upgrade of torch or zarr reruns the stages and
never resumes a run or a partial store made by the old ones. It does not depend on the
Python version that computes it (`behaviour` writes the syntax tree in its own stable form).
"""

from __future__ import annotations

import ast
import functools
import hashlib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # holds hsa_pipeline/ and stages/
PACKAGES = ("hsa_pipeline", "stages")
# Distributions whose versions change results or formats: numerics (torch, numpy, opencv,
# the kinematics), the encoder (open_clip, torchvision, Pillow's decoding), the stores and
# gym-aloha's simulation (its physics and rendering record the ALOHA demonstrations).
LIBRARIES = ("torch", "torchvision", "open_clip_torch", "numpy", "zarr", "h5py", "pillow", "opencv-python-headless",
             "roboticstoolbox-python", "spatialmath-python", "safetensors", "gym-aloha", "mujoco", "dm-control")


@functools.cache  # installed versions do not change while a process runs
def library_versions() -> dict[str, str]:
    """Distribution -> installed version ('absent' when not installed)."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _module_file(name: str, root: Path) -> Path | None:
    """'hsa_pipeline.data.caches' -> its .py file (or package __init__.py), None when not ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path) -> set[str]:
    """Absolute names of every module `path` imports (anywhere in the file)."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return found


def import_closure(entry: str | Path, root: Path = ROOT) -> list[Path]:
    """Every file of this repository that `entry` (a .py file) imports, directly or not,
    itself and the __init__.py of every package on the way included; sorted."""
    entry = Path(entry).resolve()
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path, root):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__, a/b/c
                f = _module_file(".".join(parts[:i]), root)
                if f is not None and f not in seen:
                    todo.append(f)
    return sorted(seen)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of this repository it imports (anywhere in the file), for
    every module of hsa_pipeline/ and stages/. A package counts as its __init__."""
    graph = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            name = _module_name(path, root)
            found = set()
            for imported in _imports(path, root):
                parts = imported.split(".")
                for i in range(len(parts), 0, -1):  # the longest prefix that is a module of ours
                    f = _module_file(".".join(parts[:i]), root)
                    if f is not None:
                        found.add(_module_name(f, root))
                        break
            graph[name] = found - {name}
    return graph


def behaviour(path: Path) -> str:
    """The source of `path` as far as it changes what runs: its syntax tree, so comments and
    formatting are gone, with every docstring (module, class, function) dropped, written by
    `canonical` (not `ast.unparse`, whose output changes between Python versions)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return canonical(tree)


def canonical(node) -> str:
    """A syntax tree as text: node names and their fields, positions left out, and fields
    that are empty or None left out too, so a field a newer Python adds to every node (e.g.
    3.12's `type_params=[]`) does not change the text of code that does not use it."""
    if isinstance(node, ast.AST):
        fields = [f"{name}={canonical(value)}" for name, value in ast.iter_fields(node)
                  if name == "value" and isinstance(node, ast.Constant)  # None is a value here
                  or value is not None and value != [] and name != "kind"]  # kind: a 'u' prefix, meaningless
        return f"{type(node).__name__}({','.join(fields)})"
    if isinstance(node, list):
        return "[" + ",".join(canonical(v) for v in node) + "]"
    return repr(node)


def code_fingerprint(module: str, root: Path = ROOT) -> str:
    """sha256 of what `module` ('hsa_pipeline.training.loop', 'stages.geometry') and everything it
    imports run: their `behaviour`, so a docstring or comment edit leaves it unchanged."""
    entry = _module_file(module, root)
    if entry is None:
        raise ValueError(f"{module}: not a module of this repository")
    h = hashlib.sha256()
    h.update(repr(sorted(library_versions().items())).encode() + b"\0")
    for path in import_closure(entry, root):
        h.update(str(path.relative_to(root)).encode() + b"\0" + behaviour(path).encode() + b"\0")
    return h.hexdigest()
