"""Shared fixtures: the repository's params.yaml made small, and a tiny demo dataset
written once per test session into a temporary directory."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from hsa_pipeline.config import Params, apply_overrides, params_from_dict

REPO = Path(__file__).resolve().parents[1]
# torch.compile on a CPU (inductor) writes and builds C++: its tests skip where no compiler is
needs_cpp_compiler = pytest.mark.skipif(not any(map(__import__("shutil").which, ("c++", "g++", "clang++"))),
                                        reason="inductor's CPU code needs a C++ compiler")
warnings.filterwarnings("ignore", category=DeprecationWarning)

# A demo small enough for unit tests: 4 episodes of 1 + 2 x 12 frames.
TINY = ["synth.episodes=4", "world.frames_per_touch=12", "world.max_joint_speed_deg=360",
        "act.chunk_size=5", "data.min_length=5", "data.train_ratio=0.75"]


# The test process computes with the libraries' own kernels (numerics: native: nothing sets
# pipeline/numerics.py's environment before pytest loads numpy and torch). A stage or a
# server in a subprocess whose numbers a test compares with in-process ones runs the same.
AS_THIS_PROCESS = ["--set", "numerics=native"]


def make_params(overrides: list[str] | None = None, base: list[str] | None = None) -> Params:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    return params_from_dict(apply_overrides(raw, (base if base is not None else TINY) + (overrides or [])))


@pytest.fixture
def tiny_params() -> Params:
    return make_params()


def run_stage(name: str, p: Params):
    """A stage exactly as `python -m stages.<name>` runs it (its declared params only),
    with params given as an object; outputs go under the current directory's outputs/."""
    from stages import DeclaredParams, stage_module

    module = stage_module(name)
    return module.run(DeclaredParams(p, module.PARAMS))


def demo_rig(p: Params):
    from hsa_pipeline.geometry.rig import Rig

    return Rig(p.robot, p.sensors, p.cameras, p.geometry.margin_px)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """Tiny demo episodes (X-Trainer layout), shared read-only by many tests."""
    from hsa_pipeline.world.synth import run_synth

    p = make_params()
    return run_synth(p.synth, p.world, p.robot, p.sensors, p.cameras, tmp_path_factory.mktemp("demo"))


TINY_TRAIN = ["act.hidden_dim=32", "act.dim_feedforward=64", "act.heads=2", "act.enc_layers=1", "act.dec_layers=2",
              "act.vae_enc_layers=1", "act.latent_dim=8", "hsa.proj_dim=16", "train.batch_size=8", "train.steps=20",
              "train.val_every=10", "train.log_every=5", "train.ckpt_every=10", "train.warmup_steps=2",
              "features.batch_size=32", "features.workers=0"]


def tiny_pipeline_params(extra: list[str] | None = None) -> Params:
    return make_params(TINY_TRAIN + (extra or []))


# Two Nova 2 arms, a tactile sensor and a wrist camera on each, one top camera (X-Trainer-like).
BIMANUAL = [
    "robot.arms={left: {model: nova2, qpos_start: 0, gripper_index: 6, base: {xyz: [-0.35, 0.0, 0.0]}},"
    " right: {model: nova2, qpos_start: 7, gripper_index: 13, base: {xyz: [0.35, 0.0, 0.0]}}}",
    "sensors={tactile_left: {arm: left, mount: {xyz: [0.0, 0.0, 0.12]}},"
    " tactile_right: {arm: right, mount: {xyz: [0.0, 0.0, 0.12]}}}",
    "cameras={top: {mount: world, width: 256, height: 192, K: [[300.0, 0.0, 128.0], [0.0, 300.0, 96.0], [0.0, 0.0, 1.0]],"
    " pose: {xyz: [0.0, -0.95, 0.6], rpy_deg: [-131.576, 0.0, 0.0]}},"
    " left_wrist: {mount: left, width: 192, height: 144, K: [[120.0, 0.0, 96.0], [0.0, 120.0, 72.0], [0.0, 0.0, 1.0]],"
    " pose: {xyz: [0.0, 0.06, 0.03], rpy_deg: [-24.775, 0.0, 180.0]}},"
    " right_wrist: {mount: right, width: 192, height: 144, K: [[120.0, 0.0, 96.0], [0.0, 120.0, 72.0], [0.0, 0.0, 1.0]],"
    " pose: {xyz: [0.0, 0.06, 0.03], rpy_deg: [-24.775, 0.0, 180.0]}}}",
    "data.cameras={top: third_person, left_wrist: wrist, right_wrist: wrist}",
    "data.tactile=[tactile_left, tactile_right]",
]


def bimanual_params(extra: list[str] | None = None) -> Params:
    return make_params(BIMANUAL + (extra or []))


from hsa_pipeline.pipeline.paths import EVAL, FEATURES, GEOMETRY, PREPARE, TRAIN  # noqa: E402, F401  (the stages' outputs)

RUN = TRAIN / "run"


def build_caches(root: Path, extra: list[str] | None = None) -> Path:
    """Run synth -> prepare -> geometry -> features in `root` (as `dvc repro` would)."""
    old = os.getcwd()
    os.chdir(root)
    try:
        p = tiny_pipeline_params(extra)
        for name in ("synth", "prepare", "geometry", "features"):
            run_stage(name, p)
    finally:
        os.chdir(old)
    return root


@pytest.fixture(scope="session")
def cached_dir(tmp_path_factory) -> Path:
    """A working directory holding the tiny demo's episodes, prepare, geometry and features
    outputs (as `dvc repro` leaves them), built once per session."""
    return build_caches(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture
def work_dir(cached_dir, tmp_path, monkeypatch) -> Path:
    """A private copy of `cached_dir` as the current directory (stages write outputs/)."""
    import shutil

    dst = tmp_path / "work"
    shutil.copytree(cached_dir, dst, symlinks=True)
    monkeypatch.chdir(dst)
    return dst


def pytest_unconfigure(config):
    """roboticstoolbox keeps robots in functools caches on its classes (`BaseRobot.ets`);
    their ETS objects outlive its nanobind extension at interpreter exit, which then
    prints ~60 "nanobind: leaked instance" lines after pytest's summary (read as a
    failure). Clearing those caches first lets the run end with the summary."""
    import gc
    import sys

    for name, module in list(sys.modules.items()):
        if name.startswith("roboticstoolbox"):
            for cls in [v for v in vars(module).values() if isinstance(v, type)]:
                for attr in list(vars(cls).values()):
                    if hasattr(attr, "cache_clear"):
                        attr.cache_clear()
    gc.collect()


def load_script(name: str):
    """A module of scripts/ (not a package), imported by its path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would: a dataclass of the module looks itself up there
    spec.loader.exec_module(module)
    return module
