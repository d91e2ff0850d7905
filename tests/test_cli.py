"""The `hsa` command as a user runs it (a real subprocess)."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image

from conftest import REPO


def hsa(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "hsa_pipeline.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_help_lists_every_stage_and_tool():
    out = hsa("--help").stdout
    for name in ("synth", "prepare", "geometry", "features", "train", "evaluate", "preview", "check-params", "params-doc",
                 "serve", "sync-deps", "rollout", "calibrate", "apply-preset"):
        assert name in out


def test_bad_override_is_one_line_and_exit_1():
    r = hsa("check-params", "--set", "hsa.temperature=-1")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "hsa.temperature: must be > 0.0, got -1" in r.stderr
    assert hsa("check-params", "--set", "hsa.weight=1.5").returncode == 0


def test_apply_preset_writes_the_presets_keys_into_params_and_keeps_the_rest(tmp_path):
    import shutil

    import yaml

    from conftest import make_params
    from hsa_pipeline.config import params_from_dict, preset_overrides

    preset = REPO / "presets" / "aloha-sim" / "insertion.yaml"
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    r = hsa("apply-preset", str(preset), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    written = params_from_dict(yaml.safe_load((tmp_path / "params.yaml").read_text()))
    assert written == make_params(preset_overrides(preset), base=[])
    assert written.world.kind == "aloha" and written.robot.arms["right"].model == "vx300s"
    assert written.features == make_params(base=[]).features  # a key the preset does not name: kept
    r = hsa("apply-preset", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert r.returncode == 1 and "preset not found" in r.stderr and "Traceback" not in r.stderr


def test_stage_with_missing_data_fails_clearly(tmp_path):
    r = hsa("prepare", "--set", f"data.episodes_dir={tmp_path}/nothing", "--set", "synth.enabled=false")
    assert r.returncode == 1 and "episode directory not found" in r.stderr and "Traceback" not in r.stderr


def test_preview_draws_boxes_on_demo_frames(demo_dir, tmp_path):
    r = hsa("preview", str(demo_dir / "episode_0.hdf5"), "--out", str(tmp_path), "--frames", "3")
    assert r.returncode == 0, r.stderr
    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.width == 3 * 256
    pngs = sorted(tmp_path.glob("episode_0_wrist_*.png"))
    assert len(pngs) == 3
    img = __import__("numpy").asarray(Image.open(pngs[0])).astype(int)
    assert ((img[..., 0] > 200) & (img[..., 1] < 80) & (img[..., 2] < 80)).sum() > 50  # the red box


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    import pytest

    import stages.prepare
    from hsa_pipeline.errors import EpisodeError, TrainingDiverged
    from stages import run_stage

    for err in (EpisodeError("ep.hdf5: /action frame 3 column 2 is nan"), TrainingDiverged("loss term 'kl' is nan")):
        monkeypatch.setattr(stages.prepare, "run", lambda p, err=err: (_ for _ in ()).throw(err))
        with pytest.raises(SystemExit) as exit_:
            run_stage("prepare", REPO / "params.yaml")
        assert exit_.value.code == 1
        assert capsys.readouterr().err == f"hsa prepare: error: {err}\n"

    def bug(p):
        return {}["no such key"]

    monkeypatch.setattr(stages.prepare, "run", bug)
    with pytest.raises(KeyError):  # not swallowed into one line
        run_stage("prepare", REPO / "params.yaml")
