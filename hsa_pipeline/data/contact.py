"""When a tactile sensor is in contact, read from its own images.

Every frame is compared with the sensor's no-contact look: the mean absolute difference of
small thumbnails, 0..1 (the contact score). The no-contact look comes from frames that are
free of contact by the way recordings are made, never from the bulk of the stream, so
contact may last most of an episode (a claw holding what it carries) without turning the
reference into a contact image:

  episode_start   the per-pixel median of each episode's first `reference_frames` frames
                  (teleoperation starts with the claw open: the pad on bare gel); follows
                  the slow drift of a gel's look from one episode to the next
  dataset_start   the median of those first frames over every episode of the sensor:
                  robust when a few episodes start in contact, assumes no drift

A frame is in contact from the first frame whose score rises above `enter` until the score
falls below `exit` (hysteresis: noise around one threshold makes no flicker); then gaps
and runs of contact shorter than `min_frames` are dropped. An episode whose first frames
look unlike the sensor's usual rest look is named in a warning (it may start in contact).

Used by the prepare stage (contact.json: scores and flags of every frame) and by
`hsa calibrate --check`; everything that asks "in contact?" downstream reads the flags the
geometry stage stores (sensors whose images carry no contact signal can use kinematics
there instead: `sensors.<name>.contact`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import ContactConfig

THUMB = (32, 32)  # contact scores compare small thumbnails: cheap and robust to noise


def thumbnail(img: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize(THUMB, Image.Resampling.BILINEAR), dtype=np.float32)


@dataclass
class ContactTrace:
    """One episode of one sensor: its score and contact flag per frame."""

    score: np.ndarray  # (T,) float, 0..1: difference from the no-contact look
    contact: np.ndarray  # (T,) bool


def difference(thumbs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(T, h, w, 3) thumbnails, (h, w, 3) reference -> (T,) mean absolute difference, 0..1."""
    return np.abs(thumbs - reference).mean(axis=(1, 2, 3)) / 255.0


def hysteresis(score: np.ndarray, enter: float, exit: float) -> np.ndarray:
    """(T,) scores -> (T,) bool: on when the score rises above `enter`, off again only when
    it falls below `exit` (exit <= enter)."""
    out = np.zeros(len(score), bool)
    on = False
    for t, s in enumerate(score):
        on = s > enter if not on else s >= exit
        out[t] = on
    return out


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(T,) bool -> [(start, stop)) of every run of True."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def drop_short(flags: np.ndarray, min_frames: int) -> np.ndarray:
    """Fill gaps shorter than `min_frames` inside contact, then drop contact runs shorter
    than it (a flicker is neither a release nor a touch)."""
    out = flags.copy()
    for start, stop in runs(~out):
        if start > 0 and stop < len(out) and stop - start < min_frames:
            out[start:stop] = True
    for start, stop in runs(out):
        if stop - start < min_frames:
            out[start:stop] = False
    return out


def start_look(thumbs: np.ndarray, cfg: ContactConfig) -> np.ndarray:
    """(T, h, w, 3) thumbnails of one episode -> (h, w, 3) its no-contact look: the per-pixel
    median of its first `cfg.reference_frames` frames."""
    return np.median(thumbs[: cfg.reference_frames], axis=0)


def rest_look(starts: list[np.ndarray]) -> np.ndarray:
    """The sensor's usual no-contact look: the median of every episode's start look."""
    return np.median(np.stack(starts), axis=0)


def doubtful_starts(starts: dict[str, np.ndarray], cfg: ContactConfig) -> list[str]:
    """Episode ids whose start look differs from the sensor's rest look by more than
    `cfg.enter`: those episodes may start in contact (their episode_start reference is then
    a contact image)."""
    rest = rest_look(list(starts.values()))
    return [k for k, s in starts.items() if difference(s[None], rest)[0] > cfg.enter]


def trace(thumbs: np.ndarray, reference: np.ndarray, cfg: ContactConfig) -> ContactTrace:
    """(T, h, w, 3) thumbnails of one episode against its no-contact `reference` -> scores
    and contact flags (hysteresis, then runs and gaps under min_frames dropped)."""
    score = difference(thumbs, reference)
    return ContactTrace(score, drop_short(hysteresis(score, cfg.enter, cfg.exit), cfg.min_frames))


def contact_from_height(height: np.ndarray, tolerance_m: float) -> np.ndarray:
    """The kinematic fallback (`sensors.<name>.contact: kinematics`): (T,) sensor heights ->
    (T,) bool, in contact within `tolerance_m` of the episode's lowest height. Only right for
    a sensor pressing down on one surface; wrong for a claw's pads, presses at several
    heights, low passes without touching and episodes without contact."""
    return height <= height.min() + tolerance_m


def next_change(contact: np.ndarray) -> np.ndarray:
    """(T,) contact flags -> (T,) the frame where this sensor's touch next CHANGES, -1 when
    it does not: out of contact, the first frame of the next contact (where it will touch);
    in contact, the last frame of this contact (where it lets go: where a carried object is
    put down). An episode without contact has no such frame anywhere."""
    target = np.full(len(contact), -1)
    prev_stop = 0
    for start, stop in runs(contact):
        target[prev_stop:start] = start  # approaching this contact
        target[start:stop] = stop - 1  # in it: where it ends
        prev_stop = stop
    return target
