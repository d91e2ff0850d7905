"""Forward kinematics against roboticstoolbox, the published reference poses and the
official URDF (an independent description of the same arm)."""

from __future__ import annotations

import numpy as np
import pytest

from hsa_pipeline.config import ArmConfig, ConfigError, Pose
from hsa_pipeline.geometry.kinematics import Arm, BatchedChain, build_robot, claw_width, pose_matrix, rpy_matrix

# Nova 2 URDF joint origins (xyz, rpy), all about +z: Dobot-Arm/DOBOT_6Axis_ROS2_V4,
# cra_description/urdf/nova2_robot.xacro at commit a1eabef (older copies flip joints 1, 4, 5).
NOVA2_URDF_JOINTS = [
    ("0 0 0.2234", "0 0 0"), ("0 0 0", "1.5708 1.5708 0"), ("-0.28 0 0", "0 0 0"),
    ("-0.22501 0 0.1175", "0 0 -1.5708"), ("0 -0.12 0", "1.5708 0 0"), ("0 0.088004 0", "-1.5708 0 0"),
]


def nova2_urdf() -> str:
    links = "".join(f'<link name="Link{i}"/>' for i in range(7))
    joints = "".join(
        f'<joint name="joint{i + 1}" type="revolute"><parent link="Link{i}"/><child link="Link{i + 1}"/>'
        f'<origin xyz="{xyz}" rpy="{rpy}"/><axis xyz="0 0 1"/>'
        f'<limit lower="-6.28" upper="6.28" effort="10" velocity="3"/></joint>'
        for i, (xyz, rpy) in enumerate(NOVA2_URDF_JOINTS))
    return f'<?xml version="1.0"?><robot name="nova2">{links}{joints}</robot>'


@pytest.mark.parametrize("model", ["nova2", "nova5"])
def test_batched_fk_matches_roboticstoolbox_to_1e9(model):
    robot = build_robot(model)
    q = np.random.default_rng(0).uniform(-np.pi, np.pi, (500, 6))
    ours = BatchedChain(robot.ets()).fkine(q)
    theirs = np.stack([robot.fkine(qi).A for qi in q[:50]])  # DHRobot.fkine, the slow reference
    np.testing.assert_allclose(ours[:50], theirs, atol=1e-9)
    np.testing.assert_allclose(ours, np.stack(robot.ets().fkine(q).A), atol=1e-9)


@pytest.mark.parametrize("q, xyz", [
    ((0, 0, 0, 0, 0, 0), (0, -0.2055, 0.8484)),
    ((0, 0, np.pi / 2, 0, 0, 0), (-0.345, -0.2055, 0.5034)),
    ((0.3, -0.5, 1.2, 0.4, -0.7, 1.0), (-0.08235, -0.21892, 0.64512)),
])
def test_nova2_reference_poses(q, xyz):
    arm = Arm("arm", ArmConfig(model="nova2", gripper_index=None))
    np.testing.assert_allclose(arm.flange_poses(np.array([q]))[0, :3, 3], xyz, atol=1e-5)


def test_official_urdf_agrees_with_the_dh_model(tmp_path):
    (tmp_path / "nova2.urdf").write_text(nova2_urdf())
    urdf = Arm("u", ArmConfig(model="nova2.urdf", gripper_index=None), base_dir=tmp_path)
    dh = Arm("d", ArmConfig(model="nova2", gripper_index=None))
    assert urdf.n_joints == 6
    q = np.random.default_rng(1).uniform(-np.pi, np.pi, (200, 6))
    a, b = urdf.flange_poses(q), dh.flange_poses(q)
    assert np.abs(a[:, :3, 3] - b[:, :3, 3]).max() < 2e-5  # the reference says 1.5e-5 m
    cos = np.clip((np.einsum("nij,nij->n", a[:, :3, :3], b[:, :3, :3]) - 1) / 2, -1, 1)
    assert np.rad2deg(np.arccos(cos)).max() < 0.002
    # and our batched URDF chain agrees with roboticstoolbox's own evaluation of it
    np.testing.assert_allclose(urdf.chain.fkine(q), np.stack(urdf.robot.ets().fkine(q).A), atol=1e-9)


def test_all_joint_frames_end_at_the_flange():
    robot = build_robot("nova2")
    chain = BatchedChain(robot.ets())
    q = np.random.default_rng(2).uniform(-1, 1, (7, 6))
    frames = chain.fkine(q, all_joints=True)
    assert frames.shape == (7, 7, 4, 4)
    np.testing.assert_allclose(frames[:, -1], chain.fkine(q))
    np.testing.assert_allclose(frames[:, 1, :3, 3], [[0, 0, 0.2234]] * 7, atol=1e-12)  # joint 2 sits on top of link 1


def test_base_pose_moves_the_arm():
    q = np.zeros((1, 6))
    moved = Arm("a", ArmConfig(base=Pose(xyz=[1.0, 2.0, 0.5], rpy_deg=[0, 0, 90])))
    p = moved.flange_poses(q)[0, :3, 3]
    np.testing.assert_allclose(p, [1.0 + 0.2055, 2.0, 0.5 + 0.8484], atol=1e-9)


def test_rpy_convention_is_rz_ry_rx():
    r, p, y = 0.1, -0.4, 0.7
    rx = np.array([[1, 0, 0], [0, np.cos(r), -np.sin(r)], [0, np.sin(r), np.cos(r)]])
    ry = np.array([[np.cos(p), 0, np.sin(p)], [0, 1, 0], [-np.sin(p), 0, np.cos(p)]])
    rz = np.array([[np.cos(y), -np.sin(y), 0], [np.sin(y), np.cos(y), 0], [0, 0, 1]])
    np.testing.assert_allclose(rpy_matrix([r, p, y]), rz @ ry @ rx, atol=1e-15)
    np.testing.assert_allclose(pose_matrix(Pose(xyz=[1, 2, 3], rpy_deg=[0, 0, 0]))[:3, 3], [1, 2, 3])


def test_joint_limits_are_reported_not_clipped():
    arm = Arm("arm", ArmConfig(model="nova2"))
    q = np.zeros((10, 6))
    q[3:5, 2] = np.deg2rad(170)  # J3 limit is +-160 deg
    v = arm.check_limits(q)
    assert len(v) == 1 and v[0].joint == 2 and v[0].frames == 2 and v[0].first_frame == 3
    assert v[0].worst_deg == pytest.approx(10.0)
    assert "joint 3: 2 frames outside the limits (first at frame 3" in str(v[0])
    np.testing.assert_allclose(arm.joints(np.hstack([q, np.zeros((10, 1))]))[3, 2], np.deg2rad(170))


def test_bad_robot_inputs_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="unknown robot 'ur5'"):
        build_robot("ur5")
    with pytest.raises(ConfigError, match="URDF file .*missing.urdf not found"):
        build_robot("missing.urdf", tmp_path)
    (tmp_path / "broken.urdf").write_text("<robot name='x'><link name='a'></robot")
    with pytest.raises(ConfigError, match="does not parse as a URDF"):
        build_robot("broken.urdf", tmp_path)
    arm = Arm("left", ArmConfig(qpos_start=7))
    with pytest.raises(ValueError, match="arm 'left' needs qpos columns 7..12, but qpos has shape \\(5, 7\\)"):
        arm.joints(np.zeros((5, 7)))
    q = np.zeros((5, 14))
    q[2, 9] = np.nan
    with pytest.raises(ValueError, match="frame 2: arm 'left' joint 3 is nan"):
        arm.joints(q)


def test_claw_width_at_hand_computed_commands():
    # By hand from the xtrainer formula: c = 0: s = 2.3818, cos s = -0.72433, so
    # 0.03 * -0.72433 + 0.5 * sqrt(0.0036 * 0.52465 + 0.0028) = -0.021730 + 0.034240 = 0.012510 m;
    # c = 1: s = 0.8417, cos s = 0.66621: 0.019986 + 0.5 * sqrt(0.0015978 + 0.0028) = 0.053144 m.
    np.testing.assert_allclose(claw_width(np.array([0.0, 1.0])), [0.01250, 0.05314], atol=2e-5)
    assert np.all(np.diff(claw_width(np.linspace(0, 1, 11))) > 0)  # opens monotonically
