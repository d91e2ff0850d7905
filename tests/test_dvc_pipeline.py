"""End to end with real `dvc`, each test in its own temporary copy of the repository (so
no result depends on the order tests run in), on a tiny demo: `dvc repro` completes; a
second one runs nothing; each kind of params change reruns exactly the stages that depend
on it, and what they DID (training from step 0 after an upstream change, metrics that
changed); a docstring edit reruns nothing, a code edit exactly the stages that run it; a
URDF edited in place reruns what reads it; a training run killed mid-way resumes.
Also: `dvc metrics show` reads both metrics files."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY, TINY_TRAIN
from hsa_pipeline.config import apply_overrides

pytestmark = pytest.mark.slow
DVC = str(Path(sys.executable).with_name("dvc"))
ALL = ["code", "synth", "prepare", "geometry", "features", "train", "evaluate"]
E2E = TINY + TINY_TRAIN + ["train.steps=4", "train.val_every=4", "train.log_every=2", "eval.report_frames=1",
                           "eval.rollouts=2", "eval.max_steps=6"]


def env_for(cwd: Path) -> dict:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run(cmd: list[str], cwd: Path) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env_for(cwd), timeout=900)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def metrics(repo: Path, stage: str) -> dict:
    return json.loads((repo / "outputs" / stage / "metrics.json").read_text())


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([a-z]+)'", output)


def stale(output: str) -> set[str]:
    """Stages `dvc status` reports as changed."""
    return {m for m in re.findall(r"^(\w+):\s*$", output, flags=re.M) if m in ALL}


def set_params(repo: Path, overrides: list[str]) -> None:
    path = repo / "params.yaml"
    path.write_text(yaml.safe_dump(apply_overrides(yaml.safe_load(path.read_text()), overrides), sort_keys=False))


@pytest.fixture
def repo(tmp_path) -> Path:
    return pipeline_copy(tmp_path / "repo")


def pipeline_copy(dst: Path) -> Path:
    """A fresh git repository holding the pipeline (code, dvc.yaml, tiny params), committed."""
    dst.mkdir()
    # the checkout's code is what the stages run (`python -m stages.<name>` from the root)
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
    assert metrics(repo, "eval")["val_frames"] > 0
    assert (metrics(repo, "train")["start_step"], metrics(repo, "train")["steps_trained"]) == (0, 4)
    shown = run([DVC, "metrics", "show", "--json"], repo)
    assert "chunk_l1" in shown and "best_val_l1_prior" in shown

    assert ran(run([DVC, "repro"], repo)) == []  # nothing changed: nothing runs
    assert stale(run([DVC, "status"], repo)) == set()

    # (change, stages whose declared params changed (`dvc status`), stages `dvc repro` runs)
    cases = [
        (["train.lr=0.001"], {"train"}, ["train", "evaluate"]),
        (["features.resize=letterbox"], {"features"}, ["features", "train", "evaluate"]),
        (["data.train_ratio=0.5"], {"prepare"}, ["prepare", "train", "evaluate"]),  # a new split keeps the caches
        (["synth.seed=3"], {"synth"}, ALL[1:]),  # every stage but `code`: the code did not change
    ]
    for overrides, direct, expected in cases:
        before = metrics(repo, "eval")["chunk_l1"]
        set_params(repo, overrides)
        assert stale(run([DVC, "status"], repo)) == direct, overrides
        assert ran(run([DVC, "repro"], repo)) == expected, overrides
        # every rerun of train trained from step 0: its inputs or settings changed
        assert (metrics(repo, "train")["start_step"], metrics(repo, "train")["steps_trained"]) == (0, 4), overrides
        assert metrics(repo, "eval")["chunk_l1"] != before, overrides


def test_a_docstring_edit_reruns_nothing_and_a_code_edit_exactly_the_stages_that_run_it(repo):
    """The defect this guards: every stage listed its .py files as deps, so fixing a typo
    in a docstring reran features and training (hours on real data)."""
    run([DVC, "repro"], repo)
    source = repo / "hsa_pipeline" / "geometry" / "compute.py"
    text = source.read_text()
    source.write_text(text.replace('"""The `geometry` stage', '"""The `geometry` stage (a docstring edit)', 1))
    assert "(a docstring edit)" in source.read_text()
    assert ran(run([DVC, "repro"], repo)) == ["code"]  # its fingerprints did not change: nothing else runs
    source.write_text(source.read_text() + "\nCODE_EDIT = 1\n")  # code that changes nothing the stage writes
    assert ran(run([DVC, "repro"], repo)) == ["code", "geometry"]  # the same store: nothing downstream
    assert stale(run([DVC, "status"], repo)) == set()


def test_a_urdf_edited_in_place_reruns_the_stages_that_read_it(repo):
    """The defect this guards: a file named in params was only a string to DVC, so an edit
    of the URDF left `dvc repro` saying everything was up to date."""
    from test_kinematics import nova2_urdf

    (repo / "robots").mkdir()
    urdf = repo / "robots" / "nova2.urdf"
    urdf.write_text(nova2_urdf())
    set_params(repo, ["robot.arms.arm.model=robots/nova2.urdf"])
    r = subprocess.run([DVC, "repro"], cwd=repo, capture_output=True, text=True, env=env_for(repo))
    assert r.returncode != 0 and "stage synth reads robots/nova2.urdf, but dvc.yaml does not list it" in r.stderr
    out = run([sys.executable, "-m", "hsa_pipeline.cli", "sync-deps"], repo)
    assert "geometry: robots/nova2.urdf" in out
    run([DVC, "repro"], repo)
    assert ran(run([DVC, "repro"], repo)) == []
    urdf.write_text(urdf.read_text().replace("<robot ", "<!-- edited in place -->\n<robot ", 1))
    assert stale(run([DVC, "status"], repo)) == {"synth", "geometry", "evaluate"}
    # the same kinematics: the episodes and the store come out the same, so nothing in between reruns
    assert ran(run([DVC, "repro"], repo)) == ["synth", "geometry", "evaluate"]


def test_a_new_margin_retrains_from_zero_and_changes_the_result(repo):
    """The defect this guards: train found last.pt at the final step, trained nothing and
    re-exported the old policy, because its resume key ignored the geometry store."""
    run([DVC, "repro"], repo)
    policy = (repo / "outputs/train/policy/weights.pt").read_bytes()
    align = metrics(repo, "eval")["alignment"]
    set_params(repo, ["geometry.margin_px=12.0"])
    assert ran(run([DVC, "repro"], repo)) == ["geometry", "train", "evaluate"]
    assert (metrics(repo, "train")["start_step"], metrics(repo, "train")["steps_trained"]) == (0, 4)
    assert (repo / "outputs/train/policy/weights.pt").read_bytes() != policy
    assert metrics(repo, "eval")["alignment"] != align


def test_a_training_run_killed_mid_way_resumes(repo):
    run([DVC, "repro"], repo)
    # a new learning rate: a fresh run (from step 0), long enough to be killed mid-way
    set_params(repo, ["train.lr=0.0005", "train.steps=3000", "train.ckpt_every=20", "train.log_every=20",
                      "train.val_every=1000"])
    last = repo / "outputs/train/run/checkpoints/last.pt"
    old = last.stat().st_mtime_ns
    proc = subprocess.Popen([DVC, "repro", "train"], cwd=repo, env=env_for(repo), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (last.exists() and last.stat().st_mtime_ns != old):
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)  # like a preempted job: no clean-up of any kind
    proc.wait()
    assert last.exists(), "training never wrote a checkpoint"
    set_params(repo, ["train.steps=300"])  # finish sooner; the step count does not change what is learned
    out = run([DVC, "repro"], repo)
    assert ran(out) == ["train", "evaluate"]
    m = metrics(repo, "train")
    assert m["start_step"] >= 20 and m["start_step"] % 20 == 0 and m["steps_trained"] == 300 - m["start_step"]
    assert f"resuming from outputs/train/run/checkpoints/last.pt at step {m['start_step']}" in out
    steps = [int(line.split("\t")[0]) for line in (repo / "outputs/train/run/curves/train.tsv").read_text().split("\n")[1:]
             if line]
    assert steps == list(range(20, 301, 20))  # each logged once, none lost, none twice


def test_calibration_change_with_real_data_reruns_geometry_train_evaluate(repo):
    """With real data (synth disabled), a camera calibration value touches geometry and
    what depends on it. (In demo mode the synth stage renders from the calibration too, so
    there the whole pipeline follows: one source of truth.)"""
    data = repo / "recorded"
    run([sys.executable, "-m", "hsa_pipeline.cli", "synth", "--set", "synth.out_dir=recorded",
         "--set", "data.episodes_dir=recorded/episodes"], repo)
    set_params(repo, ["synth.enabled=false", f"data.episodes_dir={data / 'episodes'}"])
    run([DVC, "repro"], repo)
    set_params(repo, ["cameras.top.K=[[310.0, 0.0, 128.0], [0.0, 310.0, 96.0], [0.0, 0.0, 1.0]]"])
    assert stale(run([DVC, "status"], repo)) == {"synth", "geometry", "evaluate"}  # evaluate acts in the world
    out = run([DVC, "repro"], repo)
    # synth is a no-op without the demo: its output is unchanged, so prepare and features are skipped
    assert ran(out) == ["synth", "geometry", "train", "evaluate"]
    assert (repo / "data/demo/episodes/SYNTH_DISABLED").exists()


def test_the_readme_ablation_line_compares_hsa_on_and_off(repo):
    run([DVC, "repro"], repo)
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


def test_the_stages_run_the_checkouts_code(repo):
    """What DVC hashes is what runs: an edit in the checkout shows in `dvc repro` (not the
    installed package, which a non-editable install or a Docker image would hold)."""
    source = repo / "hsa_pipeline" / "data" / "prepare.py"
    original = source.read_text()
    anchor = "    layout = resolve_layout(cfg.episodes_dir, cfg.layout)\n"
    assert anchor in original
    source.write_text(original.replace(anchor, '    print("EDITED-IN-THE-CHECKOUT")\n' + anchor))
    try:
        assert "EDITED-IN-THE-CHECKOUT" in run([DVC, "repro", "prepare"], repo)
    finally:
        source.write_text(original)
