"""The tasks of the touch world: what is on the table, what the arm must do, and when it
has succeeded or failed. Each arm that carries a tactile sensor gets its own part of the
scene, on the table in front of it.

`match` (touch-dependent): a probe stands in the front row; every probe wears the same
grey cap, so no camera can tell its class. With a pad that presses down (a sensor without
`finger_offset`), pressing the probe picks it up on the gel (it stays there, and the
tactile image keeps showing its class while it is carried), and pressing it onto a tile
puts it down there. With a pad in a claw (`finger_offset`: the X-Trainer), the probe is a
block: the claw closes on it, the pad feels its class by squeezing it, the claw carries it
and opens over a tile to put it down (claw.py). Behind the probe lie `candidates` tiles of
different classes, one of them the probe's class. Success: put down on the tile of its
own class. The decision (which tile) needs what the sensor FEELS related to what the
camera SEES. Several arms: each has its own probe and tiles, and succeeds on its own;
the scene succeeds when every arm has.

With `candidate_order: by_class` the candidates are sorted by class: with as many classes
as candidates, each class's tile always lies at the same place, so the felt class alone
decides where to go (a control task: touch must reach the decision, nothing to match).

`press`: tiles of `touches` classes and distractor tiles; press the targets left to
right (the demo of earlier versions). Vision alone suffices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import WorldConfig
from .render import TILE_M

# Candidate tile centres (x, y) in the ARM's base frame, in front of the arm: 4 x 3 cells.
GRID_X = [-0.15, -0.05, 0.05, 0.15]
GRID_Y = [-0.30, -0.40, -0.50]
JITTER_M = 0.012
CANDIDATE_SPAN_M = 0.18  # match: candidates spread over x in [-span, span]
PRESS_DEPTH = 0.4  # a press this deep (of the full press) picks up or puts down the probe


@dataclass
class Tile:
    x: float  # centre in the world frame
    y: float
    cls: int  # object class
    kind: str  # target | distractor | probe | candidate


@dataclass
class ArmTask:
    """One arm's part of a scene and its progress."""

    arm: str
    sensor: str
    tiles: list[Tile]
    targets: list[int]  # the tiles to reach, in order: press: each target left to right; match: [its match]
    probe: int | None = None  # match: index of the probe in tiles
    claw: bool = False  # the pad is in a claw: touch by squeezing (claw.py), not by pressing down
    # progress
    carrying: bool = False  # match: the probe is on the gel (pressing pad) or in the claw
    carried: tuple[float, float, float] | None = None  # claw: the carried probe's (x, y, bottom z)
    grasp_dz: float = 0.0  # claw: the claw centre's height above the probe's bottom when it closed
    placed: tuple[float, float] | None = None  # match: where the probe was put down
    placed_on: int | None = None  # the tile it was put down on (None: the table)
    presses: list[int] = field(default_factory=list)  # tiles pressed, one entry per new contact
    touching: int | None = None  # tile under the pad while in contact (None: none or the table)
    success_step: int | None = None
    failure: str | None = None

    def tile_at(self, x: float, y: float) -> int | None:
        """The tile whose square contains (x, y) (the probe only while on the table)."""
        for i, t in enumerate(self.tiles):
            if i == self.probe and (self.carrying or self.placed is not None):
                continue
            if abs(x - t.x) < TILE_M / 2 and abs(y - t.y) < TILE_M / 2:
                return i
        return None


def _cell_world(base: np.ndarray, x: float, y: float) -> tuple[float, float]:
    p = base @ np.array([x, y, -base[2, 3], 1.0])  # onto the table, z = 0
    return float(p[0]), float(p[1])


def sample_task(cfg: WorldConfig, arm: str, sensor: str, base: np.ndarray, rng: np.random.Generator,
                key_class: int | None = None, claw: bool = False) -> ArmTask:
    """A scene for one arm. `key_class` fixes the class that decides the task (the probe's
    in match, the first target's in press); None draws it at random. `claw`: the arm's pad
    is in a claw."""
    jitter = lambda: rng.uniform(-JITTER_M, JITTER_M)  # noqa: E731
    n = cfg.object_classes
    key = int(rng.integers(n)) if key_class is None else int(key_class) % n
    if cfg.task == "match":
        others = [int(c) for c in rng.permutation([c for c in range(n) if c != key])[: cfg.candidates - 1]]
        classes = others + [key]
        rng.shuffle(classes)  # the matching tile's place is random (drawn in both orders: same scenes otherwise)
        if cfg.candidate_order == "by_class":
            classes = sorted(classes)
        # far apart, so that each candidate sits in its own patch tokens of the top camera
        xs = np.linspace(-CANDIDATE_SPAN_M, CANDIDATE_SPAN_M, cfg.candidates)
        tiles = [Tile(*_cell_world(base, x + jitter(), GRID_Y[2] + jitter()), int(c), "candidate")
                 for x, c in zip(xs, classes, strict=True)]
        px = rng.choice([GRID_X[1], GRID_X[2]])
        tiles.append(Tile(*_cell_world(base, px + jitter(), GRID_Y[0] + jitter()), key, "probe"))
        match = next(i for i, t in enumerate(tiles) if t.kind == "candidate" and t.cls == key)
        return ArmTask(arm, sensor, tiles, [match], probe=len(tiles) - 1, claw=claw)
    # press: targets of distinct classes, distractors of the classes not touched
    cells = [(x, y) for x in GRID_X for y in GRID_Y]
    k = cfg.touches + cfg.distractors
    if k > len(cells):
        raise ValueError(f"world.touches + world.distractors = {k}, the table has {len(cells)} tile places")
    chosen = rng.choice(len(cells), size=k, replace=False)
    local = [(cells[i][0] + jitter(), cells[i][1] + jitter()) for i in chosen]
    classes = [key] + [int(c) for c in rng.permutation([c for c in range(n) if c != key])[: cfg.touches - 1]]
    rest = [c for c in range(n) if c not in classes] or list(range(n))
    targets = sorted(range(cfg.touches), key=lambda i: local[i][0])  # left to right in the arm's frame
    tiles = [Tile(*_cell_world(base, *local[i]), classes[r], "target") for r, i in enumerate(targets)]
    tiles += [Tile(*_cell_world(base, *local[cfg.touches + i]), int(rng.choice(rest)), "distractor")
              for i in range(cfg.distractors)]
    return ArmTask(arm, sensor, tiles, list(range(cfg.touches)), claw=claw)


# --------------------------------------------------------------------------- progress
def on_press(task: ArmTask, cfg: WorldConfig, tile: int | None, xy: tuple[float, float], step: int) -> None:
    """A new press (the pad went deeper than PRESS_DEPTH) on `tile` (None: the table)."""
    if task.failure or task.success_step is not None:
        return
    if cfg.task == "match":
        if not task.carrying and tile is not None and tile == task.probe:
            task.carrying = True  # picked up on the gel
        elif task.carrying:
            put_down(task, tile, xy, step)
        return
    if tile is None:
        return  # pressing the bare table is harmless
    task.presses.append(tile)
    expected = task.targets[len(task.presses) - 1]
    if tile != expected:
        task.failure = "wrong tile"
    elif len(task.presses) == len(task.targets):
        task.success_step = step


def put_down(task: ArmTask, tile: int | None, xy: tuple[float, float], step: int) -> None:
    """match: the carried probe is put down at `xy`, on `tile` (None: the table)."""
    task.carrying, task.carried, task.placed, task.placed_on = False, None, xy, tile
    if tile is None:
        task.failure = "put down off the tiles"
    elif tile == task.targets[0]:
        task.success_step = step
    else:
        task.failure = "wrong tile"


def phases(cfg: WorldConfig) -> list[str]:
    """The task's milestones, in order (per-phase success counts the rollouts reaching each)."""
    if cfg.task == "match":
        return ["picked up", "put down", "success"]
    return [f"pressed {i + 1}/{cfg.touches}" for i in range(cfg.touches - 1)] + ["success"]


def phase_reached(task: ArmTask, cfg: WorldConfig) -> int:
    """How many of `phases(cfg)` this arm has reached."""
    if cfg.task == "match":
        return int(task.carrying or task.placed is not None) + int(task.placed is not None) + int(task.success_step is not None)
    good = 0
    for tile, expected in zip(task.presses, task.targets, strict=False):
        if tile != expected:
            break
        good += 1
    return good
