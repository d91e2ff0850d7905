"""What the evaluation may know about the touch world and a policy never sees, behind one
interface, `WorldTruth(env)`: where each arm carries its probe on the table (`carry_xy`),
which candidate tile an action chunk heads for (`chunk_places`, by `heading`), and the
tactile image a sensor would show holding a probe of another class (`felt_image`, a
counterfactual). evaluation/rollout.py reads it; nothing that trains or serves a policy may
(tests/test_structure.py)."""

from __future__ import annotations

import numpy as np

from .claw import tcp_poses
from .env import HOLD_DEPTH, TouchWorld
from .render import tactile_image
from .tasks import ArmTask

HEADING_MIN_MOVE_M = 0.01  # chunk_places: a carry path shorter than this goes nowhere (nearest to its end)
HEADING_TIE_M = 0.005  # chunk_places: candidates this close to the ray tie (the one nearer the end wins)


def heading(start: np.ndarray, end: np.ndarray, tiles: np.ndarray) -> int:
    """Which of the (N, 2) `tiles` a path from `start` to `end` (table-plane points) heads
    for: the tile nearest the ray from start through end (a tile behind the start: its
    distance to the start), ties within HEADING_TIE_M to the one nearer the end; a path
    shorter than HEADING_MIN_MOVE_M: the tile nearest its end."""
    to_end = np.hypot(*(tiles - end).T)
    d = end - start
    if np.hypot(*d) < HEADING_MIN_MOVE_M:
        return int(np.argmin(to_end))
    t = np.clip((tiles - start) @ d / float(d @ d), 0.0, None)
    ray = np.hypot(*(tiles - (start + t[:, None] * d)).T)
    near = np.flatnonzero(ray <= ray.min() + HEADING_TIE_M)
    return int(near[np.argmin(to_end[near])])


class WorldTruth:
    """The evaluation's view of a running `TouchWorld`'s truth (it reads, never changes, the world)."""

    def __init__(self, env: TouchWorld):
        self.env = env

    def carry_xy(self, qpos: np.ndarray) -> dict[str, np.ndarray]:
        """(T, D) qpos -> {sensor: (T, 2)} where its arm carries a probe on the table plane:
        the sensor itself (a pad pressing down), or the claw's centre (a pad in a claw)."""
        q = np.asarray(qpos, dtype=float)
        out = {}
        for name, s in self.env.rig.sensors.items():
            arm = self.env.rig.arms[s.arm]
            flange = arm.flange_poses(arm.joints(q))
            poses = tcp_poses(flange, s.T_flange_sensor) if s.in_claw else s.world_poses(flange, arm.gripper(q))
            out[name] = poses[:, :2, 3]
        return out

    def chunk_places(self, chunk: np.ndarray) -> list[int | None]:
        """match: per arm, the candidate tile an action chunk (k, D) heads for (None for an
        arm not carrying): the one its carry path, from where the chunk starts to where it
        ends, points at (`heading`). A chunk that stops short of its tile still points at
        it, where "the candidate nearest the chunk's end" leaned toward the tiles nearest
        the start (issue #41)."""
        xy = self.carry_xy(np.asarray(chunk)[[0, -1]])
        out = []
        for task in self.env.tasks:
            cands = [i for i, t in enumerate(task.tiles) if t.kind == "candidate"]
            if not task.carrying or not cands:
                out.append(None)
                continue
            start, end = xy[task.sensor]
            out.append(cands[heading(start, end, np.array([(task.tiles[i].x, task.tiles[i].y) for i in cands]))])
        return out

    def felt_image(self, task: ArmTask, cls: int, rng: np.random.Generator) -> np.ndarray:
        """The tactile image this sensor would show now if it held a probe of class `cls`
        (a counterfactual for the diagnostics; `rng` keeps the world's own draws untouched)."""
        return tactile_image(cls, max(HOLD_DEPTH, self.env.depth[task.sensor]), self.env.cfg.tactile_size, rng)
