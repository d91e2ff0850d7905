"""The caches, the policy and experiments moving between machines through a DVC remote, as
README "Beyond one machine" shows: made and pushed in one clone, pulled in another where
nothing recomputes, an experiment trained there on the pulled caches and pushed, then seen
by a third person. Against a local-directory remote, and against a real SSH remote (sshd
on a loopback port with a throwaway key) where sshd can be started. Also: an interrupted
pull recovers, a store altered on the remote after the push is caught by its hash before
training reads it, and pulled files belong to the user who pulled them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from test_dvc_pipeline import DVC, env_for, pipeline_copy, ran, run, stale

pytestmark = pytest.mark.slow


def dvc_outputs(repo: Path) -> dict[str, bytes]:
    """Every file DVC tracks in the workspace (the caches, the policy, the evaluation)."""
    roots = [repo / "outputs", repo / "data" / "demo"]
    return {str(p.relative_to(repo)): p.read_bytes() for r in roots for p in sorted(r.rglob("*")) if p.is_file()}


def made_and_pushed(tmp_path: Path, url: str, config: list[list[str]] = ()) -> Path:
    """Clone A: the pipeline, run and pushed to the remote at `url`, dvc.lock committed."""
    a = pipeline_copy(tmp_path / "a")
    run([DVC, "remote", "add", "-d", "storage", url], a)
    run([DVC, "remote", "modify", "storage", "verify", "true"], a)  # hash what comes back from the remote
    for args in config:
        run([DVC, "remote", "modify", "--local", "storage", *args], a)
    run([DVC, "repro"], a)
    run(["git", "add", "-A"], a)
    run(["git", "commit", "-qm", "caches and policy"], a)
    run([DVC, "push"], a)
    return a


def pulled_clone(a: Path, dst: Path, config: list[list[str]] = ()) -> Path:
    run(["git", "clone", "-q", str(a), str(dst)], dst.parent)
    for args in config:  # per-machine settings (a key file) live in .dvc/config.local, not in git
        run([DVC, "remote", "modify", "--local", "storage", *args], dst)
    return dst


def the_remote_flow(tmp_path: Path, url: str, config: list[list[str]] = ()) -> None:
    a = made_and_pushed(tmp_path, url, config)
    b = pulled_clone(a, tmp_path / "b", config)
    run([DVC, "pull"], b)
    assert dvc_outputs(b) == dvc_outputs(a)
    assert stale(run([DVC, "status"], b)) == set() and ran(run([DVC, "repro"], b)) == []  # nothing recomputes
    out = run([DVC, "exp", "run", "-n", "lr-1e-3", "-S", "train.lr=0.001"], b)
    assert ran(out) == ["train", "evaluate"]  # trained on the pulled caches: features not recomputed
    run([DVC, "exp", "push", "origin", "lr-1e-3"], b)  # its git refs to A, its outputs to the remote
    c = pulled_clone(a, tmp_path / "c", config)  # another person
    run([DVC, "exp", "pull", "origin", "lr-1e-3"], c)
    shown = run([DVC, "exp", "show", "--json"], c)
    assert "lr-1e-3" in shown and '"lr": 0.001' in shown.replace(" ", "").replace('"lr":0.001', '"lr": 0.001')


def test_a_local_directory_remote(tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    the_remote_flow(tmp_path, str(remote))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sshd(tmp_path):
    """sshd on a loopback port with throwaway host and user keys (as this user); skipped, with
    the reason, where it cannot start."""
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(binary):
        pytest.skip("no sshd here (Debian: apt-get install openssh-server; .ci/run installs it)")
    d = tmp_path / "ssh"
    d.mkdir()
    for name in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "user.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        f"StrictModes no\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # its privilege separation directory
    proc = subprocess.Popen([binary, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"sshd did not start: {proc.stderr.read()[-300:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.skip("sshd did not listen within 10 s")
    yield {"port": port, "key": d / "user"}
    proc.kill()
    proc.wait()


def test_an_ssh_remote(tmp_path, sshd):
    import getpass

    remote = tmp_path / "ssh-remote"
    remote.mkdir()
    url = f"ssh://{getpass.getuser()}@127.0.0.1:{sshd['port']}{remote}"
    config = [["keyfile", str(sshd["key"])]]  # (dvc-ssh does not check host keys: sshfs sets known_hosts=None)
    the_remote_flow(tmp_path, url, config)
    assert any(remote.rglob("*")), "nothing arrived at the SSH remote"


def test_an_interrupted_pull_recovers_and_an_altered_remote_is_caught(tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    a = made_and_pushed(tmp_path, str(remote))
    # interrupted: killed as soon as the first object lands, then rerun
    d = pulled_clone(a, tmp_path / "d")
    proc = subprocess.Popen([DVC, "pull", "--jobs", "1"], cwd=d, env=env_for(d), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = d / ".dvc" / "cache" / "files"
    while proc.poll() is None and not (cache.exists() and any(p.is_file() for p in cache.rglob("*"))):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run([DVC, "pull"], d)
    assert dvc_outputs(d) == dvc_outputs(a) and stale(run([DVC, "status"], d)) == set()
    # altered on the remote after the push: the bytes no longer match their hash
    objects = sorted(p for p in remote.rglob("*") if p.is_file() and not p.name.endswith(".dir"))
    victim = max(objects, key=lambda p: p.stat().st_size)
    victim.write_bytes(b"altered" + victim.read_bytes()[7:])
    e = pulled_clone(a, tmp_path / "e")
    r = subprocess.run([DVC, "pull"], cwd=e, env=env_for(e), capture_output=True, text=True)
    assert r.returncode != 0 and "failed to pull" in r.stderr, r.stdout + r.stderr
    assert stale(run([DVC, "status"], e)), "a clone whose pull failed must not look complete"
    expected, got = dvc_outputs(a), dvc_outputs(e)
    assert set(got) < set(expected)  # the altered object was refused, not checked out ...
    assert all(got[k] == expected[k] for k in got)  # ... and nothing in the workspace is wrong
    # why README sets `verify true`: without it the altered bytes are checked out, silently
    g = pulled_clone(a, tmp_path / "g")
    run([DVC, "remote", "modify", "--local", "storage", "verify", "false"], g)
    run([DVC, "pull"], g)
    assert stale(run([DVC, "status"], g)) == set() and dvc_outputs(g) != expected


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to pull as another uid")
def test_pulled_files_belong_to_the_user_who_pulled_them():
    """As `nobody` (DVC needs a passwd entry for the uid), into a clone that user owns."""
    import tempfile

    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if subprocess.run([*as_nobody, "test", "-r", DVC]).returncode != 0:  # e.g. a checkout under `mktemp -d` (0700)
        pytest.skip(f"uid 65534 cannot read {DVC}: a folder above this checkout is private to its owner")

    base = Path(tempfile.mkdtemp(prefix="hsa-remote-"))  # pytest's tmp_path is private to root
    try:
        base.chmod(0o755)
        remote = base / "remote"
        remote.mkdir()
        a = made_and_pushed(base, str(remote))
        subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
        f = base / "f"
        run(["git", "clone", "-q", str(a), str(f)], base)
        home = base / "home"
        home.mkdir()
        subprocess.run(["chown", "-R", "65534:65534", str(f), str(home)], check=True)
        r = subprocess.run([*as_nobody, DVC, "pull"], cwd=f,
                           env={**env_for(f), "HOME": str(home)}, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        pulled = [*(f / "outputs").rglob("*"), *(f / "data").rglob("*"), *(f / ".dvc" / "cache").rglob("*")]
        assert len(pulled) > 10 and {p.stat().st_uid for p in pulled} == {65534}
        assert dvc_outputs(f) == dvc_outputs(a)
    finally:
        shutil.rmtree(base, ignore_errors=True)
