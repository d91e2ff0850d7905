"""dvc.yaml cannot drift from the code: each stage runs its stages/ module, lists exactly
the repository modules that module imports (derived from the source, lazy imports
included), and declares exactly the params keys the module reads."""

from __future__ import annotations

import pytest
import yaml

from conftest import REPO, make_params
from hsa_pipeline.closure import code_fingerprint, import_closure
from stages import NAMES, DeclaredParams, UndeclaredParam, stage_module

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_every_stage_module_is_a_dvc_stage_run_with_python_m():
    assert list(DVC) == NAMES
    for name in NAMES:
        assert DVC[name]["cmd"] == f"python -m stages.{name}"


@pytest.mark.parametrize("name", NAMES)
def test_deps_list_exactly_the_code_the_stage_imports(name):
    code = {str(p.relative_to(REPO)) for p in import_closure(REPO / "stages" / f"{name}.py")}
    listed = {d for d in DVC[name]["deps"] if d.endswith(".py")}
    assert code - listed == set(), f"dvc.yaml stage {name} misses modules it imports (scripts/sync_dvc_deps.py)"
    assert listed - code == set(), f"dvc.yaml stage {name} lists modules it does not import (spurious reruns)"


@pytest.mark.parametrize("name", NAMES)
def test_params_are_the_keys_the_module_declares(name):
    assert DVC[name]["params"] == stage_module(name).PARAMS


def test_reading_an_undeclared_key_is_refused():
    p = DeclaredParams(make_params(), ["data", "act.chunk_size"])
    assert p.act.chunk_size == 5 and p.data.train_ratio == 0.75  # the tiny params
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
