"""Shared fixtures: the repository's params.yaml made small, and a tiny demo dataset
written once per test session into a temporary directory."""

from __future__ import annotations

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
