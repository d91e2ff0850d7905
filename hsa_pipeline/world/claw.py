"""The claw of the touch world: a tactile pad on one finger of an X-Trainer claw
(`sensors.<name>.finger_offset: left | right`), which touches by SQUEEZING what stands
between the fingers, at any height, instead of pressing down on the table.

The probe is a block standing on the table. The claw comes down around it, closes, and the
probe stops the fingers: the claw's measured opening (qpos) stays at the probe's width
while the command closes further, and how much further is how hard the pad squeezes (the
depth of the imprint in the tactile image). Squeezed hard enough, the probe is held and
moves with the claw; opened again, it drops where it is. Geometry in metres, heights
above the table, the claw centre (TCP) between the fingers.
"""

from __future__ import annotations

import numpy as np

from ..geometry.kinematics import claw_width

PROBE_SIDE_M = 0.025  # the probe block's footprint (square)
PROBE_HEIGHT_M = 0.05
SQUEEZE_RANGE_M = 0.012  # closing this far past the probe's width is a full squeeze (depth 1)
HOLD_SQUEEZE = 0.4  # a squeeze this deep holds the probe (lifts it with the claw)
GRASP_Z_M = PROBE_HEIGHT_M / 2  # the expert grasps the probe at mid-height (the pad inside the probe's side)
FINGER_WIDTH_M = 0.03  # a finger as wide as its pad (flange x): it touches a probe it overlaps
CLAW_OPEN, CLAW_SQUEEZE = 1.0, 0.2  # gripper commands: fully open (5.3 cm), and a firm squeeze (1.6 cm)


def command_for_width(width_m: float) -> float:
    """The gripper command whose claw opening is `width_m` (claw_width inverted; it rises
    monotonically from 1.25 cm at 0 to 5.3 cm at 1)."""
    grid = np.linspace(0.0, 1.0, 2001)
    return float(np.interp(width_m, claw_width(grid), grid))


PROBE_COMMAND = command_for_width(PROBE_SIDE_M)  # the fingers stop here on the probe


def tcp_poses(flange: np.ndarray, mount: np.ndarray) -> np.ndarray:
    """(T, 4, 4) flange poses -> (T, 4, 4) claw centres: the sensor mount's position with
    the finger offset removed, the flange's orientation (closing along flange y)."""
    shift = np.eye(4)
    shift[:3, 3] = mount[:3, 3]
    return flange @ shift


def between_fingers(tcp: np.ndarray, probe_xy: tuple[float, float], probe_bottom_z: float = 0.0) -> bool:
    """Is the probe between the claw's fingers? `tcp` (4, 4): the claw centre. The probe
    must fit between the open fingers across (flange y: closing then centres it, as a
    parallel gripper does), overlap the fingers along (flange x), and the fingertips must
    reach below the probe's top and stay above its bottom."""
    d = np.array([probe_xy[0], probe_xy[1], tcp[2, 3]]) - tcp[:3, 3]
    across, along = abs(d @ tcp[:3, 1]), abs(d @ tcp[:3, 0])
    fits = across <= (claw_width(CLAW_OPEN) - PROBE_SIDE_M) / 2
    overlaps = along < (PROBE_SIDE_M + FINGER_WIDTH_M) / 2
    return bool(fits and overlaps and probe_bottom_z < tcp[2, 3] < probe_bottom_z + PROBE_HEIGHT_M)


def squeeze_depth(command: float) -> float:
    """How hard the pad presses a probe between the fingers, 0..1, for a gripper command."""
    return float(np.clip((PROBE_SIDE_M - claw_width(command)) / SQUEEZE_RANGE_M, 0.0, 1.0))


def block_faces(x: float, y: float, bottom_z: float) -> dict[str, np.ndarray]:
    """The probe block standing at (x, y) with its bottom at `bottom_z`: 'top' and four
    sides, each (4, 3) corners."""
    h, z0, z1 = PROBE_SIDE_M / 2, bottom_z, bottom_z + PROBE_HEIGHT_M
    c = np.array([[x - h, y - h], [x + h, y - h], [x + h, y + h], [x - h, y + h]])
    faces = {"top": np.column_stack([c, np.full(4, z1)])}
    for i in range(4):
        a, b = c[i], c[(i + 1) % 4]
        faces[f"side{i}"] = np.array([[*a, z0], [*b, z0], [*b, z1], [*a, z1]])
    return faces
