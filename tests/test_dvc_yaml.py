"""dvc.yaml cannot drift from the code: each stage runs its stages/ module, depends on its
code through the fingerprint file the `code` stage writes (the code it runs, docstrings and
comments aside), declares exactly the params keys the module reads, and lists the files
those params name."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import yaml

from conftest import REPO, make_params
from hsa_pipeline.pipeline.closure import behaviour, code_fingerprint, import_closure
from stages import NAMES, DeclaredParams, UndeclaredParam, stage_module

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
WORK = [n for n in NAMES if n != "code"]


def test_every_stage_module_is_a_dvc_stage_run_with_python_m():
    assert list(DVC) == NAMES
    for name in NAMES:
        assert DVC[name]["cmd"] == f"python -m stages.{name}"


@pytest.mark.parametrize("name", WORK)
def test_a_stage_depends_on_its_code_through_its_fingerprint_file_only(name):
    deps = DVC[name]["deps"]
    assert deps[0] == f"outputs/code/{name}.sha256"
    assert not [d for d in deps if d.endswith(".py")], "code is a dep through outputs/code, not file by file"


def test_the_code_stage_reads_all_the_source_and_writes_every_fingerprint(tmp_path, monkeypatch):
    assert DVC["code"]["deps"] == ["hsa_pipeline", "stages"] and DVC["code"]["outs"] == ["outputs/code"]
    monkeypatch.chdir(tmp_path)
    prints = stage_module("code").run(None)
    assert sorted(p.name for p in (tmp_path / "outputs/code").iterdir()) == sorted(f"{n}.sha256" for n in WORK)
    for name in WORK:
        assert (tmp_path / f"outputs/code/{name}.sha256").read_text() == prints[name] + "\n"
        assert prints[name] == code_fingerprint(f"stages.{name}")
    assert len(set(prints.values())) == len(WORK)  # every stage runs different code


def test_dvc_yaml_names_the_paths_the_stages_write():
    """One list of output paths (pipeline/paths.py): dvc.yaml's outs and deps are those."""
    from hsa_pipeline.pipeline import paths

    outs = {name: [next(iter(o)) if isinstance(o, dict) else o for o in DVC[name].get("outs", [])] for name in NAMES}
    assert outs["code"] == [str(paths.CODE)] and outs["prepare"] == [str(paths.PREPARE)]
    assert outs["geometry"] == [str(paths.GEOMETRY)] and outs["features"] == [str(paths.FEATURES)]
    assert outs["train"] == [str(paths.TRAIN / "run"), str(paths.POLICY)]
    assert all(o.startswith(str(paths.EVAL) + "/") for o in outs["evaluate"])
    for name in ("train", "evaluate"):
        assert {str(paths.PREPARE), str(paths.GEOMETRY), str(paths.FEATURES)} <= set(DVC[name]["deps"])
    assert str(paths.POLICY) in DVC["evaluate"]["deps"]
    for name in [n for n in NAMES if n != "synth"]:  # synth writes where synth.out_dir says
        assert stage_module(name).OUT in (paths.CODE, paths.PREPARE, paths.GEOMETRY, paths.FEATURES, paths.TRAIN,
                                          paths.EVAL)


@pytest.mark.parametrize("name", NAMES)
def test_params_are_the_keys_the_module_declares(name):
    assert DVC[name].get("params", []) == stage_module(name).PARAMS


def test_reading_an_undeclared_key_is_refused():
    full = make_params(["act.chunk_size=7", "data.train_ratio=0.5"])
    p = DeclaredParams(full, ["data", "act.chunk_size"])
    assert (p.act.chunk_size, p.data.train_ratio) == (7, 0.5) and p.data is full.data  # declared: passed through
    with pytest.raises(UndeclaredParam, match="reads params key 'act.hidden_dim'"):
        _ = p.act.hidden_dim
    with pytest.raises(UndeclaredParam, match="reads params key 'train'"):
        _ = p.train


def test_the_closure_follows_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "hsa_pipeline"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import thing\n\ndef f():\n    from .sub import c\n")
    (pkg / "b.py").write_text("import numpy\nthing = 1\n")
    (pkg / "sub" / "c.py").write_text("from .. import d\n")
    (pkg / "d.py").write_text("")
    (pkg / "unused.py").write_text("")
    got = {str(p.relative_to(tmp_path)) for p in import_closure(pkg / "a.py", tmp_path)}
    assert got == {"hsa_pipeline/__init__.py", "hsa_pipeline/a.py", "hsa_pipeline/b.py", "hsa_pipeline/sub/__init__.py",
                   "hsa_pipeline/sub/c.py", "hsa_pipeline/d.py"}
    before = code_fingerprint("hsa_pipeline.a", tmp_path)
    (pkg / "unused.py").write_text("x = 1\n")
    assert code_fingerprint("hsa_pipeline.a", tmp_path) == before
    (pkg / "d.py").write_text("x = 1\n")
    assert code_fingerprint("hsa_pipeline.a", tmp_path) != before


def test_the_fingerprint_ignores_docstrings_comments_and_layout_but_not_code(tmp_path):
    pkg = tmp_path / "hsa_pipeline"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    src = 'def f(x):\n    return x + 1\n\n\nclass C:\n    k = 2\n'
    (pkg / "m.py").write_text(src)
    base = code_fingerprint("hsa_pipeline.m", tmp_path)
    docs = ('"""Module doc."""\n# a comment\ndef f(x):\n    """What f does."""\n    return x + 1  # why\n\n\n'
            'class C:\n    """A class."""\n\n    k = 2\n')
    (pkg / "m.py").write_text(docs)
    assert code_fingerprint("hsa_pipeline.m", tmp_path) == base
    (pkg / "m.py").write_text('def f(x):\n    """Only a docstring."""\n')
    assert "Pass()" in behaviour(pkg / "m.py")  # a body of a docstring alone is an empty body
    for changed in (src.replace("x + 1", "x + 2"), src.replace("k = 2", "k = '2'"), src + "y = f(1)\n"):
        (pkg / "m.py").write_text(changed)
        assert code_fingerprint("hsa_pipeline.m", tmp_path) != base, changed
    (pkg / "m.py").write_text(src.replace("return x + 1", "return 'x + 1'"))  # a string that is not a docstring
    assert code_fingerprint("hsa_pipeline.m", tmp_path) != base



def test_the_fingerprint_covers_library_versions(tmp_path, monkeypatch):
    from hsa_pipeline.pipeline import closure

    pkg = tmp_path / "hsa_pipeline"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "m.py").write_text("x = 1\n")
    base = closure.code_fingerprint("hsa_pipeline.m", tmp_path)
    versions = closure.library_versions()
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"] == torch.__version__
    monkeypatch.setattr(closure, "library_versions", lambda: {**versions, "zarr": "99.0"})  # an upgrade
    assert closure.code_fingerprint("hsa_pipeline.m", tmp_path) != base


def test_the_fingerprint_text_does_not_depend_on_the_python_version(tmp_path):
    """`canonical` leaves out fields that are empty (3.12 added `type_params=[]` to every
    function): the same tree with and without such a field writes the same text. Where other
    Pythons are installed (pyenv), every module of this repository is written the same by each."""
    import ast
    import glob
    import subprocess

    from hsa_pipeline.pipeline.closure import canonical

    tree = ast.parse("def f(x: int = 1):\n    return [x, None, 'a']\n")
    plain = canonical(tree)
    tree.body[0].type_params = []  # as 3.12+ parses it
    tree.body[0]._fields = (*tree.body[0]._fields, "type_params")
    assert canonical(tree) == plain and "Return(value=List(" in plain and "Constant(value=None)" in plain
    script = ("import importlib.util, pathlib, sys; s = importlib.util.spec_from_file_location('c', sys.argv[1]); "
              "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
              "print(m.hashlib.sha256(''.join(m.behaviour(p) for p in sorted(pathlib.Path(sys.argv[2]).rglob('*.py')))"
              ".encode()).hexdigest())")
    closure_py = str(REPO / "hsa_pipeline" / "pipeline" / "closure.py")
    pythons = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[0-9]*/bin/python3")))
    prints = {py: subprocess.run([py, "-c", script, closure_py, str(REPO / "hsa_pipeline")], capture_output=True,
                                 text=True, check=True).stdout for py in [sys.executable, *pythons]}
    assert len(set(prints.values())) == 1, prints

def test_files_named_in_params_are_listed_and_a_missing_one_stops_the_stage(tmp_path):
    from hsa_pipeline.errors import ConfigError
    from hsa_pipeline.pipeline.dvc_deps import MARK, check_listed, sync

    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text((REPO / "dvc.yaml").read_text())
    p = make_params(["robot.arms.arm.model=robots/arm.urdf", "features.pretrained=/weights/vit.bin"])
    with pytest.raises(ConfigError, match="robot.arms.arm.model: stage geometry reads robots/arm.urdf, but dvc.yaml "
                                          "does not list it.*hsa sync-deps"):
        check_listed("geometry", p, dvc_yaml)
    listed = sync(p, dvc_yaml)
    assert listed["geometry"] == listed["synth"] == listed["evaluate"] == ["robots/arm.urdf"]
    assert listed["features"] == ["/weights/vit.bin"] and listed["train"] == listed["prepare"] == []
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    assert "robots/arm.urdf" in stages["geometry"]["deps"] and "/weights/vit.bin" in stages["features"]["deps"]
    for name in ("geometry", "features", "synth", "evaluate"):
        check_listed(name, p, dvc_yaml)  # now listed: no error
    # back to the built-in model and no weights file: the marked lines go, nothing else changes
    sync(make_params(), dvc_yaml)
    assert MARK not in dvc_yaml.read_text() and dvc_yaml.read_text() == (REPO / "dvc.yaml").read_text()
