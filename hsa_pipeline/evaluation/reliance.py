"""Does the policy act on what it feels? Offline measures on recorded held-out frames,
for any rig (no simulator, no class labels: only the recordings and the caches).

Touch reliance. For every held-out frame, predict the action chunk as the policy would
(z = 0), then again with one input replaced, and measure how far the chunk moves
(mean |change| over the chunk's valid steps and the joints, in joint units):

  tactile swap    every tactile stream's tokens from ANOTHER episode (the next one of
                  the dataset) at the same phase (same fraction of the episode): a
                  different touch, the same moment of the task
  tactile blank   every tactile stream's tokens zeroed (what a touch-blind policy sees)
  <camera> swap   one camera's tokens from the other episode at the same phase, the
                  yardstick: how much a change of sight moves the actions

Reported per phase of the episode, from the tactile contact scores prepare computed:
before the first contact, in contact, after contact (no contact now, some before).
`reliance` = tactile-swap change / the largest camera-swap change. Reading (per phase):
below 0.1 the actions do not depend on touch, 0.1-0.5 a little, above 0.5 they do.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.caches import Caches
from ..data.codec import ActionCodec

PHASES = ("before contact", "in contact", "after contact")
NONE_BELOW, SOME_BELOW = 0.1, 0.5  # reliance thresholds of the plain-language reading
BATCH = 64


def frame_phases(caches: Caches, rows: np.ndarray) -> np.ndarray:
    """(R,) phase index per row (PHASES) from the contact flags of every tactile stream."""
    offs = caches.manifest.offsets
    touching = np.zeros(caches.manifest.n_frames, bool)
    for flags in caches.contact.values():
        touching |= flags
    out = np.zeros(len(rows), int)
    for i, r in enumerate(rows):
        start = offs[caches.episode_of(int(r))]
        if touching[r]:
            out[i] = 1
        elif touching[start: r].any():
            out[i] = 2
    return out


def donor_rows(caches: Caches, rows: np.ndarray) -> np.ndarray:
    """For each row, the frame at the same fraction of the NEXT episode of the dataset
    (cyclic; any split, so one held-out episode is enough): another recording, the same
    moment of the task."""
    offs = caches.manifest.offsets
    n_eps = len(offs) - 1
    out = np.empty_like(rows)
    for i, r in enumerate(rows):
        e = caches.episode_of(int(r))
        length, donor = offs[e + 1] - offs[e], (e + 1) % n_eps
        frac = (r - offs[e]) / max(length - 1, 1)
        out[i] = offs[donor] + int(round(frac * (offs[donor + 1] - offs[donor] - 1)))
    return out


@torch.no_grad()
def predict_chunks(policy, caches: Caches, rows: np.ndarray, device, donors: np.ndarray | None = None,
                   swap: tuple[str, ...] = (), blank: tuple[str, ...] = ()) -> np.ndarray:
    """(R, k, Da) normalised chunk predictions with z = 0 (deployment mode) from the cached
    tokens; the streams in `swap` read the `donors` rows instead, those in `blank` are zeroed."""
    out = []
    for s in range(0, len(rows), BATCH):
        r = rows[s: s + BATCH]
        tok = {}
        for n in caches.streams:
            src = donors[s: s + BATCH] if n in swap else r
            t = torch.from_numpy(caches.tokens[n][src].astype(np.float32)).to(device)
            tok[n] = torch.zeros_like(t) if n in blank else t
        pred, _, _ = policy(torch.from_numpy(caches.qpos[r]).to(device), tok)
        out.append(pred.cpu().numpy())
    return np.concatenate(out)


def reading(reliance: float | None) -> str:
    if reliance is None or not np.isfinite(reliance):
        return "no frames"
    if reliance < NONE_BELOW:
        return "this policy's actions do not depend on touch"
    if reliance < SOME_BELOW:
        return "this policy's actions depend a little on touch"
    return "this policy's actions depend on touch"


def touch_reliance(policy, caches: Caches, rows: np.ndarray, codec: ActionCodec, valid: np.ndarray, to_units,
                   device, base: np.ndarray | None = None) -> dict:
    """The touch-reliance table of the docstring. `valid` (R, k) marks the chunk steps
    inside the episode; `to_units` turns raw actions into joint units (degrees); `base`
    the unchanged predictions in joint units when the caller has them already."""
    tactile = [s for s, role in caches.streams.items() if role == "tactile"]
    cameras = [s for s, role in caches.streams.items() if role != "tactile"]
    if not tactile or not len(rows):
        return {}
    donors = donor_rows(caches, rows)
    qraw = caches.qpos_raw[rows]

    def chunk(swap=(), blank=()):
        return to_units(codec.decode(predict_chunks(policy, caches, rows, device, donors, swap, blank), qraw))

    base = chunk() if base is None else base
    variants = {"tactile_swap": chunk(swap=tuple(tactile)), "tactile_blank": chunk(blank=tuple(tactile)),
                **{f"{c}_swap": chunk(swap=(c,)) for c in cameras}}
    v = valid[..., None]
    change = {k: (np.abs(p - base) * v).sum((1, 2)) / np.maximum(v.sum((1, 2)) * base.shape[-1], 1)
              for k, p in variants.items()}  # (R,) mean |change| per frame
    phase = frame_phases(caches, rows)
    out = {"units": "mean |change| of the predicted chunk, joint units (degrees)", "frames": int(len(rows))}
    for name, sel in [("all", np.ones(len(rows), bool))] + [(p, phase == i) for i, p in enumerate(PHASES)]:
        if not sel.any():
            out[name] = {"frames": 0}
            continue
        m = {k: float(c[sel].mean()) for k, c in change.items()}
        cam = max((m[f"{c}_swap"] for c in cameras), default=float("nan"))
        rel = m["tactile_swap"] / cam if cam > 0 else float("nan")
        out[name] = {"frames": int(sel.sum()), **m, "camera_swap": cam, "reliance": rel, "reading": reading(rel)}
    return out
