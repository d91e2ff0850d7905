"""The geometry stage on the tiny demo: a small store whose values are the rig's."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import demo_rig, make_params
from hsa_pipeline.data.episodes import Episode, write_episode
from hsa_pipeline.data.manifest import Manifest
from hsa_pipeline.data.prepare import run_prepare
from hsa_pipeline.data.stores import GeometryStore
from hsa_pipeline.errors import EpisodeError
from hsa_pipeline.geometry.compute import run_geometry


def geometry(p, prepare_dir, out):
    return run_geometry(p.robot, p.sensors, p.cameras, p.geometry, prepare_dir, out)


@pytest.fixture(scope="module")
def stores(demo_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("geo")
    p = make_params([f"data.episodes_dir={demo_dir}", "synth.enabled=false"])
    run_prepare(p.data, p.act.chunk_size, tmp / "prepare")
    geometry(p, tmp / "prepare", tmp / "geometry.zarr")
    return p, tmp


def test_store_matches_the_rig_per_episode(stores):
    p, tmp = stores
    store = GeometryStore(tmp / "geometry.zarr")
    m = Manifest.load(tmp / "prepare")
    rig = demo_rig(p)
    assert store.sensors == ["tactile"] and store.cameras == ["top", "wrist"]
    assert store.sensor_pose.shape == (m.n_frames, 1, 4, 4)
    for e, ep in enumerate(m.episodes):
        with Episode(m.path(ep)) as f:
            geo = rig.episode_geometry(f.qpos)
        rows = slice(m.offsets[e], m.offsets[e + 1])
        np.testing.assert_allclose(store.sensor_pose[rows, 0], geo.sensor_pose["tactile"])
        for cam in ("top", "wrist"):
            np.testing.assert_allclose(store.cam[cam]["box"][rows, 0], geo.boxes[cam]["tactile"].box)
            np.testing.assert_array_equal(store.cam[cam]["visible"][rows, 0], geo.boxes[cam]["tactile"].visible)
    assert store.attrs["offsets"] == m.offsets.tolist()
    assert store.attrs["column_names"] == ["arm.j1", "arm.j2", "arm.j3", "arm.j4", "arm.j5", "arm.j6", "arm.gripper"]


def test_store_is_a_handful_of_files_and_its_fingerprint_follows_its_content(stores, tmp_path):
    p, tmp = stores
    files = [f for f in (tmp / "geometry.zarr").rglob("*") if f.is_file()]
    assert len(files) <= 2 * (3 + 2 * 7) + 3  # metadata + a chunk per array (pose, contact, next_row, 7 a camera), 3 groups
    same = geometry(p, tmp / "prepare", tmp_path / "same.zarr")
    assert same["fingerprint"] == GeometryStore(tmp / "geometry.zarr").fingerprint
    wider = geometry(make_params([f"data.episodes_dir={p.data.episodes_dir}", "synth.enabled=false",
                                  "geometry.margin_px=7.0"]), tmp / "prepare", tmp_path / "wider.zarr")
    assert wider["fingerprint"] != same["fingerprint"]


def test_too_narrow_qpos_is_named(stores, tmp_path):
    p, tmp = stores
    p2 = make_params([f"data.episodes_dir={p.data.episodes_dir}", "synth.enabled=false", "robot.arms.arm.qpos_start=3"])
    with pytest.raises(EpisodeError, match="qpos has 7 columns; the arms in robot.arms need 9"):
        geometry(p2, tmp / "prepare", tmp_path / "g.zarr")
    assert not (tmp_path / "g.zarr").exists()


def test_a_camera_recorded_at_another_size_than_calibrated_is_named(stores, tmp_path):
    """The defect this guards: boxes were computed in the calibrated size and mapped onto
    tokens of the recorded size, silently landing on the wrong tokens."""
    from hsa_pipeline.errors import ConfigError

    p, tmp = stores
    p2 = make_params([f"data.episodes_dir={p.data.episodes_dir}", "synth.enabled=false", "cameras.top.width=320",
                      "cameras.top.height=240"])
    with pytest.raises(ConfigError, match=r"cameras.top: calibrated for 320x240 images, but the episodes record "
                                          r"256x192 frames .*fx and cx x 0.8, fy and cy x 0.8"):
        geometry(p2, tmp / "prepare", tmp_path / "g.zarr")
    assert not (tmp_path / "g.zarr").exists()


@pytest.fixture
def past_the_limit(stores, tmp_path):
    """A copy of demo episode 0 whose joint 3 goes to 170 deg (limit 160) in frames 2 and 3."""
    p, _ = stores
    src = p.data.episodes_dir + "/episode_0.hdf5"
    with Episode(src) as ep:
        qpos, action = ep.qpos, ep.action
        n = len(qpos)
        images = {c: np.stack([ep.frame(c, t) for t in range(n)]) for c in ("top", "wrist")}
        tactile = {"tactile": np.stack([ep.frame("tactile", t) for t in range(n)])}
    qpos[2:4, 2] = np.deg2rad(170)
    d = tmp_path / "limits"
    d.mkdir()
    write_episode(d / "episode_0.hdf5", qpos, action, images, tactile)
    write_episode(d / "episode_1.hdf5", qpos, action, images, tactile)
    q = make_params([f"data.episodes_dir={d}", "synth.enabled=false"])
    run_prepare(q.data, q.act.chunk_size, tmp_path / "prepare")
    return d, tmp_path / "prepare"


def test_limit_violations_warn_and_are_recorded(past_the_limit, tmp_path, capsys):
    d, prepared = past_the_limit
    summary = geometry(make_params([f"data.episodes_dir={d}", "synth.enabled=false"]), prepared, tmp_path / "w.zarr")
    (msg,) = [v for v in summary["limit_violations"] if "episode_0" in v]
    assert "arm 'arm' joint 3: 2 frames outside the limits (first at frame 2, worst 10.0 deg" in msg
    recorded = GeometryStore(tmp_path / "w.zarr").info.limit_violations  # through the reader
    assert [r.split(": ")[0].rsplit("/", 1)[1] for r in recorded] == ["episode_0.hdf5", "episode_1.hdf5"]
    assert all("joint 3: 2 frames outside the limits" in r for r in recorded)
    assert "warning:" in capsys.readouterr().err


def test_limit_warnings_past_the_first_episodes_are_summed_per_joint(past_the_limit, tmp_path, capsys, monkeypatch):
    """The ALOHA study printed 83 warnings for 50 episodes: past the first episodes' lines,
    one line per joint sums them (here with one line shown, of the two episodes' 2 frames each)."""
    from hsa_pipeline.geometry import compute

    monkeypatch.setattr(compute, "SHOWN_VIOLATIONS", 1)
    d, prepared = past_the_limit
    summary = geometry(make_params([f"data.episodes_dir={d}", "synth.enabled=false"]), prepared, tmp_path / "w.zarr")
    assert len(summary["limit_violations"]) == 2  # the store keeps every episode's line
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "episode_0.hdf5: arm 'arm' joint 3: 2 frames" in warnings[0], warnings
    assert warnings[1].startswith("warning: arm 'arm' joint 3: outside the limits in 2 episodes (4 frames in all, "
                                  "worst 10.0 deg past the limit)"), warnings


def test_limit_violations_fail_in_error_mode_and_leave_no_store(past_the_limit, tmp_path):
    d, prepared = past_the_limit
    strict = make_params([f"data.episodes_dir={d}", "synth.enabled=false", "robot.arms.arm.on_limit_violation=error"])
    with pytest.raises(EpisodeError, match=r"episode_0.hdf5: arm 'arm' joint 3: 2 frames outside the limits.*"
                                           r"robot.arms.arm.on_limit_violation: error"):
        geometry(strict, prepared, tmp_path / "e.zarr")
    assert not (tmp_path / "e.zarr").exists() and not (tmp_path / "e.zarr.partial").exists()


def test_next_contact_boxes_show_the_tile_the_expert_puts_the_probe_on():
    """While the probe is carried, the next-contact box in the top camera holds the matching
    tile's centre (the world's truth, projected), and the box now holds the sensor."""
    from hsa_pipeline.geometry.cameras import Camera
    from hsa_pipeline.world import TouchWorld
    from hsa_pipeline.world.synth import record_episode, scene_seed

    p = make_params()
    env = TouchWorld(p.world, p.robot, p.sensors, p.cameras, max_steps=10**6)
    rig = demo_rig(p)
    for i in range(3):
        ep = record_episode(env, scene_seed("train", 5, i))
        task = env.tasks[0]
        goal = task.tiles[task.targets[0]]
        geo = rig.episode_geometry(ep["qpos"], touch={"tactile": ep["felt_class"]["tactile"] >= 0})
        top: Camera = rig.cameras["top"]
        uv = top.project((np.linalg.inv(geo.camera_pose["top"][0]) @ [goal.x, goal.y, 0.0, 1.0])[None, :3])[0]
        carried = np.flatnonzero(ep["felt_class"]["tactile"] == task.tiles[task.probe].cls)
        assert len(carried) > 5
        nb = geo.next_boxes["top"]["tactile"]
        assert nb.visible[carried].all()
        x0, y0, x1, y1 = nb.box[carried].T
        assert ((x0 <= uv[0]) & (uv[0] <= x1) & (y0 <= uv[1]) & (uv[1] <= y1)).all()
        assert not nb.visible[-1]  # after the last touch nothing follows


def test_stores_and_the_manifest_from_another_layout_get_one_line_naming_it(stores, tmp_path):
    """Typed, versioned contracts: an older store or manifest is refused with both versions
    (or the missing attribute) named, not a KeyError or TypeError later."""
    import json
    import shutil

    import zarr

    from hsa_pipeline.errors import StoreError

    _, tmp = stores
    old = tmp_path / "old.zarr"
    shutil.copytree(tmp / "geometry.zarr", old)
    root = zarr.open_group(str(old), mode="r+")
    del root.attrs["schema_version"]
    with pytest.raises(StoreError, match="geometry layout version 1, but this code reads version 3; rerun `dvc repro"):
        GeometryStore(old)
    root.attrs["schema_version"] = 3
    del root.attrs["camera_mounts"]
    with pytest.raises(StoreError, match="attribute.s. camera_mounts missing"):
        GeometryStore(old)
    prep = tmp_path / "prepare"
    shutil.copytree(tmp / "prepare", prep)
    raw = json.loads((prep / "episodes.json").read_text())
    (prep / "episodes.json").write_text(json.dumps({**raw, "schema_version": 4}))
    with pytest.raises(StoreError, match="manifest layout version 4, but this code reads version 3; it was written "
                                         "by newer code"):
        Manifest.load(prep)
    del raw["qpos_dim"]
    (prep / "episodes.json").write_text(json.dumps(raw))
    with pytest.raises(StoreError, match="episodes.json: not the layout this code reads .KeyError: 'qpos_dim'"):
        Manifest.load(prep)
