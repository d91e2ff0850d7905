"""Contact read from the touch itself, and the next-contact positives built on it.

The truth in these tests is what the recordings were made to contain: tactile images
rendered in contact exactly on the frames a test says, and sensor paths (by inverse
kinematics) whose LOWEST height is not where the touch is: a press on a raised object
and one on the table, a low pass over the table without touching, a claw that squeezes
its probe in mid-air, an episode that never touches. Kinematics alone (the old rule, and
now the `contact: kinematics` fallback) gets each of them wrong; the touch gets them right.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import REPO, make_params
from hsa_pipeline.config import ContactConfig, preset_overrides
from hsa_pipeline.data.contact import drop_short, hysteresis, next_change, runs, start_look, thumbnail, trace
from hsa_pipeline.data.episodes import write_episode
from hsa_pipeline.data.manifest import Manifest
from hsa_pipeline.data.prepare import run_prepare
from hsa_pipeline.data.stores import GeometryStore
from hsa_pipeline.geometry.compute import run_geometry
from hsa_pipeline.world.ik import ArmIK
from hsa_pipeline.world.render import tactile_image


# --------------------------------------------------------------------------- the rules, by hand
def test_hysteresis_enters_above_enter_and_leaves_below_exit():
    score = np.array([0.0, 0.03, 0.015, 0.015, 0.005, 0.015, 0.025, 0.0])
    # on at 0.03; stays on at 0.015 (>= exit 0.01); off at 0.005; 0.015 alone does not re-enter
    assert hysteresis(score, enter=0.02, exit=0.01).tolist() == [0, 1, 1, 1, 0, 0, 1, 0]


def test_short_runs_and_gaps_are_dropped():
    flags = np.array([0, 1, 0, 0, 1, 1, 0, 1, 1, 1, 0], bool)
    # the 1-frame gap at 6 is filled (inside contact), then the lone frame 1 is dropped
    assert drop_short(flags, 2).astype(int).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0]
    assert runs(np.array([1, 1, 0, 1], bool)) == [(0, 2), (3, 4)]


def test_next_change_points_at_the_next_touch_then_at_its_release():
    contact = np.array([0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0], bool)
    # approaching: the first frame of the coming contact; in contact: its last frame
    assert next_change(contact).tolist() == [2, 2, 4, 4, 4, 7, 7, 8, 8, -1, -1]
    assert next_change(np.zeros(5, bool)).tolist() == [-1] * 5  # never touches: nothing to point at
    assert next_change(np.array([1, 1, 0], bool)).tolist() == [1, 1, -1]


def test_long_contact_keeps_its_reference():
    """The defect this guards: the reference was the median over all frames, so an episode
    in contact most of the time made the contact image the 'no contact' look."""
    rng = np.random.default_rng(0)
    truth = np.zeros(40, bool)
    truth[4:36] = True  # 80% of the episode in contact
    frames = np.stack([tactile_image(2 if t else None, 0.7, 96, rng) for t in truth])
    thumbs = np.stack([thumbnail(f) for f in frames])
    cfg = ContactConfig()
    got = trace(thumbs, start_look(thumbs, cfg), cfg)
    assert got.contact.tolist() == truth.tolist()
    old_reference = np.median(thumbs, axis=0)  # what the median over the stream gives
    old = np.abs(thumbs - old_reference).mean(axis=(1, 2, 3)) / 255 > cfg.enter
    assert old[~truth].all() and not old[truth].any()  # inverted


# --------------------------------------------------------------------------- recordings
def sensor_path(p, points: list[tuple[float, float, float]], gripper: float = 0.3) -> np.ndarray:
    """qpos (T, 7) that put the demo rig's sensor at each (x, y, z) in turn (pointing down)."""
    from hsa_pipeline.geometry.rig import Rig

    rig = Rig(p.robot, p.sensors, p.cameras)
    ik = ArmIK(rig, "arm", "tactile")
    q = np.zeros((len(points), 7))
    for t, xyz in enumerate(points):
        q[t, :6] = ik.solve(*xyz)
        q[t, 6] = gripper
    return q


def record(path, p, points, touching: list[bool], cls: int = 3) -> None:
    """One episode (X-Trainer layout): the sensor along `points`, its tactile image showing
    class `cls` exactly on the frames `touching` says; plain camera frames."""
    rng = np.random.default_rng(len(points))
    T = len(points)
    qpos = sensor_path(p, points)
    images = {c: np.full((T, p.cameras[c].height, p.cameras[c].width, 3), 90, np.uint8) for c in p.data.cameras}
    tactile = {"tactile": np.stack([tactile_image(cls if on else None, 0.8, 96, rng) for on in touching])}
    write_episode(path, qpos, qpos.copy(), images, tactile)


def hover_touch(segments: list[tuple[float, bool, int]], x: float = 0.0, y: float = -0.45):
    """(height, touching, frames) segments -> per-frame points and touch flags."""
    points = [(x + 0.001 * i, y, z) for i, (z, _, n) in enumerate(segments) for _ in range(n)]
    touching = [on for z, on, n in segments for _ in range(n)]
    return points, touching


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Three episodes, prepared and their geometry computed, with contact from touch and
    (a second store) from kinematics."""
    root = tmp_path_factory.mktemp("contact")
    eps = root / "episodes"
    eps.mkdir()
    p = make_params([f"data.episodes_dir={eps}", "synth.enabled=false", "data.min_length=5", "act.chunk_size=4",
                     "data.train_ratio=1.0"])
    cases = {
        # a press on an object 5 cm high, then one on the table: two touches at two heights
        "two_heights": hover_touch([(0.15, False, 5), (0.05, True, 5), (0.15, False, 5), (0.0, True, 5),
                                    (0.15, False, 5)]),
        # a low pass over the table (5 mm) without touching, then a press on an object 3 cm high
        "low_pass": hover_touch([(0.15, False, 5), (0.005, False, 5), (0.15, False, 5), (0.03, True, 5),
                                 (0.15, False, 5)]),
        # down to the table and back without ever touching anything
        "no_contact": hover_touch([(0.15, False, 5), (0.0, False, 5), (0.15, False, 5)]),
    }
    for name, (points, touching) in cases.items():
        record(eps / f"episode_{name}.hdf5", p, points, touching)
    run_prepare(p.data, p.act.chunk_size, root / "prepare")
    run_geometry(p.robot, p.sensors, p.cameras, p.geometry, root / "prepare", root / "touch.zarr")
    k = make_params([f"data.episodes_dir={eps}", "synth.enabled=false", "sensors.tactile.contact=kinematics"])
    run_geometry(k.robot, k.sensors, k.cameras, k.geometry, root / "prepare", root / "kinematics.zarr")
    return root, {name: np.array(t) for name, (_, t) in cases.items()}


def per_episode(store: GeometryStore, manifest: Manifest, array: np.ndarray) -> dict[str, np.ndarray]:
    return {e.id.removeprefix("episode_"): array[manifest.offsets[i]: manifest.offsets[i + 1]]
            for i, e in enumerate(manifest.episodes)}


def test_prepare_reads_contact_from_the_touch(recorded):
    root, truth = recorded
    contact = json.loads((root / "prepare" / "contact.json").read_text())["tactile"]
    for name, flags in truth.items():
        assert contact[f"episode_{name}"]["contact"] == flags.astype(int).tolist(), name


def test_geometry_stores_the_touch_and_points_where_it_next_changes(recorded):
    root, truth = recorded
    store, manifest = GeometryStore(root / "touch.zarr"), Manifest.load(root / "prepare")
    assert store.info.contact_sources == {"tactile": "touch"}
    contact = per_episode(store, manifest, store.contact[:, 0])
    nxt_visible = per_episode(store, manifest, store.cam["top"]["next_visible"][:, 0])
    nxt_box = per_episode(store, manifest, store.cam["top"]["next_box"][:, 0])
    box_now = per_episode(store, manifest, store.cam["top"]["box"][:, 0])
    for name, flags in truth.items():
        assert contact[name].tolist() == flags.tolist(), name
        target = next_change(flags)
        assert nxt_visible[name].tolist() == (target >= 0).tolist(), name
        for t in np.flatnonzero(target >= 0):
            # the top camera is fixed in the world: the box of where the touch changes, seen
            # now, is the box the sensor has at that frame
            np.testing.assert_allclose(nxt_box[name][t], box_now[name][target[t]], atol=1e-4)


def test_kinematics_alone_gets_these_recordings_wrong(recorded):
    """The fallback's rule (within press_tolerance_m of the lowest height) on the same
    episodes: it misses the raised press, takes the low pass for a touch and finds a
    'press' in the episode that never touches."""
    root, truth = recorded
    store, manifest = GeometryStore(root / "kinematics.zarr"), Manifest.load(root / "prepare")
    assert store.info.contact_sources == {"tactile": "kinematics"}
    contact = per_episode(store, manifest, store.contact[:, 0])
    assert not contact["two_heights"][5:10].any() and contact["two_heights"][15:20].all()
    assert contact["low_pass"][5:10].all() and not contact["low_pass"][15:20].any()
    assert contact["no_contact"].any()


def test_an_episode_without_contact_gets_no_positive(recorded):
    root, _ = recorded
    store, manifest = GeometryStore(root / "touch.zarr"), Manifest.load(root / "prepare")
    for cam in ("top", "wrist"):
        assert not per_episode(store, manifest, store.cam[cam]["next_visible"][:, 0])["no_contact"].any()


def test_exit_above_enter_is_refused():
    from hsa_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="data.contact.exit: 0.05 is above data.contact.enter 0.02"):
        make_params(["data.contact.exit=0.05"])
    with pytest.raises(ConfigError, match="data.contact_threshold: renamed; use data.contact.enter"):
        make_params(["data.contact_threshold=0.02"])
    with pytest.raises(ConfigError, match="hsa.tp_weight: renamed; use hsa.third_person_weight"):
        make_params(["hsa.tp_weight=0.5"])


# --------------------------------------------------------------------------- the claw
def test_the_claw_squeezes_at_any_height_and_its_positives_follow_the_probe(tmp_path):
    """A pad in a claw (presets/touch-world/claw.yaml): recorded by the world's expert,
    prepared and its geometry computed from the files. Contact read from the touch equals
    the world's truth (the probe squeezed: from the grasp, through the carry in mid-air,
    to the release); before the grasp the positive holds the probe, while carrying it holds
    the tile the probe goes to."""
    from hsa_pipeline.world import TouchWorld
    from hsa_pipeline.world.synth import record_episode, scene_seed

    p = make_params(preset_overrides(REPO / "presets/touch-world/claw.yaml")
                    + [f"data.episodes_dir={tmp_path / 'eps'}", "synth.enabled=false", "data.train_ratio=1.0"])
    env = TouchWorld(p.world, p.robot, p.sensors, p.cameras, max_steps=10**6)
    (tmp_path / "eps").mkdir()
    worlds = []
    for i in range(2):
        ep = record_episode(env, scene_seed("train", 3, i))
        assert ep["success"]
        task = env.tasks[0]
        worlds.append((ep, task.tiles[task.probe], task.tiles[task.targets[0]]))
        write_episode(tmp_path / "eps" / f"episode_{i}.hdf5", ep["qpos"], ep["action"], ep["images"], ep["tactile"])
    run_prepare(p.data, p.act.chunk_size, tmp_path / "prepare")
    run_geometry(p.robot, p.sensors, p.cameras, p.geometry, tmp_path / "prepare", tmp_path / "g.zarr")
    store, manifest = GeometryStore(tmp_path / "g.zarr"), Manifest.load(tmp_path / "prepare")
    top = env.rig.cameras["top"]
    T_cam = np.linalg.inv(top.world_poses({}, 1)[0])
    for i, (ep, probe, goal) in enumerate(worlds):
        rows = slice(manifest.offsets[i], manifest.offsets[i + 1])
        felt = ep["felt_class"]["tactile"] >= 0
        assert store.contact[rows, 0].tolist() == felt.tolist()
        height = store.sensor_pose[rows, 0, 2, 3]
        assert height[felt].max() > height.min() + 0.05  # it touches in mid-air too: not a lowest-height rule
        box = store.cam["top"]["next_box"][rows, 0]
        for place, frames in ((probe, np.flatnonzero(~felt)[: np.argmax(felt)]), (goal, np.flatnonzero(felt))):
            u, v = top.project((T_cam @ [place.x, place.y, 0.02, 1.0])[None, :3])[0]
            x0, y0, x1, y1 = box[frames].T
            assert ((x0 <= u) & (u <= x1) & (y0 <= v) & (v <= y1)).all()
