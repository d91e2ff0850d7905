"""End to end with real `dvc` in a temporary copy of the repository, on a tiny demo:
`dvc repro` completes; a second one runs nothing; each kind of params change reruns
exactly the stages that depend on it. Also: `dvc metrics show` reads both metrics files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY, TINY_TRAIN
from hsa_pipeline.config import apply_overrides

pytestmark = pytest.mark.slow
DVC = str(Path(sys.executable).with_name("dvc"))
ALL = ["synth", "prepare", "geometry", "features", "train", "evaluate"]
E2E = TINY + TINY_TRAIN + ["train.steps=4", "train.val_every=4", "train.log_every=2", "eval.report_frames=1"]


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(cwd), "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([a-z]+)'", output)


def stale(output: str) -> set[str]:
    """Stages `dvc status` reports as changed."""
    return {m for m in re.findall(r"^(\w+):\s*$", output, flags=re.M) if m in ALL}


def set_params(repo: Path, overrides: list[str]) -> None:
    path = repo / "params.yaml"
    path.write_text(yaml.safe_dump(apply_overrides(yaml.safe_load(path.read_text()), overrides), sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("e2e") / "repo"
    dst.mkdir()
    for item in ("hsa_pipeline", "stages", "dvc.yaml", "params.yaml", ".dvc", ".dvcignore", ".gitignore"):
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, dst / item, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
        else:
            shutil.copy2(src, dst / item)
    set_params(dst, E2E)
    run(["git", "init", "-q"], dst)
    run(["git", "add", "-A"], dst)
    run(["git", "commit", "-qm", "init"], dst)
    return dst


def test_repro_then_nothing_then_exactly_the_affected_stages(repo):
    out = run([DVC, "repro"], repo)
    assert ran(out) == ALL
    assert json.loads((repo / "outputs/eval/metrics.json").read_text())["val_frames"] > 0
    shown = run([DVC, "metrics", "show", "--json"], repo)
    assert "chunk_l1" in shown and "best_val_l1_prior" in shown

    assert ran(run([DVC, "repro"], repo)) == []  # nothing changed: nothing runs
    assert stale(run([DVC, "status"], repo)) == set()

    # (change, stages whose declared params changed (`dvc status`), stages `dvc repro` runs)
    cases = [
        (["train.lr=0.001"], {"train"}, ["train", "evaluate"]),
        (["features.resize=letterbox"], {"features"}, ["features", "train", "evaluate"]),
        (["geometry.margin_px=6.0"], {"geometry"}, ["geometry", "train", "evaluate"]),
        (["synth.seed=3"], {"synth"}, ALL),
    ]
    for overrides, direct, expected in cases:
        set_params(repo, overrides)
        assert stale(run([DVC, "status"], repo)) == direct, overrides
        assert ran(run([DVC, "repro"], repo)) == expected, overrides


def test_calibration_change_with_real_data_reruns_geometry_train_evaluate(repo):
    """With real data (synth disabled), a camera calibration value touches geometry and
    what depends on it. (In demo mode the synth stage renders from the calibration too, so
    there the whole pipeline follows: one source of truth.)"""
    data = repo / "recorded"
    run([sys.executable, "-m", "hsa_pipeline.cli", "synth", "--set", "synth.out_dir=recorded"], repo)
    set_params(repo, ["synth.enabled=false", f"data.episodes_dir={data / 'episodes'}"])
    run([DVC, "repro"], repo)
    set_params(repo, ["cameras.top.K=[[310.0, 0.0, 128.0], [0.0, 310.0, 96.0], [0.0, 0.0, 1.0]]"])
    assert stale(run([DVC, "status"], repo)) == {"synth", "geometry"}
    out = run([DVC, "repro"], repo)
    # synth is a no-op without the demo: its output is unchanged, so prepare and features are skipped
    assert ran(out) == ["synth", "geometry", "train", "evaluate"]
    assert (repo / "data/demo/episodes/SYNTH_DISABLED").exists()


def test_the_readme_ablation_line_compares_hsa_on_and_off(repo):
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "after repro"], repo)
    out = run([DVC, "exp", "run", "-n", "hsa-off", "-S", "hsa.enabled=false"], repo)
    assert ran(out) == ["train", "evaluate"]
    text = run([DVC, "exp", "show", "--json"], repo)
    assert "hsa-off" in text
    # both the committed run and the experiment carry their evaluation metrics
    assert text.count('"chunk_l1"') >= 2
    status = run(["git", "status", "--porcelain"], repo)
    assert "outputs/features.zarr" not in status and "episode_0.hdf5" not in status  # DVC keeps its outputs out of git
