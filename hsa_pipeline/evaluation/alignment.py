"""Does touch line up with sight? On held-out frames, the policy's tactile query against
the camera tokens, in its own HSA heads (cosine between adapter outputs without HSA):

  retrieval      tactile -> camera: top-1 and top-5 among the positives of the other frames
  localisation   the best-matching token of the image lies inside the box

each against both targets (TARGETS): where the sensor is while it touches (the published
HSA's positive) and where its touch next changes (the recipe's), with their chance levels
and the target this policy's HSA trained on.

Retrieval counts a hit when the retrieved frame belongs to the SAME EVENT (for the sensor
now: the same uninterrupted run of contact frames; for the next change: frames heading for
the same change): frames of one press are near copies of each other, so asking for the
exact frame would measure noise. The chance level uses the same rule.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..data.caches import Caches
from ..model.act import ACTPolicy
from ..model.hsa import HSALoss, masked_mean

BATCH = 64


def contact_events(rows: np.ndarray, contact: np.ndarray, episode_of) -> np.ndarray:
    """An id per row: rows of one uninterrupted contact run in one episode share an id."""
    ids = np.full(len(rows), -1)
    current, prev_row, prev_ep = -1, None, None
    for i, r in enumerate(rows):
        ep = episode_of(int(r))
        if contact[r] and (prev_row is None or r != prev_row + 1 or ep != prev_ep or not contact[prev_row]):
            current += 1
        ids[i] = current if contact[r] else -1
        prev_row, prev_ep = r, ep
    return ids


def retrieval(q: np.ndarray, p: np.ndarray, events: np.ndarray, ks=(1, 5)) -> dict[str, float]:
    """Tactile queries q (n, P) against candidates p (n, P); a hit is a candidate of the
    query's own event among the top k. Chance: the same for a random ranking."""
    n = len(q)
    if n < 2:
        return {}
    sim = q @ p.T
    order = np.argsort(-sim, axis=1)
    out = {"n": float(n)}
    for k in ks:
        kk = min(k, n)
        hits = (events[order[:, :kk]] == events[:, None]).any(1)
        same = (events[None, :] == events[:, None]).sum(1)  # candidates of the query's event
        # P(at least one of kk random candidates is from the event) = 1 - C(n-m, kk) / C(n, kk)
        chance = np.array([1 - math.comb(n - m, kk) / math.comb(n, kk) for m in same])
        out[f"top{k}"] = float(hits.mean())
        out[f"top{k}_chance"] = float(chance.mean())
    return out


# The two targets alignment is measured against: where the sensor is while it touches (the
# published HSA's positive) and where its touch next changes (the recipe's positive).
TARGETS = {"now": "frames in contact; the positive is the sensor's own box",
           "next_contact": "frames whose touch changes later; the positive is the box of where it changes"}


@torch.no_grad()
def alignment(caches: Caches, policy: ACTPolicy, hsa: HSALoss | None, rows: np.ndarray, device,
              trained_on: str | None = None) -> dict:
    """Retrieval and localisation on held-out frames, against both targets (TARGETS), each
    labelled with what it measures, its chance levels, and which one HSA trained on. A
    stream the policy is blind to (act.blind) is not measured: its adapter never learned
    from it, so any figure would describe random weights; `blind` lists them."""
    blind = set(policy.cfg.blind)
    out: dict = {"trained_on": trained_on, "blind": sorted(blind)}
    for target, meaning in TARGETS.items():
        boxes, visible, _ = caches.token_boxes(target)
        views = {"measures": meaning}
        for group in caches.sensor_cameras:
            if group.sensor in blind:
                continue
            if target == "now":
                events_of = caches.contact[group.sensor]  # a contact run is one event
                eligible = caches.contact[group.sensor]
            else:
                events_of = caches.next_row[group.sensor]  # frames heading for one change share it
                eligible = caches.next_row[group.sensor] >= 0
            for cam in (c for c in group.cameras if c not in blind):
                key = group.key(cam)
                use = rows[visible[key][rows] & eligible[rows] & boxes[key][rows].any((1, 2))]
                if len(use) < 2:
                    continue
                events = (contact_events(use, events_of, caches.episode_of) if target == "now"
                          else np.unique(events_of[use], return_inverse=True)[1])
                role = ("wrist" if cam == group.wrist else "third_person" if len(group.third_persons) == 1
                        else f"third_person_{cam}")
                views[f"{group.sensor}_to_{role}"] = align_view(caches, policy, hsa, group.sensor, cam, use,
                                                               boxes[key], events, device)
        out[target] = views
    return out


def align_view(caches: Caches, policy: ACTPolicy, hsa: HSALoss | None, sensor: str, cam: str, use: np.ndarray,
               boxes: np.ndarray, events: np.ndarray, device) -> dict:
    """Tactile -> camera retrieval (a hit: a frame of the same event) and in-image
    localisation (the best-matching token inside the box) over rows `use`."""
    qs, ps, hits = [], [], []
    for s in range(0, len(use), BATCH):
        r = use[s: s + BATCH]
        tok = {n: torch.from_numpy(caches.tokens[n][r].astype(np.float32)).to(device) for n in (sensor, cam)}
        adapted = {n: policy.adapters[n](t) for n, t in tok.items()}  # (B, G*G, H)
        box = torch.from_numpy(boxes[r].reshape(len(r), -1)).to(device)
        t_mean = adapted[sensor].mean(1)
        if hsa is not None:  # the model's own alignment: its projection heads
            q = hsa.head_tactile(t_mean)
            p = hsa.head_vision(masked_mean(adapted[cam], box))
            tok_emb = hsa.head_vision(adapted[cam])
        else:  # no heads (plain ACT): cosine between adapter outputs
            q = torch.nn.functional.normalize(t_mean, dim=-1)
            p = torch.nn.functional.normalize(masked_mean(adapted[cam], box), dim=-1)
            tok_emb = torch.nn.functional.normalize(adapted[cam], dim=-1)
        best = torch.einsum("bp,bnp->bn", q, tok_emb).argmax(1)
        hits.append(box.gather(1, best[:, None])[:, 0].cpu().numpy())
        qs.append(q.cpu().numpy())
        ps.append(p.cpu().numpy())
    res = retrieval(np.concatenate(qs), np.concatenate(ps), events)
    res["loc_acc"] = float(np.concatenate(hits).mean())
    res["loc_chance"] = float(boxes[use].mean())
    return res


def alignment_rows(align: dict, trained_only: bool = False) -> list[tuple[str, dict]]:
    """metrics["alignment"] as labelled rows ('<target>: <sensor>_to_<camera>', figures);
    `trained_only`: the target HSA trained on (both without HSA)."""
    targets = [t for t in TARGETS if not trained_only or align.get("trained_on") in (None, t)]
    return [(f"{t}: {k}", v) for t in targets for k, v in (align.get(t) or {}).items() if isinstance(v, dict)]
