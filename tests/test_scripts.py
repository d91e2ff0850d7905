"""The shell scripts beside the code: what they do to the files around them."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO


def _git(*args, cwd):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=env)


def _source(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    _git("init", "-q", cwd=src)
    _git("add", "-A", cwd=src)
    _git("commit", "-qm", "init", cwd=src)
    _git("gc", "-q", cwd=src)  # pack files: mode 0444, what a plain local clone hard-links
    return src


def _modes(repo: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p.relative_to(repo)): (p.stat().st_mode, p.stat().st_uid, p.stat().st_gid)
            for p in (repo / ".git" / "objects").rglob("*") if p.is_file()}


def test_the_container_clone_leaves_the_source_repository_as_it_was(tmp_path):
    """The defect this guards: docker_smoke.sh cloned with a plain local `git clone`, which
    hard-links the pack files, then ran `chmod -R a+rwX` on the clone: the SOURCE's packs
    became 0666."""
    src = _source(tmp_path)
    before = _modes(src)
    assert any(name.endswith(".pack") for name in before)
    subprocess.run([str(REPO / "scripts/clone_for_container.sh"), str(src), str(tmp_path / "clone")], check=True)
    assert _modes(src) == before
    assert (tmp_path / "clone" / "a.txt").stat().st_mode & 0o777 == 0o666  # the clone itself is writable by all
    # the test can fail: a hard-linked clone chmod-ed the same way changes the source
    _git("clone", "-q", str(src), str(tmp_path / "linked"), cwd=tmp_path)
    subprocess.run(["chmod", "-R", "a+rwX", str(tmp_path / "linked")], check=True)
    assert _modes(src) != before


# A stand-in for the docker CLI (and df) on PATH: it answers what docker_smoke.sh asks, and
# `docker run ... dvc exp run` does what the container would to the mounted clone: prints
# what the edited prepare.py prints, writes fresh metrics (FAKE_MODE=idle: nothing). Each
# mounted clone's pack files' link counts are logged: a hard-linked clone shows 2.
FAKE_DOCKER = r"""#!/usr/bin/env bash
echo "docker $*" >> "$FAKE_LOG"
case "$1" in
  info) case "$3" in *Driver*) echo overlay2 ;; *) echo / ;; esac ;;
  image) [ "$2" = inspect ] && [ "${3:-}" = --format ] && echo 1000000000; exit 0 ;;
  run)
    mount=$(printf '%s\n' "$@" | sed -n 's#^\(.*\):/workspace$#\1#p')
    case " $* " in *" dvc exp run "*) ;; *) exit 0 ;; esac
    find "$mount/.git/objects" -name '*.pack' -exec stat -c 'pack links %h' {} + >> "$FAKE_LOG"
    [ "${FAKE_MODE:-}" = idle ] && exit 0
    sed -n "s/^ *print('\(SMOKE-EDIT-[0-9]*\)')$/\1/p" "$mount/hsa_pipeline/data/prepare.py"
    echo "Running stage 'train':"
    mkdir -p "$mount/outputs/train" "$mount/outputs/eval"
    echo '{"start_step": 0, "steps_trained": 4, "step": 4}' > "$mount/outputs/train/metrics.json"
    echo "{\"val_frames\": 8, \"closed_loop\": {\"rollouts\": 2}, \"chunk_l1\": \"$*\"}" \
        > "$mount/outputs/eval/metrics.json"
    user=$(printf '%s\n' "$@" | sed -n '/^--user$/{n;p}')
    chown -R "$user" "$mount/outputs" ;;  # as the container's uid would own them
esac
"""
FAKE_DF = """#!/usr/bin/env bash
printf 'Filesystem 1024-blocks Used Available Capacity Mounted on\nfake 999999999 1 999999999 1%% /\n'
"""


def _smoke_repo(tmp: Path) -> Path:
    """A repository with what docker_smoke.sh reads: the two scripts, prepare.py's anchor, dvc.yaml."""
    src = tmp / "src"
    for rel in ("scripts/docker_smoke.sh", "scripts/clone_for_container.sh", "hsa_pipeline/data/prepare.py"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes((REPO / rel).read_bytes())
        (src / rel).chmod((REPO / rel).stat().st_mode)
    for rel in ("dvc.yaml", "data/.gitkeep", ".dvc/config", "outputs/.gitkeep"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("")
    _git("init", "-q", cwd=src)
    _git("add", "-A", cwd=src)
    _git("commit", "-qm", "init", cwd=src)
    _git("gc", "-q", cwd=src)
    return src


def _run_smoke(tmp: Path, src: Path, mode: str = "") -> tuple[subprocess.CompletedProcess, str]:
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("docker", FAKE_DOCKER), ("df", FAKE_DF)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp / f"docker{mode}.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log), "FAKE_MODE": mode,
           "OTHER_UID": "4321", "BASE": "base:fake"}
    run = subprocess.run(["bash", str(src / "scripts/docker_smoke.sh")], capture_output=True, text=True, env=env,
                         timeout=120)
    return run, log.read_text() if log.exists() else ""


needs_root = pytest.mark.skipif(os.getuid() != 0, reason="the stand-in container writes files as another uid")


@needs_root
def test_docker_smoke_runs_each_experiment_on_a_clone_of_its_own_and_leaves_the_source_alone(tmp_path):
    """docker_smoke.sh with a stand-in docker: it passes when the container does its work;
    every `dvc exp run` gets a mounted clone whose pack files are its own (one link each,
    not hard links into the source), and the source's .git/objects keep their modes."""
    src = _smoke_repo(tmp_path)
    before = _modes(src)
    run, log = _run_smoke(tmp_path, src)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "docker smoke: ok" in run.stdout and "a second experiment retrained" in run.stdout
    assert log.count("dvc exp run") == 3  # two uids, then a second experiment
    links = [line for line in log.splitlines() if line.startswith("pack links")]
    assert links and set(links) == {"pack links 1"}
    assert _modes(src) == before


@needs_root
def test_docker_smoke_fails_when_the_container_writes_no_fresh_metrics(tmp_path):
    """The committed metrics are deleted in each clone first: a container that runs but
    trains nothing must fail the smoke test, naming what is missing."""
    run, _ = _run_smoke(tmp_path, _smoke_repo(tmp_path), mode="idle")
    assert run.returncode != 0
    assert "FAILED" in run.stderr and "did not run the checkout's edited prepare.py" in run.stderr


def test_gpu_check_writes_one_summary_and_one_log_archive(tmp_path):
    """A device run returns at most 8 files, so scripts/gpu_check.sh writes two: summary.json
    (each check's status and seconds, every figure) and logs.tar.gz. Run here with its
    `tests` check, whose CUDA tests skip on a CPU (pytest still exits 0)."""
    import json
    import sys
    import tarfile

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    out = tmp_path / "out"
    r = subprocess.run(["bash", "scripts/gpu_check.sh", str(out), "tests"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    [check] = summary["checks"]
    assert check["check"] == "tests" and check["passed"] and check["seconds"] >= 0
    assert summary["commit"] and any("CPU cores" in line for line in summary["environment"])
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
        log = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("tests.log"))).read().decode()
    assert {"tests.log", "checks.tsv", "environment.txt"} <= names
    assert "5 skipped" in log  # no CUDA here: the five CUDA tests (resume, validation, compiled curve, host-held
    # caches, compiled policy) skip
    bad = subprocess.run(["bash", "scripts/gpu_check.sh", str(tmp_path / "bad"), "tset"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown check 'tset'" in bad.stderr
    none = subprocess.run(["bash", "scripts/gpu_check.sh", str(tmp_path / "none")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert none.returncode == 2 and "part1, part2" in none.stderr
    # a check past CHECK_TIMEOUT is stopped (exit 124), the next one runs, and the summary
    # holds both: a device command cut off at its limit still returns what finished
    slow = tmp_path / "slow"
    t0 = time.monotonic()
    r = subprocess.run(["bash", "scripts/gpu_check.sh", str(slow), "tests", "tests"], cwd=REPO,
                       env={**env, "CHECK_TIMEOUT": "1"}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and time.monotonic() - t0 < 60, r.stdout + r.stderr
    checks = json.loads((slow / "summary.json").read_text())["checks"]
    assert [(c["check"], c["exit_status"], c["passed"]) for c in checks] == [("tests", 124, False)] * 2


FAKE_PYTHON = """#!/bin/bash
# python3 for gpu_check.sh's injection test: the summary runs for real; the command whose
# arguments contain $FAIL_ON prints a traceback and fails; every other command "succeeds".
case "$*" in *--compiled-training*) echo '{"cudagraph_skips": 0}'; exit 0 ;; *gpu_summary.py*) exec REAL "$@" ;; esac
case "$*" in *"$FAIL_ON"*) echo "Traceback (most recent call last): injected failure in: $*" >&2; exit 1 ;; esac
exit 0
"""


@pytest.mark.parametrize("check, fail_on", [
    ("compare", "compare_features.py"), ("train", "evaluate"), ("tests", "pytest"), ("torchrun", "torchrun"),
    ("bench", "bench_policy.py"), ("features", "bench_features.py"), ("serve", "bench_serve_load.py")])
def test_a_failure_in_any_gpu_check_is_recorded_as_a_failure(tmp_path, check, fail_on):
    """Issue #45: the features check piped its benchmark into grep in a shell without
    pipefail, so a traceback was recorded as a pass. Each check is run here with its last
    command failing (fake python3, torchrun and nvidia-smi on PATH, in a scratch folder):
    each must be recorded as failed, and the checkout's outputs are never touched."""
    import json
    import shutil
    import sys

    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    work.mkdir()
    shutil.copy(REPO / "params.yaml", work / "params.yaml")
    (bin_dir / "python3").write_text(FAKE_PYTHON.replace("REAL", sys.executable))
    (bin_dir / "torchrun").write_text('#!/bin/bash\ncase "torchrun" in *"$FAIL_ON"*) exit 1 ;; esac\nexit 0\n')
    (bin_dir / "nvidia-smi").write_text('#!/bin/bash\necho "GPU 0: a fake"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAIL_ON": fail_on, "CHECK_TIMEOUT": "60",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    r = subprocess.run(["bash", str(REPO / "scripts/gpu_check.sh"), str(tmp_path / "out"), check], cwd=work, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    [got] = json.loads((tmp_path / "out" / "summary.json").read_text())["checks"]
    assert got["check"] == check and not got["passed"] and got["exit_status"] not in (0, 124), got
    assert sorted(p.name for p in work.iterdir()) == ["params.yaml"] or check in ("compare", "train")


def test_the_train_checks_compile_figures_are_read_from_torch_logs_and_the_trainers_curves(tmp_path):
    """gpu_check's train check: what torch.compile logged during `hsa train`, counted, and
    the trainer's own steps/s after the compile: train.tsv's samples_per_s is cumulative
    from the start (compile included), so steps 50 -> 150 at batch 16 taking 2 s -> 50 steps/s."""
    from conftest import load_script

    summary = load_script("gpu_summary")
    log = ("[rank0] Graph break in user code at x.py:3\nRecompiling function forward in y.py\n"
           "skipping cudagraphs due to mutated inputs\nGraph break in user code at z.py:9\n")
    # step 25 at 10 s (the compile), step 50 at 10.5 s, step 150 at 12.5 s: samples/s = step * 16 / seconds
    tsv = "step\tl1\tsamples_per_s\n25\t1\t40.0\n50\t1\t" + f"{50 * 16 / 10.5}\n150\t1\t{150 * 16 / 12.5}\n"
    got = summary.compiled_training(log, tsv, 16)
    assert (got["graph_breaks"], got["recompiles"], got["cudagraph_skips"]) == (2, 1, 1)
    assert got["train_steps_per_s_after_compile"] == pytest.approx(50.0) and got["steps_timed"] == [50, 150]
