"""The scripted demonstrator of ALOHA's simulated tasks, of the kind the ACT paper recorded
its "scripted" data with: each gripper's tool frame follows a few waypoints (position,
orientation, opening at a given step) computed once from the object's pose at reset and
interpolated linearly in between (the ACT repository's waypoints). It reads the
simulator's object pose: it is the data generator, like the paper's, and nothing
downstream reads that pose.

Transfer cube: the right gripper comes down over the cube pitched 60 degrees, closes,
carries it to a meeting point above the table's middle, where the left gripper, turned
90 degrees about x, closes on it; the right one opens and both move apart.
Insertion: the left gripper picks the socket, the right one the peg, both carry them to
the middle, the peg slides into the socket.

Two departures from the paper's scripts, both measured (docs/aloha.md):
- The paper's expert moves mocap bodies welded to the grippers in the end-effector
  environment, then replays that run's joints in the joint-space one. Under MuJoCo 3.x
  (gym-aloha 0.1.5 pins 3.x) those welds hold the gripper 13.5 cm behind its target, and
  with the offset zeroed they lag 2-3 cm and push the cube away (0-2 of 4 reward stages
  over 8 scenes). Here each waypoint's tool pose is turned into joint targets by inverse
  kinematics (`ik.py`) and the joint-space environment runs them: the recording IS the
  expert's run.
- Insertion: with the tool frames where the waypoints say (no weld sag), the paper's final
  offsets (+-5 cm from the middle) leave the peg's tip 0.7 mm short of the pin in every
  scene tried; +-4.5 cm (INSERT_OFFSET_M) reaches it, and the peg rides 1.4 cm higher
  (PEG_LIFT_M, the paper's 0.7 cm plus the 0.7 cm it hung low) so it enters the socket's
  opening centred.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ik import ArmKinematics
from .sim import EPISODE_STEPS, check_task

INSERT_OFFSET_M = 0.045  # each object's grip this far from the middle at the end (the paper: 0.05)
PEG_LIFT_M = 0.0142  # the peg's gripper this much higher than the socket's (the paper: 0.00715)


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Product of (w, x, y, z) quaternions (MuJoCo's)."""
    import mujoco

    out = np.zeros(4)
    mujoco.mju_mulQuat(out, np.asarray(a, float), np.asarray(b, float))
    return out


def quat_axis_angle(axis, degrees: float) -> np.ndarray:
    """(w, x, y, z) of a rotation by `degrees` about the unit `axis` (MuJoCo's)."""
    import mujoco

    out = np.zeros(4)
    mujoco.mju_axisAngle2Quat(out, np.asarray(axis, float), np.deg2rad(degrees))
    return out


@dataclass
class Waypoint:
    step: int
    xyz: np.ndarray  # (3,) the gripper's position, metres
    quat: np.ndarray  # (4,) its orientation (w, x, y, z)
    grip: float  # opening, 0 closed .. 1 open


def plan(task: str, env_state: np.ndarray, left0: np.ndarray, right0: np.ndarray) -> tuple[list, list]:
    """(left, right) waypoints from the object's pose at reset (`env_state`: the object's
    free-joint values) and the grippers' mocap poses at reset (7 each: xyz, quat)."""
    check_task(task)
    start_l = Waypoint(0, left0[:3], left0[3:], 0.0)
    start_r = Waypoint(0, right0[:3], right0[3:], 0.0)
    tilt_r = quat_mul(right0[3:], quat_axis_angle([0, 1, 0], -60))  # the right gripper, pitched down to grasp
    if task == "transfer_cube":
        cube = env_state[:3]
        meet = np.array([0.0, 0.5, 0.25])
        turned = quat_axis_angle([1, 0, 0], 90)  # the left gripper meets the cube turned a quarter about x
        level = np.array([1.0, 0, 0, 0])
        left = [start_l,
                Waypoint(100, meet + [-0.1, 0, -0.02], turned, 1.0),  # open, towards the meeting point
                Waypoint(260, meet + [0.02, 0, -0.02], turned, 1.0),  # around the cube
                Waypoint(310, meet + [0.02, 0, -0.02], turned, 0.0),  # close on it
                Waypoint(360, meet + [-0.1, 0, -0.02], level, 0.0),  # take it away
                Waypoint(EPISODE_STEPS, meet + [-0.1, 0, -0.02], level, 0.0)]
        right = [start_r,
                 Waypoint(90, cube + [0, 0, 0.08], tilt_r, 1.0),  # open, above the cube
                 Waypoint(130, cube + [0, 0, -0.015], tilt_r, 1.0),  # down around it
                 Waypoint(170, cube + [0, 0, -0.015], tilt_r, 0.0),  # close
                 Waypoint(200, meet + [0.05, 0, 0], tilt_r, 0.0),  # lift it towards the middle
                 Waypoint(220, meet, tilt_r, 0.0),
                 Waypoint(310, meet, tilt_r, 1.0),  # let go once the left gripper holds it
                 Waypoint(360, meet + [0.1, 0, 0], tilt_r, 1.0),
                 Waypoint(EPISODE_STEPS, meet + [0.1, 0, 0], tilt_r, 1.0)]
        return left, right
    peg, socket = env_state[:3], env_state[7:10]
    meet = np.array([0.0, 0.5, 0.15])
    tilt_l = quat_mul(right0[3:], quat_axis_angle([0, 1, 0], 60))  # the left gripper, pitched the other way
    lift = np.array([0, 0, PEG_LIFT_M])
    left = [start_l,
            Waypoint(120, socket + [0, 0, 0.08], tilt_l, 1.0),
            Waypoint(170, socket + [0, 0, -0.03], tilt_l, 1.0),
            Waypoint(220, socket + [0, 0, -0.03], tilt_l, 0.0),
            Waypoint(285, meet + [-0.1, 0, 0], tilt_l, 0.0),
            Waypoint(340, meet + [-INSERT_OFFSET_M, 0, 0], tilt_l, 0.0),  # the socket meets the peg
            Waypoint(EPISODE_STEPS, meet + [-INSERT_OFFSET_M, 0, 0], tilt_l, 0.0)]
    right = [start_r,
             Waypoint(120, peg + [0, 0, 0.08], tilt_r, 1.0),
             Waypoint(170, peg + [0, 0, -0.03], tilt_r, 1.0),
             Waypoint(220, peg + [0, 0, -0.03], tilt_r, 0.0),
             Waypoint(285, meet + [0.1, 0, 0] + lift, tilt_r, 0.0),
             Waypoint(340, meet + [INSERT_OFFSET_M, 0, 0] + lift, tilt_r, 0.0),  # the peg goes in
             Waypoint(EPISODE_STEPS, meet + [INSERT_OFFSET_M, 0, 0] + lift, tilt_r, 0.0)]
    return left, right


def at(waypoints: list[Waypoint], step: int) -> np.ndarray:
    """(8,) xyz, quat, grip at `step`: linear between the waypoints around it (the held
    last one after the end)."""
    nxt = next((i for i, w in enumerate(waypoints) if w.step > step), len(waypoints) - 1)
    a, b = waypoints[max(nxt - 1, 0)], waypoints[nxt]
    f = 1.0 if b.step == a.step else float(np.clip((step - a.step) / (b.step - a.step), 0.0, 1.0))
    return np.concatenate([a.xyz + f * (b.xyz - a.xyz), a.quat + f * (b.quat - a.quat), [a.grip + f * (b.grip - a.grip)]])


class ScriptedAlohaExpert:
    """`joint_targets(object_pose)` -> the (steps, 14) joint-space actions of one episode:
    per arm six joint targets then the gripper's opening (0 closed .. 1 open), left first,
    as gym-aloha's joint-space environment takes them."""

    def __init__(self, task: str, steps: int = EPISODE_STEPS):
        from gym_aloha.constants import START_ARM_POSE

        check_task(task)
        self.task, self.steps = task, steps
        self.kinematics = ArmKinematics(task)
        self.start = {"left": np.array(START_ARM_POSE[:6], float), "right": np.array(START_ARM_POSE[8:14], float)}

    def joint_targets(self, object_pose: np.ndarray) -> np.ndarray:
        start_tool = {side: self.kinematics.tool_pose(side, q) for side, q in self.start.items()}
        left, right = plan(self.task, np.asarray(object_pose, float), start_tool["left"], start_tool["right"])
        waypoints = {"left": left, "right": right}
        q = dict(self.start)
        rows = []
        for step in range(self.steps):
            row = []
            for side in ("left", "right"):
                target = at(waypoints[side], step)  # (8,) xyz, quat, grip
                q[side], miss = self.kinematics.solve(side, target[:7], q[side])
                if miss > 1e-3:
                    raise RuntimeError(f"aloha {self.task}: the {side} arm cannot reach its waypoint at step {step} "
                                       f"({miss * 1000:.1f} mm short): a waypoint outside the arm's reach")
                row += [*q[side], target[7]]
            rows.append(row)
        return np.asarray(rows)  # (steps, 14)
