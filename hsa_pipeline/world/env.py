"""The touch world as a gymnasium environment: the rig of params.yaml (arms, tactile
sensors, calibrated cameras) over a table with object tiles, and a task (tasks.py).

    env = TouchWorld(p.world, p.robot, p.sensors, p.cameras)
    obs, info = env.reset(seed=3)           # obs: {"qpos": (D,), "<camera>": (H, W, 3), "<tactile>": (S, S, 3)}
    obs, reward, terminated, truncated, info = env.step(action)   # action: joint-position targets (D,)

Observations use the stream names of the recorded episodes, so an exported policy runs
on it unchanged. An action is what the recordings hold: the qpos to go to. Each arm joint
moves toward its target by at most `world.max_joint_speed_deg / world.control_hz` a step;
an arm joint's target outside its limits ends the episode ("joint limit"); a gripper
command outside [0, 1] is clipped, as a gripper's driver does. Contact and press
depth come from the sensor's pose (forward kinematics of the new qpos) against the table;
for a pad in a claw (`finger_offset`), from the claw closing on the probe between its
fingers (claw.py), which also stops the claw's measured opening at the probe's width.
`info`: phase, phases reached, success, failure, step.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from PIL import Image

from ..config import CameraConfig, RobotConfig, SensorConfig, WorldConfig
from ..errors import ConfigError
from ..geometry.rig import Rig
from .claw import (
    HOLD_SQUEEZE,
    PROBE_COMMAND,
    PROBE_SIDE_M,
    between_fingers,
    block_faces,
    claw_width,
    squeeze_depth,
    tcp_poses,
)
from .ik import home_qpos
from .render import (
    ARM_RGB,
    PAD_RGB,
    PROBE_SIDE_RGB,
    Canvas,
    add_sensor_noise,
    object_texture,
    probe_texture,
    square_corners,
    table_background,
    tactile_image,
)
from .tasks import PRESS_DEPTH, ArmTask, on_press, phase_reached, phases, put_down, sample_task

CONTACT_M = 0.004  # the pad touches the table below this height
PRESS_M = 0.012  # a full press: the pad this far into the (soft) tile; deep, so a policy a few mm off still presses
COLLISION_M = 0.03  # deeper than this is driving the sensor into the table
HOLD_DEPTH = 0.5  # how deep a carried probe presses into the gel


class TouchWorld(gym.Env):
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, world: WorldConfig, robot: RobotConfig, sensors: dict[str, SensorConfig],
                 cameras: dict[str, CameraConfig], max_steps: int = 200, render_mode: str | None = "rgb_array"):
        self.cfg, self.max_steps, self.render_mode = world, max_steps, render_mode
        self.rig = Rig(robot, sensors, cameras)
        self.width = self.rig.qpos_width()
        # every arm that carries a sensor works on its own part of the table: (arm, its sensor)
        self.sensing_arms = [(a, next(s for s in self.rig.sensors if self.rig.sensors[s].arm == a))
                             for a in self.rig.arms if any(s.arm == a for s in self.rig.sensors.values())]
        if not self.sensing_arms:
            raise ConfigError("sensors: the touch world needs a tactile sensor on an arm (sensors.<name>.arm); "
                              "none is configured")
        for arm, sensor in self.sensing_arms:
            if self.rig.sensors[sensor].in_claw and world.task != "match":
                raise ConfigError(f"world.task: '{world.task}' presses tiles with a pad facing down, but "
                                  f"sensors.{sensor} sits in a claw (finger_offset); the claw plays world.task: match")
            if self.rig.sensors[sensor].in_claw and self.rig.arms[arm].cfg.gripper_index is None:
                raise ConfigError(f"sensors.{sensor}.finger_offset: the pad is in a claw, but robot.arms.{arm}."
                                  f"gripper_index is null: the touch world needs the claw's command")
        lo, hi = np.full(self.width, -np.inf), np.full(self.width, np.inf)
        for arm in self.rig.arms.values():
            cols = slice(arm.cfg.qpos_start, arm.cfg.qpos_start + arm.n_joints)
            lo[cols], hi[cols] = arm.qlim[0], arm.qlim[1]
            if arm.cfg.gripper_index is not None:
                lo[arm.cfg.gripper_index], hi[arm.cfg.gripper_index] = 0.0, 1.0
        self.low, self.high = lo, hi
        self.joint_columns = np.zeros(self.width, bool)  # arm joints (limits end an episode); the rest are grippers
        for arm in self.rig.arms.values():
            self.joint_columns[arm.cfg.qpos_start: arm.cfg.qpos_start + arm.n_joints] = True
        self.max_step_rad = np.deg2rad(world.max_joint_speed_deg) / world.control_hz
        self.action_space = gym.spaces.Box(lo.astype(np.float32), hi.astype(np.float32), dtype=np.float32)
        spaces = {"qpos": gym.spaces.Box(lo.astype(np.float32), hi.astype(np.float32), dtype=np.float32)}
        for name, cam in self.rig.cameras.items():
            spaces[name] = gym.spaces.Box(0, 255, (cam.height, cam.width, 3), np.uint8)
        for name in self.rig.sensors:
            spaces[name] = gym.spaces.Box(0, 255, (world.tactile_size, world.tactile_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.textures = {c: object_texture(c) for c in range(world.object_classes)}
        self.probe_tex = probe_texture()
        self.tasks: list[ArmTask] = []

    @property
    def streams(self) -> list[str]:
        return [*self.rig.cameras, *self.rig.sensors]

    @property
    def touch_decisions(self) -> bool:
        """Does each arm choose a tile by what it feels (the match task)? Then the evaluation
        checks that decision at each arm's pick-up."""
        return self.cfg.task == "match"

    # ------------------------------------------------------------------ episode
    def reset(self, seed: int | None = None, options: dict | None = None):
        """A new scene. options: {"key_classes": [per arm]} fixes each arm's deciding class
        (the demo uses it to show every class equally often)."""
        super().reset(seed=seed)
        rng = self.np_random
        keys = (options or {}).get("key_classes") or [None] * len(self.sensing_arms)
        self.tasks = [sample_task(self.cfg, arm, sensor, self.rig.arms[arm].base, rng, key,
                                  claw=self.rig.sensors[sensor].in_claw)
                      for (arm, sensor), key in zip(self.sensing_arms, keys, strict=True)]
        self.qpos = self.home()
        self.command = self.qpos.copy()  # what the last action asked for (a claw's opening may differ)
        self.t = 0
        self.failure: str | None = None
        self._pressing = {s: False for _, s in self.sensing_arms}
        self._around = {s: False for _, s in self.sensing_arms}  # a claw: the standing probe between its fingers
        self._backgrounds: dict[str, Image.Image] = {}
        self._update_contact()
        return self._observe(), self._info()

    def home(self) -> np.ndarray:
        """The start pose: each sensor 20 cm above the table in front of its arm, pointing down."""
        return home_qpos(self.rig, self.sensing_arms, self.width)

    def step(self, action):
        action = np.asarray(action, dtype=float)
        if action.shape != (self.width,):
            raise ValueError(f"world: an action has {self.width} values (the qpos width of the rig), "
                             f"got shape {action.shape}")
        if not np.isfinite(action).all():
            self.failure = "non-finite action"
        elif (((action < self.low - 1e-9) | (action > self.high + 1e-9)) & self.joint_columns).any():
            self.failure = "joint limit"
        target = np.clip(np.nan_to_num(action), self.low, self.high)
        self.command = target
        move = target - self.qpos
        for arm in self.rig.arms.values():  # joints move at most max_step_rad a step; grippers at once
            cols = slice(arm.cfg.qpos_start, arm.cfg.qpos_start + arm.n_joints)
            move[cols] = np.clip(move[cols], -self.max_step_rad, self.max_step_rad)
        self.qpos = self.qpos + move
        self.t += 1
        self._update_contact()
        success = all(t.success_step is not None for t in self.tasks)
        failure = self.failure or next((t.failure for t in self.tasks if t.failure), None)
        terminated = success or failure is not None
        truncated = not terminated and self.t >= self.max_steps
        return self._observe(), float(success), terminated, truncated, self._info(timeout=truncated)

    def _poses(self) -> tuple[dict, dict, dict]:
        q = self.qpos[None]
        flange = {n: a.flange_poses(a.joints(q)) for n, a in self.rig.arms.items()}
        sensor = {n: s.world_poses(flange[s.arm], self.rig.arms[s.arm].gripper(q)) for n, s in self.rig.sensors.items()}
        camera = {n: c.world_poses(flange, 1) for n, c in self.rig.cameras.items()}
        return flange, sensor, camera

    def _update_contact(self) -> None:
        """Contact, press (or squeeze) depth, new presses, grasps and releases and their
        consequences, from the sensor poses (and the claws' commands)."""
        self.depth = {}
        for task in self.tasks:
            if task.claw:
                self._squeeze(task)  # first: it may stop the claw's measured opening
        _, sensor_pose, _ = self._poses()
        for task in self.tasks:
            pose = sensor_pose[task.sensor][0]
            if task.claw:
                if self.rig.sensors[task.sensor].surface_world(pose[None])[0][:, 2].min() < -COLLISION_M:
                    task.failure = task.failure or "collision with the table"
                continue
            x, y, z = pose[:3, 3]
            depth = float(np.clip((CONTACT_M - z) / (CONTACT_M + PRESS_M), 0.0, 1.0))
            self.depth[task.sensor] = depth
            if z < -COLLISION_M:
                task.failure = task.failure or "collision with the table"
            task.touching = task.tile_at(x, y) if depth > 0 else None
            pressing = depth >= PRESS_DEPTH
            if pressing and not self._pressing[task.sensor]:  # a new press
                on_press(task, self.cfg, task.touching, (float(x), float(y)), self.t)
                self._backgrounds.clear()  # the probe may have moved
            self._pressing[task.sensor] = pressing

    def claw_centre(self, task: ArmTask) -> np.ndarray:
        """(4, 4) the claw centre of the task's arm now."""
        arm = self.rig.arms[task.arm]
        return tcp_poses(arm.flange_poses(arm.joints(self.qpos[None])), self.rig.sensors[task.sensor].T_flange_sensor)[0]

    def _squeeze(self, task: ArmTask) -> None:
        """A claw (claw.py): does it close on the probe, hold it, carry it, let it go?"""
        tcp = self.claw_centre(task)
        gi = self.rig.arms[task.arm].cfg.gripper_index
        probe = task.tiles[task.probe] if task.probe is not None else None
        standing = probe is not None and not task.carrying and task.placed is None
        inside = standing and between_fingers(tcp, (probe.x, probe.y))
        if inside and not self._around[task.sensor] and claw_width(self.qpos[gi]) < PROBE_SIDE_M:
            # fingers narrower than the block came onto it (from above, or sideways): a real
            # claw hits the block's top or side, it cannot close through it
            task.failure = task.failure or "collision with the probe"
            inside = False
        self._around[task.sensor] = inside
        around = task.carrying or inside
        depth = squeeze_depth(self.command[gi]) if around else 0.0  # the fingers stop at the block: the rest squeezes
        if depth > 0:  # the probe stops the fingers: the claw measures the probe's width
            self.qpos[gi] = max(self.qpos[gi], PROBE_COMMAND)
        self.depth[task.sensor] = depth
        task.touching = task.probe if depth > 0 else None
        x, y, z = tcp[:3, 3]
        if not task.carrying and depth >= HOLD_SQUEEZE and task.failure is None and task.success_step is None:
            task.carrying, task.grasp_dz = True, float(z)  # closed on the probe standing on the table
            self._backgrounds.clear()  # it leaves the table
        if task.carrying:
            bottom = float(z) - task.grasp_dz
            task.carried = (float(x), float(y), bottom)
            if bottom < -COLLISION_M:
                task.failure = task.failure or "collision with the table"
            if depth == 0.0:  # the claw opened: the probe drops where it is
                put_down(task, task.tile_at(x, y), (float(x), float(y)), self.t)
                self._backgrounds.clear()

    # ------------------------------------------------------------------ observation
    def _info(self, timeout: bool = False) -> dict:
        names = phases(self.cfg)
        reached = min(phase_reached(t, self.cfg) for t in self.tasks)
        failure = self.failure or next((t.failure for t in self.tasks if t.failure), None)
        if timeout and failure is None:
            failure = "timeout"
        success = all(t.success_step is not None for t in self.tasks)
        return {"step": self.t, "phase": names[reached - 1] if reached else "start", "phases_reached": reached,
                "success": success, "failure": failure, "contact": {t.sensor: t.touching for t in self.tasks}}

    def _observe(self) -> dict:
        obs = {"qpos": self.qpos.astype(np.float32)}
        flange, sensor_pose, camera_pose = self._poses()
        for name, cam in self.rig.cameras.items():
            obs[name] = self._camera_image(name, cam, camera_pose[name][0], flange, sensor_pose)
        for task in self.tasks:
            cls = self.felt_class(task)
            depth = max(HOLD_DEPTH, self.depth[task.sensor]) if task.carrying else self.depth[task.sensor]
            obs[task.sensor] = tactile_image(cls if cls >= 0 else None, depth, self.cfg.tactile_size, self.np_random)
        return obs

    def felt_class(self, task: ArmTask) -> int:
        """The class the sensor feels now: the carried probe's, or the pressed tile's; -1 for none."""
        if task.carrying:
            return task.tiles[task.probe].cls
        if task.touching is not None and self.depth[task.sensor] > 0:
            return task.tiles[task.touching].cls
        return -1

    def _table(self, name: str, cam, T_world_cam: np.ndarray) -> Image.Image:
        """Table and tiles: cached for a world-fixed camera until something on the table moves."""
        if cam.mount == "world" and name in self._backgrounds:
            return self._backgrounds[name]
        canvas = Canvas(cam, T_world_cam, table_background(cam, T_world_cam))
        for task in self.tasks:
            for i, tile in enumerate(task.tiles):
                if i == task.probe and (task.carrying or task.placed is not None or task.claw):
                    continue
                tex = self.probe_tex if i == task.probe else self.textures[tile.cls]
                canvas.quad(square_corners(tile.x, tile.y), tex)
            if task.claw and not task.carrying and task.placed is None:  # the probe block, standing
                probe = task.tiles[task.probe]
                canvas.solid(block_faces(probe.x, probe.y, 0.0), self.probe_tex, PROBE_SIDE_RGB)
            if task.placed is not None:  # the probe where it was put down
                if task.claw:
                    canvas.solid(block_faces(*task.placed, 0.0), self.probe_tex, PROBE_SIDE_RGB)
                else:
                    canvas.quad(square_corners(*task.placed, side=0.045, z=0.001), self.probe_tex)
        if cam.mount == "world":
            self._backgrounds[name] = canvas.img
        return canvas.img

    def _camera_image(self, name: str, cam, T_world_cam: np.ndarray, flange: dict, sensor_pose: dict) -> np.ndarray:
        canvas = Canvas(cam, T_world_cam, self._table(name, cam, T_world_cam))
        for task in self.tasks:
            arm, sensor = self.rig.arms[task.arm], self.rig.sensors[task.sensor]
            pose = sensor_pose[task.sensor][0]
            if cam.mount == "world":
                links = (arm.base @ arm.chain.fkine(arm.joints(self.qpos[None]), all_joints=True)[0])[:, :3, 3]
                canvas.polyline(np.vstack([links, pose[:3, 3]]), 5, ARM_RGB)
            pad = sensor.surface_world(pose[None])[0]  # (4, 3)
            if task.claw:
                self._draw_claw(canvas, task, pad)
                continue
            if task.carrying:  # the probe's grey cap around the pad
                canvas.quad(pose[:3, 3] + 1.5 * (pad - pose[:3, 3]), self.probe_tex)
            if task.touching is not None and self.depth[task.sensor] > 0:
                tex = self.probe_tex if task.touching == task.probe else self.textures[task.tiles[task.touching].cls]
                canvas.quad(pad, tex, outline=(20, 20, 20))  # the pressed surface, seen through the gel
            else:
                canvas.quad(pad, None, fill=PAD_RGB, outline=(230, 230, 230))
        return add_sensor_noise(canvas.img, self.np_random)

    def _draw_claw(self, canvas: Canvas, task: ArmTask, pad: np.ndarray) -> None:
        """The claw's two fingers (the pad on one, seen from outside; textured while it
        squeezes) and the probe block it carries."""
        tcp = self.claw_centre(task)
        across = tcp[:3, 1] * ((pad.mean(0) - tcp[:3, 3]) @ tcp[:3, 1])  # tcp -> pad centre, along the closing axis
        canvas.quad(pad - 2 * across, None, fill=ARM_RGB, outline=(120, 120, 125))  # the finger without a pad
        if task.carrying and task.carried is not None:
            canvas.solid(block_faces(*task.carried), self.probe_tex, PROBE_SIDE_RGB)
        if task.touching is not None and self.depth[task.sensor] > 0:
            canvas.quad(pad, self.probe_tex, outline=(20, 20, 20))
        else:
            canvas.quad(pad, None, fill=PAD_RGB, outline=(230, 230, 230))

    def render(self) -> np.ndarray | None:
        """One frame for a person: every camera and tactile image side by side (rgb_array)."""
        if self.render_mode != "rgb_array":
            return None
        return contact_sheet(self._observe(), self.streams)


def contact_sheet(obs: dict, streams: list[str], height: int = 192) -> np.ndarray:
    """Images of `streams` scaled to one height, side by side."""
    tiles = []
    for s in streams:
        img = Image.fromarray(obs[s])
        tiles.append(img.resize((max(1, round(img.width * height / img.height)), height), Image.Resampling.NEAREST))
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), height), (30, 30, 30))
    x = 0
    for t in tiles:
        sheet.paste(t, (x, 0))
        x += t.width + 4
    return np.asarray(sheet)

