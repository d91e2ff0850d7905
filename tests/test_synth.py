"""The demo world: deterministic, readable by the project's reader, and honest: the
sensor drawn in the pixels lies inside the box the geometry code computes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from conftest import demo_rig, make_params
from hsa_pipeline.episodes import Episode
from hsa_pipeline.synth import PAD_RGB, object_texture, render_episode, tactile_image


@pytest.fixture(scope="module")
def rendered():
    p = make_params()
    rig = demo_rig(p)
    return p, rig, [render_episode(p.synth, rig, i) for i in range(3)]


def synth_to(p, out):
    from hsa_pipeline.synth import run_synth

    return run_synth(p.synth, p.robot, p.sensors, p.cameras, out)


def test_generator_is_deterministic_for_a_seed(tmp_path):

    a = synth_to(make_params(["synth.episodes=2"]), tmp_path / "a")
    b = synth_to(make_params(["synth.episodes=2"]), tmp_path / "b")
    c = synth_to(make_params(["synth.episodes=2", "synth.seed=1"]), tmp_path / "c")
    digest = lambda d: [hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir())]  # noqa: E731
    with Episode(a / "episode_0.hdf5") as x, Episode(b / "episode_0.hdf5") as y, Episode(c / "episode_0.hdf5") as z:
        np.testing.assert_array_equal(x.qpos, y.qpos)
        np.testing.assert_array_equal(x.frame("top", 5), y.frame("top", 5))
        assert not np.array_equal(x.qpos, z.qpos)
    assert len(digest(a)) == 2


def test_demo_reads_back_through_the_episode_reader(demo_dir):
    files = sorted(demo_dir.glob("*.hdf5"))
    assert len(files) == 4
    with Episode(files[0]) as ep:
        assert ep.layout == "xtrainer"
        T = len(ep.qpos)
        assert T == 1 + 2 * 12 and ep.qpos.shape[1] == 7
        np.testing.assert_allclose(ep.action[:-1], ep.qpos[1:], atol=1e-6)  # action = next commanded qpos
        assert ep.frame("top", 0).shape == (192, 256, 3) and ep.frame("wrist", 0).shape == (144, 192, 3)
        assert ep.frame("tactile", T - 1).shape == (96, 96, 3)


def test_act_layout_option(tmp_path):

    out = synth_to(make_params(["synth.episodes=2", "synth.layout=act"]), tmp_path)
    with Episode(out / "episode_1.hdf5") as ep:
        assert ep.layout == "act" and not ep.stream("top").compressed


def test_joints_are_smooth_and_within_limits(rendered):
    p, rig, eps = rendered
    arm = rig.arms["arm"]
    for ep in eps:
        q = ep["qpos"][:, :6]
        assert not arm.check_limits(q)
        assert np.abs(np.diff(q, axis=0)).max() < 0.5  # rad per frame: no branch flips


def test_drawn_sensor_pad_lies_inside_the_geometry_box(rendered):
    """Pixels of the bare pad's colour appear only inside the box, in both cameras."""
    p, rig, eps = rendered
    counted = {"top": 0, "wrist": 0}
    for ep in eps:
        geo = rig.episode_geometry(ep["qpos"], margin_px=1.0)  # 1 px for polygon rasterisation
        for cam in ("top", "wrist"):
            for t in np.nonzero(ep["contact_class"]["tactile"] < 0)[0]:
                img = ep["images"][cam][t].astype(int)
                pad = (np.abs(img - PAD_RGB) <= 6).all(axis=-1)
                ys, xs = np.nonzero(pad)
                b = geo.boxes[cam]["tactile"].box[t]
                assert geo.boxes[cam]["tactile"].visible[t]
                assert ((xs >= b[0]) & (xs < b[2]) & (ys >= b[1]) & (ys < b[3])).all(), (cam, t)
                counted[cam] += len(xs)
    assert counted["wrist"] > 1000 and counted["top"] > 50  # the pad really is drawn


def test_pad_shows_the_touched_texture_while_pressing(rendered):
    p, rig, eps = rendered
    ep = eps[0]
    geo = rig.episode_geometry(ep["qpos"], margin_px=0.0)
    t = int(np.nonzero(ep["contact_class"]["tactile"] >= 0)[0][1])
    b = geo.boxes["wrist"]["tactile"].box[t].astype(int)
    x0, y0, x1, y1 = b[0] + 4, b[1] + 4, b[2] - 4, b[3] - 4
    inside = ep["images"]["wrist"][t][y0:y1, x0:x1].reshape(-1, 3).mean(0)
    tex = object_texture(int(ep["contact_class"]["tactile"][t])).reshape(-1, 3).mean(0)
    assert np.abs(inside - tex).max() < 25
    assert np.abs(inside - PAD_RGB).max() > 25


def test_tactile_is_blank_without_contact_and_differs_between_classes():
    rng = np.random.default_rng(0)
    blank = [tactile_image(None, 0.0, 64, rng).astype(float) for _ in range(2)]
    assert np.abs(blank[0] - blank[1]).mean() < 3  # only sensor noise
    imprints = [tactile_image(c, 1.0, 64, rng).astype(float) for c in range(12)]
    for c in range(12):
        assert np.abs(imprints[c] - blank[0]).mean() > 3
        for d in range(c):
            assert np.abs(imprints[c] - imprints[d]).mean() > 2, (c, d)
    textures = [object_texture(c).astype(float) for c in range(12)]
    assert min(np.abs(a - b).mean() for i, a in enumerate(textures) for b in textures[:i]) > 10


def test_tactile_frames_follow_contact_in_the_episode(rendered):
    _, _, eps = rendered
    ep = eps[1]
    tac = ep["tactile"]["tactile"].astype(float)
    rest = tac[ep["contact_class"]["tactile"] < 0]
    ref = np.median(rest, axis=0)
    dist = np.abs(tac - ref).mean(axis=(1, 2, 3))
    assert dist[ep["contact_class"]["tactile"] >= 0].min() > 3 * dist[ep["contact_class"]["tactile"] < 0].max()


def test_bimanual_option_renders_both_arms_and_both_sensors(tmp_path):
    from conftest import bimanual_params

    p = bimanual_params()
    rig = demo_rig(p)
    ep = render_episode(p.synth, rig, 0)
    assert ep["qpos"].shape[1] == 14 and set(ep["tactile"]) == {"tactile_left", "tactile_right"}
    geo = rig.episode_geometry(ep["qpos"], margin_px=1.0)
    for side in ("left", "right"):
        sensor, cam = f"tactile_{side}", f"{side}_wrist"
        assert (ep["contact_class"][sensor] >= 0).sum() >= 2  # each arm presses its own tiles
        for t in np.nonzero(ep["contact_class"][sensor] < 0)[0][::3]:
            ys, xs = np.nonzero((np.abs(ep["images"][cam][t].astype(int) - PAD_RGB) <= 6).all(-1))
            b = geo.boxes[cam][sensor].box[t]
            assert len(xs) > 100 and ((xs >= b[0]) & (xs < b[2]) & (ys >= b[1]) & (ys < b[3])).all()
    out = tmp_path / "bi"
    from hsa_pipeline.synth import run_synth

    p.synth.episodes = 2
    run_synth(p.synth, p.robot, p.sensors, p.cameras, out)
    with Episode(out / "episodes" / "episode_0.hdf5") as f:
        assert f.qpos.shape[1] == 14 and f.frame("right_wrist", 3).shape == (144, 192, 3)
        assert f.frame("tactile_right", 0).shape == (96, 96, 3)
