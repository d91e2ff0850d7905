"""The pipeline's stages, one module per DVC stage (dvc.yaml runs `python -m stages.<name>`
from the repository root, so the checkout's code is what runs, in Docker too).

Each stage module says what it reads and writes and declares the params keys it reads
(`PARAMS`, the same list as its `params:` in dvc.yaml; tests/test_dvc_yaml.py checks
it), then calls the library. Its code dependency is outputs/code/<name>.sha256, written
by the first stage, `code`. `hsa <stage>` runs the
same command, `python -m stages.<name>`.

A stage that computes declares `numerics` and imports the library inside its `run`: `main`
puts the process under params' numerics (pipeline/numerics.py) before numpy and torch load.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from hsa_pipeline.config import load_params
from hsa_pipeline.errors import UserError
from hsa_pipeline.pipeline import numerics
from hsa_pipeline.pipeline.dvc_deps import check_listed

NAMES = ["code", "synth", "prepare", "geometry", "features", "train", "evaluate"]


class UndeclaredParam(AttributeError):
    """A stage read a params key it does not declare: DVC would not rerun it when that key
    changes. A bug in the stage, not a user error."""


class DeclaredParams:
    """Read access to the declared keys of params only: `p.act.chunk_size` works when
    'act' or 'act.chunk_size' is declared, and anything else raises UndeclaredParam."""

    def __init__(self, obj: Any, declared: list[str], prefix: str = ""):
        self._obj, self._declared, self._prefix = obj, declared, prefix

    def __getattr__(self, name: str) -> Any:
        key = f"{self._prefix}{name}"
        if key in self._declared:
            return getattr(self._obj, name)
        if any(d.startswith(key + ".") for d in self._declared):
            return DeclaredParams(getattr(self._obj, name), self._declared, key + ".")
        raise UndeclaredParam(f"the stage reads params key '{key}' but declares only {self._declared} "
                              f"(PARAMS in its stages/ module and params: in dvc.yaml)")


def stage_module(name: str):
    if name not in NAMES:
        raise KeyError(f"unknown stage '{name}'; stages: {', '.join(NAMES)}")
    return importlib.import_module(f"stages.{name}")


def run_stage(name: str, params_path: str | Path = "params.yaml", overrides: list[str] | None = None,
              own_process: bool = False) -> Any:
    """Load and validate params, hand the stage its declared keys, run it. A UserError
    (bad params, a bad episode, a missing upstream output, a diverged loss) is printed as
    one line and exits 1; anything else is a bug and keeps its traceback. `own_process`
    (main): the process is the stage's, and is put under params' numerics first."""
    module = stage_module(name)
    try:
        params = load_params(params_path, overrides)
        check_listed(name, params)  # files named in params are dvc.yaml deps of this stage
        if own_process and "numerics" in module.PARAMS:
            numerics.enter(params.numerics)  # before the stage's numpy and torch load (they load in its run)
        return module.run(DeclaredParams(params, module.PARAMS))
    except UserError as e:
        print(f"hsa {name}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def main(name: str) -> None:
    """`python -m stages.<name> [--params FILE] [--set key=value ...]` (dvc.yaml runs it
    without options; `hsa <name>` with the user's)."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    run_stage(name, args.params, args.overrides, own_process=True)
