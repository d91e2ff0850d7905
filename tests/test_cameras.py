"""Camera projection, sensor boxes and the box -> token mask, against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import demo_rig
from hsa_pipeline.data.grid import GridMapping, box_token_mask
from hsa_pipeline.geometry.cameras import Camera, sensor_boxes


def cam(width=640, height=480, f=500.0, cx=320.0, cy=240.0, dist=None) -> Camera:
    K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1.0]])
    return Camera("c", K, np.zeros(5) if dist is None else np.asarray(dist, float), width, height, "world", np.eye(4))


def square(center, half=0.01):
    x, y, z = center
    return np.array([[x - half, y - half, z], [x + half, y - half, z], [x + half, y + half, z], [x - half, y + half, z]])


def test_pinhole_projection_by_hand():
    c = cam()
    # (0.1, -0.05, 2.0): u = 500 * 0.1 / 2 + 320 = 345, v = 500 * -0.05 / 2 + 240 = 227.5
    np.testing.assert_allclose(c.project(np.array([0.1, -0.05, 2.0])), [345.0, 227.5])


def test_distortion_matches_the_opencv_model_by_hand():
    k1, k2, p1, p2, k3 = 0.1, -0.05, 0.001, 0.002, 0.01
    c = cam(dist=[k1, k2, p1, p2, k3])
    x, y = 0.2, -0.1
    r2 = x * x + y * y
    rad = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
    xd = x * rad + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * rad + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    np.testing.assert_allclose(c.project(np.array([x, y, 1.0])), [500 * xd + 320, 500 * yd + 240])


def test_box_of_a_square_in_front_of_the_camera():
    c = cam()
    pts = square((0.0, 0.0, 1.0))[None]  # (1, 4, 3): 2 cm square 1 m away -> 10 px
    b = sensor_boxes(c, np.eye(4)[None], pts)
    np.testing.assert_allclose(b.box[0], [315, 235, 325, 245], atol=1e-4)
    assert b.visible[0] and b.weight[0] == pytest.approx(1.0) and b.depth[0] == pytest.approx(1.0)
    wide = sensor_boxes(c, np.eye(4)[None], pts, margin_px=10)
    np.testing.assert_allclose(wide.box[0], [305, 225, 335, 255], atol=1e-4)


def test_clipping_weight_and_out_of_view():
    c = cam()
    # centre projects to u = 500 * 0.65 + 320 = 645 (just right of the image): half the box is inside? no:
    # box u in [640, 650] -> fully outside
    out = sensor_boxes(c, np.eye(4)[None], square((0.65, 0.0, 1.0))[None])
    assert not out.visible[0] and out.weight[0] == 0 and not out.box[0].any()
    # centre at u = 640: box [635, 645] -> half inside
    half = sensor_boxes(c, np.eye(4)[None], square((0.64, 0.0, 1.0))[None])
    assert half.visible[0]
    np.testing.assert_allclose(half.box[0], [635, 235, 640, 245], atol=1e-4)
    assert half.weight[0] == pytest.approx(0.5, abs=1e-4)


def test_behind_the_camera_is_not_visible_even_if_it_would_project_inside():
    c = cam()
    behind = sensor_boxes(c, np.eye(4)[None], square((0.0, 0.0, -1.0))[None])
    assert not behind.visible[0] and behind.depth[0] == pytest.approx(-1.0)
    straddling = sensor_boxes(c, np.eye(4)[None], square((0.0, 0.0, 0.0), half=0.5)[None] + [0, 0, 0.0])
    assert not straddling.visible[0]


def test_wrist_camera_sees_a_flange_sensor_at_a_constant_box_and_world_camera_sees_it_move(tiny_params):
    rig = demo_rig(tiny_params)
    q = np.zeros((30, 7))
    rng = np.random.default_rng(0)
    q[:, :6] = np.array([1.3, 0.6, 1.7, -0.8, -1.57, 2.9]) + rng.uniform(-0.3, 0.3, (30, 6))
    geo = rig.episode_geometry(q)
    wrist, top = geo.boxes["wrist"]["tactile"], geo.boxes["top"]["tactile"]
    assert wrist.visible.all()
    np.testing.assert_allclose(wrist.box, np.repeat(wrist.box[:1], 30, axis=0), atol=1e-6)
    assert np.ptp(top.box[top.visible], axis=0).max() > 20  # the box moves by tens of pixels


def test_world_camera_box_by_hand_through_the_rig(tiny_params):
    rig = demo_rig(tiny_params)
    q = np.zeros((1, 7))
    q[0, :6] = [1.3, 0.6, 1.7, -0.8, -1.57, 2.9]
    geo = rig.episode_geometry(q, margin_px=0.0)
    # independent: sensor corners in the world -> camera frame -> pinhole, with plain numpy
    pose = geo.sensor_pose["tactile"][0]
    corners = (pose[:3, :3] @ rig.sensors["tactile"].surface_points().T).T + pose[:3, 3]
    T = rig.cameras["top"].T_mount_cam
    pc = (corners - T[:3, 3]) @ T[:3, :3]  # R^T (p - t)
    K = rig.cameras["top"].K
    uv = (K @ (pc / pc[:, 2:]).T).T[:, :2]
    np.testing.assert_allclose(geo.boxes["top"]["tactile"].box[0], [*uv.min(0), *uv.max(0)], atol=1e-3)


# --------------------------------------------------------------------------- token masks
def test_grid_mapping_stretch_and_letterbox():
    s = GridMapping.create("stretch", 640, 480, 224, 16)
    assert (s.grid, s.new_w, s.new_h, s.pad_x, s.pad_y) == (14, 224, 224, 0, 0)
    lb = GridMapping.create("letterbox", 640, 480, 224, 16)
    assert (lb.new_w, lb.new_h, lb.pad_x, lb.pad_y) == (224, 168, 0, 28)
    np.testing.assert_allclose(lb.to_input(np.array([0, 0, 640, 480])), [0, 28, 224, 196])


@pytest.mark.parametrize("size, patch", [(224, 16), (128, 32)])
def test_token_mask_selects_patch_centres_inside_the_box(size, patch):
    m = GridMapping.create("stretch", 640, 480, size, patch)
    g = size // patch
    box = np.array([100.0, 50.0, 400.0, 300.0])
    mask = box_token_mask(box, m)
    assert mask.shape == (g, g)
    # independent: loop over every patch, map its centre back to original pixels
    for i in range(g):
        for j in range(g):
            u = (j + 0.5) * patch * 640 / size
            v = (i + 0.5) * patch * 480 / size
            assert mask[i, j] == (100 <= u < 400 and 50 <= v < 300), (i, j)
    assert mask.sum() > 1


def test_token_mask_letterbox_and_tiny_and_empty_boxes():
    m = GridMapping.create("letterbox", 640, 480, 224, 16)
    # a box covering the whole image selects every token of the image area, none of the padding rows
    full = box_token_mask(np.array([0.0, 0.0, 640.0, 480.0]), m)
    rows = full.any(axis=1)
    assert not rows[:2].any() and rows[2:12].all() and not rows[12:].any()  # pad 28 px = 1.75 patches
    # a 3x3 px box between patch centres selects exactly the token under its centre
    tiny = box_token_mask(np.array([300.0, 200.0, 303.0, 203.0]), m)
    assert tiny.sum() == 1
    i, j = np.argwhere(tiny)[0]
    cx, cy = m.to_input(np.array([301.5, 201.5, 0, 0]))[:2]
    assert (i, j) == (int(cy // 16), int(cx // 16))
    assert not box_token_mask(np.zeros(4), m).any()  # not visible -> nothing
    batch = box_token_mask(np.stack([np.zeros(4), np.array([0.0, 0, 640, 480])]), m)
    assert batch.shape == (2, 14, 14) and not batch[0].any() and batch[1].sum() == full.sum()
