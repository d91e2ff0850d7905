"""The geometry stage on the tiny demo: a small store whose values are the rig's."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_params
from hsa_pipeline.episodes import Episode
from hsa_pipeline.geometry import GeometryStore, run_geometry
from hsa_pipeline.prepare import Manifest, run_prepare
from hsa_pipeline.rig import Rig


@pytest.fixture(scope="module")
def stores(demo_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("geo")
    p = make_params([f"data.episodes_dir={demo_dir}"])
    run_prepare(p.data, p.act.chunk_size, tmp / "prepare")
    run_geometry(p, tmp / "prepare", tmp / "geometry.zarr")
    return p, tmp


def test_store_matches_the_rig_per_episode(stores):
    p, tmp = stores
    store = GeometryStore(tmp / "geometry.zarr")
    m = Manifest.load(tmp / "prepare")
    rig = Rig(p)
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


def test_store_is_a_handful_of_files(stores):
    _, tmp = stores
    files = [f for f in (tmp / "geometry.zarr").rglob("*") if f.is_file()]
    assert len(files) < 30


def test_too_narrow_qpos_is_named(stores, tmp_path):
    p, tmp = stores
    p2 = make_params([f"data.episodes_dir={p.data.episodes_dir}", "robot.arms.arm.qpos_start=3"])
    with pytest.raises(ValueError, match="qpos has 7 columns; the arms in robot.arms need 9"):
        run_geometry(p2, tmp / "prepare", tmp_path / "g.zarr")
    assert not (tmp_path / "g.zarr").exists()


def test_limit_violations_warn_or_fail(stores, tmp_path):
    p, tmp = stores
    tight = ["robot.arms.arm.on_limit_violation=error"]
    # the demo stays inside the limits: error mode passes
    run_geometry(make_params([f"data.episodes_dir={p.data.episodes_dir}", *tight]), tmp / "prepare", tmp_path / "g.zarr")
    assert GeometryStore(tmp_path / "g.zarr").attrs["limit_violations"] == []
