"""How the touch world looks: object textures, the tactile (GelSight-like) image, and the
painter's-order drawing of a scene into a calibrated camera. One renderer for the demo
episodes and for closed-loop evaluation.

Honest about where things are (every point goes through the camera model of params.yaml),
not photorealistic: PIL polygons and perspective-warped textures.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ..geometry.cameras import NEAR_M, Camera

TILE_M = 0.08  # side of an object tile on the table
TABLE_RGB = (150, 120, 90)
ROOM_RGB = (70, 75, 85)
PAD_RGB = (55, 58, 66)  # the sensor pad, seen from outside
PROBE_RGB = (128, 128, 132)  # the match task's probe: the same grey cap whatever its class
PROBE_SIDE_RGB = (105, 105, 110)  # the sides of a claw task's probe block
ARM_RGB = (200, 200, 205)
PALETTE = [(220, 40, 40), (40, 170, 60), (40, 80, 220), (230, 200, 30), (200, 60, 200), (30, 200, 210),
           (240, 130, 20), (245, 245, 245)]
MAX_CLASSES = 12


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


def probe_texture(size: int = 32) -> np.ndarray:
    """The probe's visible top: one grey cap with a rim, identical for every class."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = PROBE_RGB
    rim = max(1, size // 10)
    img[:rim], img[-rim:], img[:, :rim], img[:, -rim:] = 90, 90, 90, 90
    return img


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
    k = np.array([0.25, 0.5, 0.25])  # soften the edges a little, like a gel does
    for axis in (0, 1):
        h = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), axis, h)
    return h


def tactile_image(cls: int | None, depth: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """GelSight-like image: neutral gel + marker dots; in contact, the lit relief of the
    object's class, deeper for a harder press. What the class looks like in a camera
    (object_texture) and how it feels (this) are related, not identical."""
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
    for (x, y), (u, v) in zip(dst, src, strict=True):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.array(a), src.reshape(-1)).tolist()


class Canvas:
    """One camera image being drawn in painter's order (later calls draw on top)."""

    def __init__(self, cam: Camera, T_world_cam: np.ndarray, background: Image.Image):
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
        """A planar quadrilateral (4, 3), filled with a colour or a perspective-warped texture."""
        uv = self.to_pixels(corners_world)
        if uv is None or np.abs(uv).max() > 1e4:
            return
        poly = [tuple(p) for p in uv]
        if texture is None:
            self.draw.polygon(poly, fill=fill, outline=outline)
            return
        # warp only the polygon's bounding box (clipped to the image), not the whole image
        x0, y0 = np.floor(np.maximum(uv.min(0), 0)).astype(int)
        x1, y1 = np.ceil(np.minimum(uv.max(0), [self.img.width, self.img.height])).astype(int)
        if x1 <= x0 or y1 <= y0:
            return
        h, w = texture.shape[:2]
        src = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=float)
        try:
            coeffs = _homography(uv - [x0, y0], src)
        except np.linalg.LinAlgError:
            return
        size = (int(x1 - x0), int(y1 - y0))
        warped = Image.fromarray(texture).transform(size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
        mask = Image.new("L", size, 0)
        ImageDraw.Draw(mask).polygon([(u - x0, v - y0) for u, v in poly], fill=255)
        self.img.paste(warped, (int(x0), int(y0)), mask)
        if outline is not None:
            self.draw.polygon(poly, outline=outline)

    def solid(self, faces: dict[str, np.ndarray], texture: np.ndarray, fill) -> None:
        """A convex solid from its planar faces ({name: (4, 3)}): the one named 'top' gets
        `texture`, the others the colour `fill`; drawn farthest face first."""
        eye = np.linalg.inv(self.T_cam_world)[:3, 3]
        for name, corners in sorted(faces.items(), key=lambda kv: -np.linalg.norm(kv[1].mean(0) - eye)):
            if name == "top":
                self.quad(corners, texture)
            else:
                self.quad(corners, None, fill=fill, outline=(70, 70, 74))

    def polyline(self, pts_world: np.ndarray, width: int, fill) -> None:
        uv = self.to_pixels(pts_world)
        if uv is not None:
            self.draw.line([tuple(p) for p in uv], fill=fill, width=width, joint="curve")


def square_corners(cx: float, cy: float, side: float = TILE_M, z: float = 0.0) -> np.ndarray:
    """(4, 3) corners of an axis-aligned square on a horizontal plane."""
    h = side / 2
    return np.array([[cx - h, cy - h, z], [cx + h, cy - h, z], [cx + h, cy + h, z], [cx - h, cy + h, z]])


def table_background(cam: Camera, T_world_cam: np.ndarray) -> Image.Image:
    """The table (and, for a world camera, the room behind it)."""
    if cam.mount != "world":  # a wrist camera looks down at the table: it fills the view
        return Image.new("RGB", (cam.width, cam.height), TABLE_RGB)
    c = Canvas(cam, T_world_cam, Image.new("RGB", (cam.width, cam.height), ROOM_RGB))
    c.quad(np.array([[-0.6, -0.9, 0], [0.6, -0.9, 0], [0.6, 0.3, 0], [-0.6, 0.3, 0]]), None, fill=TABLE_RGB)
    return c.img


def add_sensor_noise(img: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """A camera's noise: +-4 grey levels per pixel and channel."""
    a = np.asarray(img, dtype=np.int16) + rng.integers(-4, 5, (img.height, img.width, 3))
    return np.clip(a, 0, 255).astype(np.uint8)
