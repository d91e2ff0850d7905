"""Inverse kinematics of the two ViperX 300s arms, on gym-aloha's own MuJoCo model.

The scripted expert says where each gripper should be as the pose of a TOOL frame: the frame
that gym-aloha's end-effector models weld to a mocap body (13.5 cm ahead of `gripper_link`,
between the fingers; the right arm's turned 180 degrees about z). The offset is not typed in
here: it is the weld's relative pose MuJoCo compiles for those models (`eq_data`), read
once. `ArmKinematics.solve` finds the six arm joints that put the tool frame at a pose
(damped least squares on MuJoCo's own Jacobian, within the joints' limits, warm-started
from the previous step's solution); `tool_pose` is the forward direction, MuJoCo's own
body poses.
"""

from __future__ import annotations

import numpy as np

from .sim import check_task

ARMS = ("left", "right")
ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
POSITION_TOL_M = 1e-4  # 0.1 mm
ANGLE_TOL_RAD = 1e-3
MAX_ITERATIONS = 100
DAMPING = 1e-4  # of the damped least-squares step: keeps it finite near singular poses


def _quat(mujoco, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros(4)
    mujoco.mju_mulQuat(out, a, b)
    return out


def conjugate(q: np.ndarray) -> np.ndarray:
    return np.array([q[0], -q[1], -q[2], -q[3]])


class ArmKinematics:
    """Forward and inverse kinematics of the tool frames, on a private copy of the
    joint-space model of `task` (it never touches a running environment's state)."""

    def __init__(self, task: str):
        import mujoco
        from gym_aloha.constants import ASSETS_DIR

        check_task(task)
        self.mj = mujoco
        self.model = mujoco.MjModel.from_xml_path(str(ASSETS_DIR / f"bimanual_viperx_{task}.xml"))
        self.data = mujoco.MjData(self.model)
        welds = mujoco.MjModel.from_xml_path(str(ASSETS_DIR / f"bimanual_viperx_end_effector_{task}.xml")).eq_data
        self.body, self.qadr, self.dadr, self.limits, self.tool_offset, self.tool_turn = {}, {}, {}, {}, {}, {}
        for i, side in enumerate(ARMS):  # the models weld mocap_left, then mocap_right
            self.body[side] = self.model.body(f"vx300s_{side}/gripper_link").id
            joints = [self.model.joint(f"vx300s_{side}/{j}").id for j in ARM_JOINTS]
            self.qadr[side] = [int(self.model.jnt_qposadr[j]) for j in joints]
            self.dadr[side] = [int(self.model.jnt_dofadr[j]) for j in joints]
            self.limits[side] = self.model.jnt_range[joints].T.copy()  # (2, 6) low, high
            relpos, relquat = welds[i, 3:6], welds[i, 6:10] / np.linalg.norm(welds[i, 6:10])
            # gripper_link = mocap * (relpos, relquat)  =>  the mocap (tool) frame in gripper_link's frame:
            rot = np.zeros(9)
            mujoco.mju_quat2Mat(rot, relquat)
            self.tool_offset[side] = -rot.reshape(3, 3).T @ relpos
            self.tool_turn[side] = conjugate(relquat)

    def _set(self, side: str, q: np.ndarray) -> None:
        self.data.qpos[self.qadr[side]] = q
        self.mj.mj_kinematics(self.model, self.data)
        self.mj.mj_comPos(self.model, self.data)

    def _tool(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        b = self.body[side]
        xyz = self.data.xpos[b] + self.data.xmat[b].reshape(3, 3) @ self.tool_offset[side]
        return xyz, _quat(self.mj, self.data.xquat[b], self.tool_turn[side])

    def tool_pose(self, side: str, q: np.ndarray) -> np.ndarray:
        """(7,) xyz + quaternion (w, x, y, z) of `side`'s tool frame at arm joints `q` (6,)."""
        self._set(side, np.asarray(q, float))
        return np.concatenate(self._tool(side))

    def solve(self, side: str, pose: np.ndarray, q_start: np.ndarray) -> tuple[np.ndarray, float]:
        """Arm joints (6,) that put `side`'s tool frame at `pose` (7,), starting from `q_start`;
        -> (joints, position error in metres left after MAX_ITERATIONS)."""
        target_xyz, target_quat = pose[:3], pose[3:7] / np.linalg.norm(pose[3:7])
        q = np.asarray(q_start, float).copy()
        jac_pos, jac_rot = np.zeros((3, self.model.nv)), np.zeros((3, self.model.nv))
        for _ in range(MAX_ITERATIONS):
            self._set(side, q)
            xyz, quat = self._tool(side)
            turn = np.zeros(3)  # the rotation (axis * angle) from where the tool points to the target
            self.mj.mju_quat2Vel(turn, _quat(self.mj, target_quat, conjugate(quat)), 1.0)
            error = np.concatenate([target_xyz - xyz, turn])  # (6,)
            if np.linalg.norm(error[:3]) < POSITION_TOL_M and np.linalg.norm(turn) < ANGLE_TOL_RAD:
                break
            self.mj.mj_jac(self.model, self.data, jac_pos, jac_rot, xyz, self.body[side])
            J = np.vstack([jac_pos[:, self.dadr[side]], jac_rot[:, self.dadr[side]]])  # (6, 6)
            q = q + J.T @ np.linalg.solve(J @ J.T + DAMPING * np.eye(6), error)
            q = np.clip(q, *self.limits[side])  # a target past a limit is one the arm cannot hold
        return q, float(np.linalg.norm(error[:3]))
