"""The shell scripts beside the code: what they do to the files around them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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


def test_docker_smoke_clones_through_that_script():
    text = (REPO / "scripts" / "docker_smoke.sh").read_text()
    assert 'scripts/clone_for_container.sh "$repo" "$1"' in text and "git clone" not in text.replace(
        "`git clone`", "")
