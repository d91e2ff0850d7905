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
warnings.filterwarnings("ignore", category=DeprecationWarning)

# A demo small enough for unit tests: 4 episodes of 1 + 2 x 12 frames.
TINY = ["synth.episodes=4", "synth.touches=2", "synth.frames_per_touch=12", "synth.distractors=2",
        "act.chunk_size=5", "data.min_length=5", "data.train_ratio=0.75"]


def make_params(overrides: list[str] | None = None, base: list[str] | None = None) -> Params:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    return params_from_dict(apply_overrides(raw, (base if base is not None else TINY) + (overrides or [])))


@pytest.fixture
def tiny_params() -> Params:
    return make_params()


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """Tiny demo episodes (X-Trainer layout), shared read-only by many tests."""
    from hsa_pipeline.synth import run_synth

    out = tmp_path_factory.mktemp("demo")
    return run_synth(make_params(), out)


TINY_TRAIN = ["act.hidden_dim=32", "act.dim_feedforward=64", "act.heads=2", "act.enc_layers=1", "act.dec_layers=2",
              "act.vae_enc_layers=1", "act.latent_dim=8", "hsa.proj_dim=16", "train.batch_size=8", "train.steps=20",
              "train.val_every=10", "train.log_every=5", "train.ckpt_every=10", "train.warmup_steps=2",
              "features.batch_size=32", "features.workers=0"]


def tiny_pipeline_params(extra: list[str] | None = None) -> Params:
    return make_params(TINY_TRAIN + (extra or []))


@pytest.fixture(scope="session")
def cached_dir(tmp_path_factory) -> Path:
    """A working directory holding the tiny demo's episodes, prepare, geometry and features
    outputs (as `dvc repro` leaves them), built once per session."""
    import os

    from hsa_pipeline.features import run_features
    from hsa_pipeline.geometry import run_geometry
    from hsa_pipeline.paths import FEATURES, GEOMETRY, PREPARE
    from hsa_pipeline.prepare import run_prepare
    from hsa_pipeline.synth import run_synth

    root = tmp_path_factory.mktemp("pipeline")
    old = os.getcwd()
    os.chdir(root)
    try:
        p = tiny_pipeline_params()
        run_synth(p)
        run_prepare(p.data, p.act.chunk_size, PREPARE)
        run_geometry(p, PREPARE, GEOMETRY)
        run_features(p.features, PREPARE, FEATURES)
    finally:
        os.chdir(old)
    return root


@pytest.fixture
def work_dir(cached_dir, tmp_path, monkeypatch) -> Path:
    """A private copy of `cached_dir` as the current directory (stages write outputs/)."""
    import shutil

    dst = tmp_path / "work"
    shutil.copytree(cached_dir, dst, symlinks=True)
    monkeypatch.chdir(dst)
    return dst


_EXIT = {"status": 0}


def pytest_sessionfinish(session, exitstatus):
    _EXIT["status"] = int(exitstatus)


def pytest_unconfigure(config):
    """roboticstoolbox's nanobind extension prints 'leaked instances' to stderr at interpreter
    exit, after pytest's summary; skip that teardown so the summary stays the last line."""
    if os.environ.get("HSA_TEST_FAST_EXIT", "1") == "1" and not hasattr(config, "workerinput"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT["status"])
