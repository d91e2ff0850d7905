"""Open-loop scores on the held-out (val) episodes, from the caches and the exported policy:
action error in joint units (degrees for arm joints, the gripper's own unit), first action
and whole chunk, per joint and per horizon, for the policy and two baselines (hold the
current qpos, constant-velocity extrapolation), and open-loop replay along each episode with
and without temporal ensembling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import EvalConfig
from ..data.caches import Caches, chunk_window
from ..data.codec import ActionCodec
from ..model.policy import TemporalEnsembler, load_model
from .alignment import alignment
from .reliance import predict_chunks, touch_reliance

BATCH = 64


def joint_units(x: np.ndarray, angle_columns: list[int]) -> np.ndarray:
    """(..., D) radians -> degrees on the arm-joint columns; other columns unchanged."""
    out = np.array(x, dtype=float, copy=True)
    if angle_columns:
        out[..., angle_columns] = np.rad2deg(out[..., angle_columns])
    return out


def chunk_targets(action: np.ndarray, starts: np.ndarray, ends: np.ndarray, rows: np.ndarray, chunk: int, shift: int):
    """Ground-truth chunks (R, k, D) and validity (R, k) for global rows, per episode bounds."""
    R, D = len(rows), action.shape[1]
    target = np.zeros((R, chunk, D))
    valid = np.zeros((R, chunk), bool)
    for i, (row, s, e) in enumerate(zip(rows, starts, ends, strict=True)):
        a0, n = chunk_window(int(row), int(s), int(e), chunk, shift)
        target[i, :n] = action[a0: a0 + n]
        valid[i, :n] = True
    return target, valid


def baselines(qpos: np.ndarray, rows: np.ndarray, starts: np.ndarray, chunk: int) -> dict[str, np.ndarray]:
    """hold: qpos[t] at every horizon; constant velocity: qpos[t] + (h + 1) * (qpos[t] - qpos[t-1])."""
    q = qpos[rows]  # (R, D)
    prev = qpos[np.maximum(rows - 1, starts)]
    h = np.arange(1, chunk + 1)[None, :, None]
    return {"hold": np.repeat(q[:, None], chunk, axis=1), "const_vel": q[:, None] + h * (q - prev)[:, None]}


def action_errors(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> dict:
    """pred/target (R, k, D) in joint units -> first-action and chunk L1 per joint and mean,
    and L1 by horizon."""
    err = np.abs(pred - target)  # (R, k, D)
    v = valid[..., None]
    per_joint_chunk = (err * v).sum((0, 1)) / np.maximum(v.sum((0, 1)), 1)
    first = err[:, 0][valid[:, 0]]
    per_joint_first = first.mean(0) if len(first) else np.full(err.shape[-1], np.nan)
    horizon = (err.mean(-1) * valid).sum(0) / np.maximum(valid.sum(0), 1)
    return {"first_l1": float(per_joint_first.mean()), "chunk_l1": float(per_joint_chunk.mean()),
            "per_joint_first": per_joint_first.tolist(), "per_joint_chunk": per_joint_chunk.tolist(),
            "horizon": horizon.tolist()}


def replay(chunks: np.ndarray, k: float, ensemble: bool) -> np.ndarray:
    """Executed actions (T, D) of an open-loop replay from per-step chunk predictions (T, c, D):
    with ensembling, every step averages all chunks covering it; without, a new chunk is
    taken every c steps and executed in full (ACT without ensembling)."""
    T, c, _ = chunks.shape
    if ensemble:
        ens = TemporalEnsembler(c, k)
        return np.stack([ens.step(chunks[t]) for t in range(T)])
    return np.stack([chunks[t - t % c][t % c] for t in range(T)])


def load_trained(train_dir: Path, device):
    """The exported policy of a train stage's output and its HSA heads (None without HSA)."""
    policy, hsa, meta = load_model(Path(train_dir) / "policy")
    return policy.to(device), (hsa.to(device) if hsa is not None else None), meta


def open_loop(cfg: EvalConfig, caches: Caches, rows: np.ndarray, train_dir: Path, device) -> tuple[dict, dict, dict]:
    """Action errors against baselines, open-loop replay and alignment on held-out frames.
    -> (metrics, per-model error results, the loaded policy and HSA heads)."""
    policy, hsa, meta = load_trained(train_dir, device)
    codec = ActionCodec.from_stats(caches.stats, meta["act"].get("relative_actions", False))
    angles = caches.geometry_info.angle_columns
    k, shift, offs = meta["act"]["chunk_size"], caches.manifest.action_shift, caches.manifest.offsets
    eps = np.array([caches.episode_of(int(r)) for r in rows])
    starts, ends = offs[eps], offs[eps + 1]

    pred = codec.decode(predict_chunks(policy, caches, rows, device), caches.qpos_raw[rows])  # (R, k, D) raw units
    target, valid = chunk_targets(caches.action_raw, starts, ends, rows, k, shift)
    to_units = lambda x: joint_units(x, angles)  # noqa: E731
    results = {"policy": action_errors(to_units(pred), to_units(target), valid)}
    if caches.qpos_raw.shape[1] == caches.action_raw.shape[1]:  # baselines need actions in qpos space
        for name, b in baselines(caches.qpos_raw, rows, starts, k).items():
            results[name] = action_errors(to_units(b), to_units(target), valid)

    replay_err = {"ensembled": [], "chunked": []}
    for e in caches.manifest.split("val"):
        sel = np.isin(rows, np.arange(offs[e], offs[e + 1]))
        recorded = to_units(target[sel][:, 0])
        for mode, ens in (("ensembled", True), ("chunked", False)):
            executed = to_units(replay(pred[sel], cfg.ensemble_k, ens))
            replay_err[mode].append(np.abs(executed - recorded)[valid[sel][:, 0]].mean())
    align = alignment(caches, policy, hsa, rows, device, meta["hsa"]["positives"] if meta["hsa"] else None)
    reliance = touch_reliance(policy, caches, rows, codec, valid, to_units, device, base=to_units(pred))
    metrics = {
        "chunk_l1": results["policy"]["chunk_l1"], "first_l1": results["policy"]["first_l1"],
        **{f"{b}_chunk_l1": results[b]["chunk_l1"] for b in ("hold", "const_vel") if b in results},
        **{f"{b}_first_l1": results[b]["first_l1"] for b in ("hold", "const_vel") if b in results},
        "replay_l1_ensembled": float(np.mean(replay_err["ensembled"])),
        "replay_l1_chunked": float(np.mean(replay_err["chunked"])),
        "hsa_enabled": hsa is not None,
        "alignment": align,
        "touch_reliance": reliance,
        "units": "degrees for arm joints, raw units for other columns",
        "val_frames": int(len(rows)),
    }
    if "hold" in results:
        metrics["chunk_l1_vs_hold"] = metrics["chunk_l1"] / max(metrics["hold_chunk_l1"], 1e-12)
    return metrics, results, {"policy": policy, "hsa": hsa}
