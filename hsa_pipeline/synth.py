"""The embedded demo: a Nova 2 arm touching textured tiles, rendered from the rig in
params.yaml (the same robot, sensor and cameras the geometry stage uses).

The world, per episode:
- a table (z = 0) with `touches` object tiles and `distractors` distractor tiles, each
  tile a texture of one object class (colour + pattern); distractors use the classes
  that are NOT touched in that episode, so they are in-image hard negatives;
- the arm visits the touched tiles left to right (increasing world x): above, press,
  hold, lift. The order rule and the tiles' positions in the third-person view make the
  actions predictable from what the cameras see;
- both cameras draw the sensor pad where the geometry puts it: the bare pad, or, while
  pressing, the touched tile's texture seen through the gel;
- the tactile image (GelSight-like) is a neutral gel with markers; on contact, a relief
  whose SHAPE and ridge pattern depend on the object class (lit like a photometric-stereo
  sensor), not a copy of its colour: touch and sight are related, not identical.

Deterministic for a seed. The renderer is painter's-order 2-D drawing with PIL: honest
about where things are, not photorealistic.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from .cameras import NEAR_M
from .config import CameraConfig, RobotConfig, SensorConfig, SynthConfig
from .episodes import write_episode
from .rig import Rig

TILE_M = 0.06  # tile side
PRESS_M = 0.004  # how far the pad presses into a tile
CONTACT_M = 0.002  # pad height below which it touches
TABLE_RGB = (150, 120, 90)
PAD_RGB = (55, 58, 66)
# Candidate tile centres on the table (x, y), in front of the arm; 4 x 3 cells.
GRID_X = [-0.15, -0.05, 0.05, 0.15]
GRID_Y = [-0.30, -0.40, -0.50]
PALETTE = [(220, 40, 40), (40, 170, 60), (40, 80, 220), (230, 200, 30), (200, 60, 200), (30, 200, 210),
           (240, 130, 20), (245, 245, 245)]


# --------------------------------------------------------------------------- appearance
def object_texture(cls: int, size: int = 32) -> np.ndarray:
    """(size, size, 3) uint8 texture of object class `cls`: a colour and a pattern."""
    y, x = np.mgrid[0:size, 0:size] / size
    patterns = [
        np.sin(2 * np.pi * 4 * y) > 0,  # horizontal stripes
        np.sin(2 * np.pi * 4 * x) > 0,  # vertical stripes
        (np.floor(x * 4) + np.floor(y * 4)) % 2 == 0,  # checker
        ((x * 4) % 1 - 0.5) ** 2 + ((y * 4) % 1 - 0.5) ** 2 < 0.09,  # dots
        np.sin(2 * np.pi * 3 * (x + y)) > 0,  # diagonal
        np.sin(2 * np.pi * 5 * np.hypot(x - 0.5, y - 0.5)) > 0,  # rings
        (np.sin(2 * np.pi * 4 * x) > 0.6) | (np.sin(2 * np.pi * 4 * y) > 0.6),  # grid lines
        (np.abs(x - 0.5) < 0.3) & (np.abs(y - 0.5) < 0.3),  # centred square
        np.sin(2 * np.pi * 2 * y) > 0,  # wide horizontal bands
        np.sin(2 * np.pi * 3 * (x - y)) > 0,  # anti-diagonal
        np.maximum(np.abs(x - 0.5), np.abs(y - 0.5)) % 0.2 < 0.1,  # concentric squares
        x < 0.5,  # two halves
    ]
    fg = np.array(PALETTE[cls % len(PALETTE)], dtype=float)
    bg = 0.35 * fg + 60
    m = patterns[cls % len(patterns)][..., None]
    return np.where(m, fg, bg).astype(np.uint8)


def imprint_height(cls: int, size: int) -> np.ndarray:
    """(size, size) relief in [0, 1] an object of class `cls` presses into the gel."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size - 0.5
    r = np.hypot(x, y)
    shapes = [
        r < 0.3,  # disc
        (np.abs(x) < 0.25) & (np.abs(y) < 0.25),  # square
        (y > -0.25) & (y < 0.3) & (np.abs(x) < (0.3 - y) * 0.55),  # triangle
        (r > 0.18) & (r < 0.32),  # ring
        ((np.abs(x) < 0.08) | (np.abs(y) < 0.08)) & (r < 0.35),  # cross
        (np.abs(np.abs(y) - 0.15) < 0.07) & (np.abs(x) < 0.32),  # two bars
        np.abs(x) + np.abs(y) < 0.32,  # diamond
        ((x * 5) % 1 - 0.5) ** 2 + ((y * 5) % 1 - 0.5) ** 2 < 0.06,  # dot array
        (x / 0.34) ** 2 + (y / 0.16) ** 2 < 1,  # flat ellipse
        (np.abs(np.abs(x) - 0.15) < 0.07) & (np.abs(y) < 0.32),  # two upright bars
        ((np.abs(x + 0.12) < 0.09) & (np.abs(y) < 0.3)) | ((np.abs(y - 0.21) < 0.09) & (np.abs(x) < 0.3)),  # L
        (y < 0.25) & (y > -0.3) & (np.abs(x) < (y + 0.3) * 0.55),  # inverted triangle
    ]
    ridges = 0.75 + 0.25 * np.sin(2 * np.pi * (3 + cls) * (x * np.cos(cls) + y * np.sin(cls)))
    h = shapes[cls % len(shapes)].astype(float) * ridges
    # soften edges a little, like a gel does
    k = np.array([0.25, 0.5, 0.25])
    for axis in (0, 1):
        h = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), axis, h)
    return h


def tactile_image(cls: int | None, depth: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """GelSight-like image: neutral gel + marker dots; on contact a lit relief of the class."""
    img = np.empty((size, size, 3))
    img[:] = (185, 190, 200)
    yy, xx = np.mgrid[0:size, 0:size]
    step = size / 8
    markers = ((xx % step - step / 2) ** 2 + (yy % step - step / 2) ** 2) < (size / 60 + 1) ** 2
    if cls is not None and depth > 0:
        h = imprint_height(cls, size) * depth
        gy, gx = np.gradient(h * size / 6)
        img[..., 0] += 90 * gx  # red light from the side: x slope
        img[..., 1] += 90 * gy  # green light from above: y slope
        img[..., 2] -= 70 * h  # pressed area darkens in blue
    img[markers] *= 0.35
    img += rng.normal(0, 2.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- drawing
def _homography(dst: np.ndarray, src: np.ndarray) -> list[float]:
    """PIL PERSPECTIVE coefficients mapping output pixels `dst` (4, 2) to input `src` (4, 2)."""
    a = []
    for (x, y), (u, v) in zip(dst, src):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.array(a), src.reshape(-1)).tolist()


class Canvas:
    """One camera image being drawn in painter's order."""

    def __init__(self, cam, T_world_cam: np.ndarray, background: Image.Image):
        self.cam = cam
        self.T_cam_world = np.linalg.inv(T_world_cam)
        self.img = background.copy()
        self.draw = ImageDraw.Draw(self.img)

    def to_pixels(self, pts_world: np.ndarray) -> np.ndarray | None:
        p = pts_world @ self.T_cam_world[:3, :3].T + self.T_cam_world[:3, 3]
        if (p[:, 2] <= NEAR_M).any():
            return None  # (partly) behind the camera: not drawn
        return self.cam.project(p)

    def quad(self, corners_world: np.ndarray, texture: np.ndarray | None, fill=None, outline=None) -> None:
        uv = self.to_pixels(corners_world)
        if uv is None or np.abs(uv).max() > 1e4:
            return
        poly = [tuple(p) for p in uv]
        if texture is None:
            self.draw.polygon(poly, fill=fill, outline=outline)
            return
        h, w = texture.shape[:2]
        src = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=float)
        try:
            coeffs = _homography(uv, src)
        except np.linalg.LinAlgError:
            return
        warped = Image.fromarray(texture).transform(self.img.size, Image.Transform.PERSPECTIVE, coeffs,
                                                    Image.Resampling.BILINEAR)
        mask = Image.new("L", self.img.size, 0)
        ImageDraw.Draw(mask).polygon(poly, fill=255)
        self.img.paste(warped, (0, 0), mask)
        if outline is not None:
            self.draw.polygon(poly, outline=outline)

    def polyline(self, pts_world: np.ndarray, width: int, fill) -> None:
        uv = self.to_pixels(pts_world)
        if uv is not None:
            self.draw.line([tuple(p) for p in uv], fill=fill, width=width, joint="curve")


def tile_corners(cx: float, cy: float, z: float = 0.0) -> np.ndarray:
    h = TILE_M / 2
    return np.array([[cx - h, cy - h, z], [cx + h, cy - h, z], [cx + h, cy + h, z], [cx - h, cy + h, z]])


def table_background(cam, T_world_cam: np.ndarray) -> Image.Image:
    """The table (and, for a world camera, the room behind it)."""
    if cam.mount != "world":  # a wrist camera looks down at the table: it fills the view
        return Image.new("RGB", (cam.width, cam.height), TABLE_RGB)
    c = Canvas(cam, T_world_cam, Image.new("RGB", (cam.width, cam.height), (70, 75, 85)))
    c.quad(np.array([[-0.6, -0.9, 0], [0.6, -0.9, 0], [0.6, 0.3, 0], [-0.6, 0.3, 0]]), None, fill=TABLE_RGB)
    return c.img


# --------------------------------------------------------------------------- motion
@dataclass
class EpisodePlan:
    """One arm's tiles, in WORLD coordinates: touched (visiting order) and distractors."""

    tiles: list[tuple[float, float, int]]  # (x, y, class)
    distractors: list[tuple[float, float, int]]


def episode_classes(cfg: SynthConfig, index: int, arm: int = 0, n_arms: int = 1) -> list[int]:
    """The object classes episode `index` touches: consecutive entries of one seeded
    permutation of all classes, so every class is touched equally often and consecutive
    episodes touch different objects (held-out contact events are then rarely of the
    same class, which touch and sight could not tell apart)."""
    perm = np.random.default_rng([cfg.seed, 7]).permutation(cfg.object_classes)
    first = (index * n_arms + arm) * cfg.touches
    return [int(perm[(first + j) % cfg.object_classes]) for j in range(cfg.touches)]


def plan_episode(cfg: SynthConfig, rng: np.random.Generator, base: np.ndarray | None = None,
                 classes: list[int] | None = None) -> EpisodePlan:
    """Tiles on the table cells in front of an arm (cells are in the arm's base frame)."""
    base = np.eye(4) if base is None else base
    n = cfg.touches + cfg.distractors
    cells = [(x, y) for x in GRID_X for y in GRID_Y]
    if n > len(cells):
        raise ValueError(f"synth.touches + synth.distractors = {n}, the table has {len(cells)} tile places")
    chosen = rng.choice(len(cells), size=n, replace=False)
    local = [(cells[i][0] + rng.uniform(-0.012, 0.012), cells[i][1] + rng.uniform(-0.012, 0.012)) for i in chosen]
    pos = [tuple((base @ np.array([x, y, -base[2, 3], 1.0]))[:2]) for x, y in local]  # onto the table, z = 0
    classes = classes if classes is not None else [int(c) for c in rng.permutation(cfg.object_classes)[: cfg.touches]]
    touched = [(*local[i], *pos[i], int(classes[i % len(classes)])) for i in range(cfg.touches)]
    others = [c for c in range(cfg.object_classes) if c not in {t[4] for t in touched}] or list(range(cfg.object_classes))
    distract = [(*pos[cfg.touches + i], int(rng.choice(others))) for i in range(cfg.distractors)]
    order = sorted(touched, key=lambda t: t[0])  # left to right along the arm's own x axis
    return EpisodePlan([(t[2], t[3], t[4]) for t in order], distract)


class _IK:
    """Joint targets for 'sensor at world (x, y, z), pointing down', seeded from the last
    solution so the arm stays in one branch."""

    def __init__(self, rig: Rig, arm_name: str, sensor_name: str, gripper: float | None):
        from spatialmath import SE3

        self.SE3 = SE3
        self.arm = rig.arms[arm_name]
        sensor = rig.sensors[sensor_name]
        self.mount = sensor.world_poses(np.eye(4)[None], None if gripper is None else np.array([gripper]))[0] \
            if sensor.finger_offset != "none" else sensor.T_flange_sensor  # the finger offset while pressing
        self.q = np.array([1.3, 0.6, 1.7, -0.8, -1.57, 2.9])[: self.arm.n_joints]

    def solve(self, x: float, y: float, z: float) -> np.ndarray:
        target = np.eye(4)
        target[:3, :3] = np.diag([1.0, -1.0, -1.0])  # tool z pointing down
        target[:3, 3] = [x, y, z]
        flange = np.linalg.inv(self.arm.base) @ target @ np.linalg.inv(self.mount)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sol = self.arm.robot.ikine_LM(self.SE3(flange, check=False), q0=self.q, seed=0, ilimit=200, slimit=20)
        if not sol.success or np.abs(sol.q - self.q).max() > 2.0:
            raise RuntimeError(f"synth: no smooth IK solution for the sensor of arm '{self.arm.name}' at "
                               f"({x:.3f}, {y:.3f}, {z:.3f}); move robot.arms.{self.arm.name}.base or the cameras")
        self.q = np.asarray(sol.q, dtype=float)
        return self.q.copy()


def _min_jerk(n: int) -> np.ndarray:
    s = np.linspace(0, 1, n + 1)[1:]
    return 10 * s**3 - 15 * s**4 + 6 * s**5


GRIP_HOVER, GRIP_PRESS = 0.3, 0.6  # normalised gripper commands: squeeze a little while pressing


def plan_motion(rig: Rig, arm_name: str, sensor_name: str, plan: EpisodePlan, frames_per_touch: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(T, n_joints) joint trajectory and (T,) index of the tile in contact (-1 for none)."""
    ik = _IK(rig, arm_name, sensor_name, GRIP_PRESS)
    hover = 0.10
    home = rig.arms[arm_name].base @ np.array([0.0, -0.40, 0.0, 1.0])
    start = ik.solve(home[0], home[1], 0.20)
    # one touch = move above the tile, press down, hold, lift (fractions of frames_per_touch)
    n_down = max(1, frames_per_touch // 6)
    n_hold = max(1, frames_per_touch // 5)
    n_up = max(1, frames_per_touch // 6)
    n_move = frames_per_touch - n_down - n_hold - n_up
    qs, touching = [start[None]], [-1]
    current = start
    for k, (x, y, _) in enumerate(plan.tiles):
        above = ik.solve(x, y, hover)
        press = ik.solve(x, y, -PRESS_M)
        for goal, n, contact in ((above, n_move, -1), (press, n_down, -1), (press, n_hold, k), (above, n_up, -1)):
            seg = current + _min_jerk(n)[:, None] * (goal - current)
            qs.append(seg)
            touching += [contact] * n
            current = goal
    q = np.concatenate(qs)[: 1 + frames_per_touch * len(plan.tiles)]
    q = q + rng.normal(0, 2e-4, q.shape)  # a teleoperator's hand is not perfectly still
    return q, np.array(touching[: len(q)])


# --------------------------------------------------------------------------- episodes
def render_episode(cfg: SynthConfig, rig: Rig, index: int) -> dict:
    """Everything of one demo episode: qpos, action, images, tactile and the truth
    (`contact_class`: sensor -> (T,) class of the touched object, -1 without contact).
    Every arm that carries a sensor runs its own touch plan (bimanual rigs too)."""
    rng = np.random.default_rng([cfg.seed, index])
    workers = [(a, next(s for s in rig.sensors if rig.sensors[s].arm == a))
               for a in rig.arms if any(s.arm == a for s in rig.sensors.values())]
    if not workers:
        raise ValueError("synth: no sensor is mounted on any arm (sensors.<name>.arm)")
    T = 1 + cfg.frames_per_touch * cfg.touches
    qpos = np.zeros((T, rig.qpos_width()))
    plans, touching = {}, {}
    for i, (arm_name, sensor_name) in enumerate(workers):
        arm = rig.arms[arm_name]
        plans[sensor_name] = plan_episode(cfg, rng, arm.base, episode_classes(cfg, index, i, len(workers)))
        q, touching[sensor_name] = plan_motion(rig, arm_name, sensor_name, plans[sensor_name], cfg.frames_per_touch, rng)
        qpos[:, arm.cfg.qpos_start: arm.cfg.qpos_start + arm.n_joints] = q
        if arm.cfg.gripper_index is not None:
            qpos[:, arm.cfg.gripper_index] = np.where(touching[sensor_name] >= 0, GRIP_PRESS, GRIP_HOVER)
    action = np.concatenate([qpos[1:], qpos[-1:]])  # teleoperation target: the next commanded qpos

    geo = rig.episode_geometry(qpos, margin_px=0.0)
    pads = {s: rig.sensors[s].surface_world(geo.sensor_pose[s]) for _, s in workers}  # (T, 4, 3)
    links = {a: (rig.arms[a].base @ rig.arms[a].chain.fkine(rig.arms[a].joints(qpos), all_joints=True))[..., :3, 3]
             for a, _ in workers}  # (T, J+1, 3)
    textures = {c: object_texture(c) for c in range(cfg.object_classes)}
    all_tiles = [t for plan in plans.values() for t in plan.tiles + plan.distractors]

    images = {name: np.empty((T, cam.height, cam.width, 3), np.uint8) for name, cam in rig.cameras.items()}
    backgrounds = {name: table_background(cam, geo.camera_pose[name][0]) for name, cam in rig.cameras.items()}
    for t in range(T):
        for name, cam in rig.cameras.items():
            canvas = Canvas(cam, geo.camera_pose[name][t], backgrounds[name])
            for x, y, c in all_tiles:
                canvas.quad(tile_corners(x, y), textures[c])
            for arm_name, sensor_name in workers:
                if cam.mount == "world":
                    canvas.polyline(np.vstack([links[arm_name][t], geo.sensor_pose[sensor_name][t, :3, 3]]), 5,
                                    (200, 200, 205))
                k = touching[sensor_name][t]
                if k >= 0:
                    canvas.quad(pads[sensor_name][t], textures[plans[sensor_name].tiles[k][2]], outline=(20, 20, 20))
                else:
                    canvas.quad(pads[sensor_name][t], None, fill=PAD_RGB, outline=(230, 230, 230))
            img = np.asarray(canvas.img, dtype=np.int16) + rng.integers(-4, 5, (cam.height, cam.width, 3))
            images[name][t] = np.clip(img, 0, 255).astype(np.uint8)
    tactile, contact_class = {}, {}
    for _, s in workers:
        sensor_z = geo.sensor_pose[s][:, 2, 3]
        depth = np.clip((CONTACT_M - sensor_z) / (CONTACT_M + PRESS_M), 0, 1)
        contact_class[s] = np.array([plans[s].tiles[k][2] if k >= 0 else -1 for k in touching[s]])
        tactile[s] = np.stack([tactile_image(contact_class[s][t] if contact_class[s][t] >= 0 else None,
                                             float(depth[t]), cfg.tactile_size, rng) for t in range(T)])
    return {"qpos": qpos, "action": action, "images": images, "tactile": tactile,
            "contact_class": contact_class, "plans": plans}


def run_synth(cfg: SynthConfig, robot: RobotConfig, sensors: dict[str, SensorConfig],
              cameras: dict[str, CameraConfig], out_dir: str | Path) -> Path:
    """Write the demo episodes (atomically) to `out_dir`/episodes."""
    from .atomic import atomic_dir

    out = Path(out_dir) / "episodes"
    rig = Rig(robot, sensors, cameras)
    with atomic_dir(out) as tmp:
        for i in tqdm(range(cfg.episodes), desc="synth: rendering episodes", unit="ep"):
            ep = render_episode(cfg, rig, i)
            write_episode(tmp / f"episode_{i}.hdf5", ep["qpos"], ep["action"], ep["images"], ep["tactile"],
                          layout=cfg.layout, jpeg_quality=cfg.jpeg_quality)
    return out
