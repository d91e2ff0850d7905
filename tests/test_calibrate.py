"""`hsa calibrate` against ground truth: calibration recordings rendered by the touch world
with the X-Trainer preset's rig, whose camera poses and intrinsics the tools must recover;
hand-made PnP cases; the board-free check; params.yaml edited in place, never half-way."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import REPO
from hsa_pipeline.config import load_params
from hsa_pipeline.errors import ConfigError, EpisodeError
from hsa_pipeline.geometry.board import BoardSpec
from hsa_pipeline.geometry.calibrate import box_check, run
from hsa_pipeline.geometry.calibration_io import read_marks, rpy_deg, write_params
from hsa_pipeline.geometry.calibration_solvers import pose_error
from hsa_pipeline.geometry.kinematics import rpy_matrix
from hsa_pipeline.geometry.rig import Rig
from hsa_pipeline.world import TouchWorld
from hsa_pipeline.world.calibration import record

PRESET = REPO / "presets" / "xtrainer.yaml"
BOARD = "5x4,0.04,0.03,DICT_4X4_50"


def preset(*overrides):
    return load_params(PRESET, list(overrides))


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    p = preset()
    env = TouchWorld(p.world, p.robot, p.sensors, p.cameras)
    d = tmp_path_factory.mktemp("calib")
    spec = BoardSpec.parse(BOARD)
    record(env, "top", "left", spec, 14, 1, d / "top.hdf5", board_on="flange")
    record(env, "right_wrist", "right", spec, 14, 2, d / "wrist.hdf5", board_on="table")
    return p, d


def test_world_camera_from_a_board_on_the_flange_recovers_the_pose(recordings):
    p, d = recordings
    r = run(p, "world-camera", "top", [d / "top.hdf5"], BOARD, arm="left")
    dist, angle = pose_error(r.values["pose"], p.cameras["top"].pose)
    assert dist < 0.005 and angle < 0.5, (dist, angle)
    assert r.rms_px < 1.0 and r.frames_used == 14 and r.frames_skipped == 0


def test_wrist_camera_hand_eye_recovers_the_pose_in_the_flange(recordings):
    p, d = recordings
    r = run(p, "wrist-camera", "right_wrist", [d / "wrist.hdf5"], BOARD)
    dist, angle = pose_error(r.values["pose"], p.cameras["right_wrist"].pose)
    assert dist < 0.005 and angle < 0.5, (dist, angle)
    assert r.rms_px < 1.0


def test_intrinsics_from_board_views(recordings):
    p, d = recordings
    r = run(p, "intrinsics", "right_wrist", [d / "wrist.hdf5"], BOARD)
    K = np.array(r.values["K"])
    assert r.rms_px < 1.0 and (r.values["width"], r.values["height"]) == (640, 480)
    np.testing.assert_allclose(K[[0, 1, 0, 1], [0, 1, 2, 2]], [600, 600, 320, 240], rtol=0.04)


def test_frames_without_the_board_are_skipped_and_counted(recordings, tmp_path):
    from hsa_pipeline.data.episodes import Episode, write_episode

    p, d = recordings
    with Episode(d / "top.hdf5") as ep:
        q = ep.qpos
        imgs = np.stack([ep.frame("top", t) for t in range(len(q))])
    imgs[:3] = 128  # three views where the board was not seen
    write_episode(tmp_path / "gaps.hdf5", q, q, {"top": imgs}, {}, layout="act")
    r = run(p, "world-camera", "top", [tmp_path / "gaps.hdf5"], BOARD, arm="left")
    assert (r.frames_used, r.frames_skipped) == (11, 3)
    with pytest.raises(EpisodeError, match=r"only 0 usable frames .* Check the board definition \(--board\)"):
        run(p, "world-camera", "top", [tmp_path / "gaps.hdf5"], "5x4,0.04,0.03,DICT_6X6_250", arm="left")
    few = np.concatenate([imgs[3:6], imgs[:3]])
    write_episode(tmp_path / "few.hdf5", q[:6], q[:6], {"top": few}, {}, layout="act")
    with pytest.raises(EpisodeError, match=r"only 3 usable frames \(3 without the board"):
        run(p, "world-camera", "top", [tmp_path / "few.hdf5"], BOARD, arm="left")


def test_poorly_conditioned_recordings_warn(recordings, tmp_path):
    from hsa_pipeline.data.episodes import Episode, write_episode

    p, d = recordings
    with Episode(d / "wrist.hdf5") as ep:
        q = ep.qpos[:7]
        imgs = np.stack([ep.frame("right_wrist", t) for t in range(7)])
    write_episode(tmp_path / "seven.hdf5", q, q, {"right_wrist": imgs}, {}, layout="act")
    r = run(p, "wrist-camera", "right_wrist", [tmp_path / "seven.hdf5"], BOARD)
    assert any("only 7 frames" in w for w in r.warnings)


# --------------------------------------------------------------------------- marks (no board)
def test_pnp_from_hand_marked_sensor_centres(demo_dir, tmp_path):
    """10 frames, marks with 2 px noise: the boxes from the found pose sit within 3 px of
    the true ones (95% of box sides; the worst, far from every mark, under 5 px)."""
    from conftest import make_params
    from hsa_pipeline.data.episodes import Episode

    truth = make_params(["synth.enabled=false", f"data.episodes_dir={demo_dir}"])
    rig = Rig(truth.robot, truth.sensors, truth.cameras, 0.0)
    cam = rig.cameras["top"]
    rng = np.random.default_rng(0)
    rows = ["episode,frame,camera,u,v"]
    for e in range(4):
        with Episode(demo_dir / f"episode_{e}.hdf5") as ep:
            geo = rig.episode_geometry(ep.qpos)
        centre = geo.sensor_pose["tactile"][:, :3, 3]
        T = np.linalg.inv(geo.camera_pose["top"][0])
        n = 3 if e < 2 else 2
        for t in np.linspace(1 + e, len(centre) - 5 + e, n).round().astype(int):  # spread out, as a person marks
            u, v = cam.project(T[:3, :3] @ centre[t] + T[:3, 3]) + rng.normal(0, 2.0, 2)
            rows.append(f"episode_{e},{t},top,{u:.2f},{v:.2f}")
    (tmp_path / "marks.csv").write_text("\n".join(rows) + "\n")
    assert len(read_marks(tmp_path / "marks.csv", "top")) == 10
    wrong = make_params(["synth.enabled=false", f"data.episodes_dir={demo_dir}",
                         "cameras.top.pose.xyz=[0.1, -0.9, 0.7]"])  # the start does not matter: PnP from scratch
    r = run(wrong, "world-camera", "top", [], BOARD, marks=tmp_path / "marks.csv")
    found = make_params(["synth.enabled=false", f"data.episodes_dir={demo_dir}",
                         f"cameras.top.pose={r.values['pose']}"])
    with Episode(demo_dir / "episode_2.hdf5") as ep:
        q = ep.qpos
    a = Rig(found.robot, found.sensors, found.cameras).episode_geometry(q).boxes["top"]["tactile"]
    b = rig.episode_geometry(q).boxes["top"]["tactile"]
    err = np.abs(a.box - b.box)
    assert err.mean() < 3.0 and np.percentile(err, 95) < 3.0 and err.max() < 5.0, (err.mean(), err.max())


def test_marks_outside_the_image_or_too_few_are_refused(demo_dir, tmp_path):
    from conftest import make_params

    p = make_params(["synth.enabled=false", f"data.episodes_dir={demo_dir}"])
    (tmp_path / "m.csv").write_text("".join(f"episode_0,{t},top,{100 + t},{50}\n" for t in range(5)))
    with pytest.raises(EpisodeError, match="5 marks for camera 'top'; PnP needs at least 6"):
        run(p, "world-camera", "top", [], BOARD, marks=tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("".join(f"episode_0,{t},top,{100 + t},{50 if t else 900}\n" for t in range(8)))
    with pytest.raises(EpisodeError, match=r"mark \(100.0, 900.0\) of episode_0 frame 0 lies outside the 256x192 image"):
        run(p, "world-camera", "top", [], BOARD, marks=tmp_path / "m.csv")


def test_rpy_round_trips_and_a_reflection_is_not_written():
    from hsa_pipeline.geometry.calibration_io import pose_values

    for rpy in ([10, -20, 30], [-133.15, 0.0, 0.0], [-19.44, 0, 180]):
        R = rpy_matrix(np.deg2rad(rpy))
        np.testing.assert_allclose(rpy_matrix(np.deg2rad(rpy_deg(R))), R, atol=1e-12)
    mirror = np.diag([1.0, 1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="not a proper rotation"):
        pose_values(mirror)


def test_pose_error_against_a_hand_made_offset():
    """3 mm along x and y (4.24 mm) and 0.2 deg of yaw from the truth, worked by hand."""
    truth = load_params(PRESET).cameras["top"].pose
    found = {"xyz": [truth.xyz[0] + 0.003, truth.xyz[1] - 0.003, truth.xyz[2]],
             "rpy_deg": [truth.rpy_deg[0], truth.rpy_deg[1], truth.rpy_deg[2] + 0.2]}
    dist, angle = pose_error(found, truth)
    assert dist == pytest.approx(0.003 * 2**0.5, abs=1e-9) and angle == pytest.approx(0.2, abs=1e-6)


# --------------------------------------------------------------------------- writing params.yaml
def test_write_keeps_comments_and_never_leaves_a_broken_file(recordings, tmp_path):
    from hsa_pipeline.geometry.calibration_io import Result

    p, d = recordings
    target = tmp_path / "params.yaml"
    target.write_text(PRESET.read_text())
    r = run(p, "world-camera", "top", [d / "top.hdf5"], BOARD, arm="left")
    write_params(target, r)
    text = target.read_text()
    assert "# MEASURE: hsa calibrate world-camera" in text and "# Dobot X-Trainer" in text  # comments kept
    assert load_params(target).cameras["top"].pose.xyz == r.values["pose"]["xyz"]
    before = target.read_text()
    bad = Result("top", {"K": [[600.0, 0.0, 900.0], [0.0, 600.0, 240.0], [0.0, 0.0, 1.0]]}, [0.1], 1, 0)
    with pytest.raises(ConfigError, match="principal point"):
        write_params(target, bad)
    assert target.read_text() == before and not list(tmp_path.glob("*.tmp"))


# --------------------------------------------------------------------------- the check
def test_check_flags_a_pose_ten_centimetres_off(demo_dir):
    from conftest import make_params

    good = make_params(["synth.enabled=false", f"data.episodes_dir={demo_dir}"])
    v = box_check(good.data, good.robot, good.sensors, good.cameras, good.geometry.margin_px)
    assert v["top"]["verdict"].startswith("ok") and v["wrist"]["verdict"].startswith("ok")
    off = make_params(["synth.enabled=false", f"data.episodes_dir={demo_dir}", "cameras.top.pose.xyz=[0.1, -0.95, 0.6]"])
    v = box_check(off.data, off.robot, off.sensors, off.cameras, off.geometry.margin_px)
    assert v["top"]["verdict"].startswith("the box misses") and v["top"]["ratio"] < 1.3
    assert v["wrist"]["verdict"].startswith("ok")
    rescaled = make_params(["synth.enabled=false", f"data.episodes_dir={demo_dir}", "cameras.wrist.width=384",
                            "cameras.wrist.height=288"])
    with pytest.raises(ConfigError, match=r"cameras.wrist: calibrated for 384x288 images, but .*episode_0.hdf5 "
                                          r"records 192x144 frames"):
        box_check(rescaled.data, rescaled.robot, rescaled.sensors, rescaled.cameras, rescaled.geometry.margin_px)


def test_the_xtrainer_preset_loads():
    p = preset()
    assert list(p.robot.arms) == ["left", "right"] and p.data.tactile == ["tactile_left", "tactile_right"]
    assert p.data.action_shift == 1 and p.eval.rollouts == 0 and p.act.chunk_size == 45
    assert {c: p.cameras[c].mount for c in p.cameras} == {"top": "world", "left_wrist": "left", "right_wrist": "right"}


def test_the_xtrainer_preset_runs_the_pipeline_on_a_tiny_bimanual_set(tmp_path, monkeypatch):
    """The preset as a user copies it, with only what makes it tiny: two demo episodes of
    the touch world on this rig, a tiny encoder and model, a few steps."""
    import json

    from conftest import TINY_TRAIN, run_stage

    monkeypatch.chdir(tmp_path)
    p = preset(*TINY_TRAIN, "synth.enabled=true", "synth.episodes=3", "data.episodes_dir=data/demo/episodes",
               "data.action_shift=0", "data.min_length=5", "data.train_ratio=0.67", "world.frames_per_touch=12",
               "world.max_joint_speed_deg=360", "features.model=hsa-tiny-vit", "features.pretrained=null",
               "act.chunk_size=5", "train.steps=4", "train.val_every=4", "eval.rollouts=1", "eval.max_steps=4",
               "eval.report_frames=1")
    for name in ("synth", "prepare", "geometry", "features", "train", "evaluate"):
        run_stage(name, p)
    m = json.loads((tmp_path / "outputs/eval/metrics.json").read_text())
    assert {"tactile_left_to_wrist", "tactile_right_to_wrist"} <= set(m["alignment"]["next_contact"])
    assert m["closed_loop"]["rollouts"] == 1
    geo = json.loads((tmp_path / "outputs/prepare/episodes.json").read_text())
    assert geo["qpos_dim"] == 14 and geo["cameras"]["left_wrist"]["shape"] == [480, 640]
