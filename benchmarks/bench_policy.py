"""The control loop a real robot pays: `Policy` per control step with ViT-B-16 features of
3 cameras (640x480) + 1 tactile stream and the X-Trainer ACT (chunk 45, 512 / 3200,
4 / 7 layers), temporal ensembling included. p50 and p99 over the steps, split into
encode (preprocess + ViT) and act (ACT + ensembling).

    python benchmarks/bench_policy.py [--steps 50] [--device auto] [--compile reduce-overhead]

--compile: the encoder's vision tower and the ACT forward compiled (`Policy.compile`; CUDA
graphs with reduce-overhead); the compile is paid in the untimed warm-up steps.

Random weights: the same arithmetic as a trained policy.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from hsa_pipeline.config import ActConfig, FeaturesConfig
from hsa_pipeline.features.encoder import Encoder
from hsa_pipeline.model.act import ACTPolicy, ActShapes
from hsa_pipeline.model.policy import Policy, TemporalEnsembler

STREAMS = ["top", "left_wrist", "right_wrist", "tactile_left"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", default=None, help="a torch.compile mode for the control step (default: eager)")
    ap.add_argument("--json", help="also write the figures to this JSON file (scripts/gpu_check.sh's summary)")
    args = ap.parse_args()
    enc = Encoder(FeaturesConfig(model="ViT-B-16", pretrained=None, device=args.device), quiet=True)
    act = ActConfig(chunk_size=45, hidden_dim=512, dim_feedforward=3200, enc_layers=4, dec_layers=7, heads=8,
                    vae_enc_layers=4, grid_pool=2)
    shapes = ActShapes(qpos_dim=14, action_dim=14, streams=STREAMS, grid=enc.grid, token_dim=enc.width)
    stats = {k: {"mean": [0.0] * 14, "std": [1.0] * 14} for k in ("qpos", "action")}
    meta = {"act": act.__dict__, "shapes": shapes.__dict__, "stats": stats}
    policy = Policy(ACTPolicy(act, shapes).to(enc.device), enc, meta, enc.device).compile(args.compile)
    ens = TemporalEnsembler(act.chunk_size, 0.01)
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 255, (96, 96, 3) if s.startswith("tactile") else (480, 640, 3), dtype=np.uint8)
              for s in STREAMS}
    qpos = np.zeros(14)
    sync = torch.cuda.synchronize if enc.device.type == "cuda" else (lambda: None)
    encode_ms, act_ms = [], []
    for i in range(args.steps + 5):
        t0 = time.perf_counter()
        tokens = policy.features(images)
        sync()
        t1 = time.perf_counter()
        ens.step(policy.predict_chunk(None, qpos, tokens))
        t2 = time.perf_counter()
        if i >= 5:  # warm-up excluded
            encode_ms.append(1e3 * (t1 - t0))
            act_ms.append(1e3 * (t2 - t1))
    total = np.add(encode_ms, act_ms)
    dev = (torch.cuda.get_device_name() if enc.device.type == "cuda"
           else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    print(f"device: {dev}; ViT-B-16 on 3 cameras 640x480 + 1 tactile, X-Trainer ACT, {args.steps} steps, "
          f"{'compiled (' + args.compile + ')' if args.compile else 'eager'}")
    figures = {"device": dev, "steps": args.steps, "compile": args.compile}
    for name, xs in (("encode", encode_ms), ("ACT + ensembling", act_ms), ("control step", total)):
        print(f"{name:18s} p50 {np.percentile(xs, 50):8.1f} ms   p99 {np.percentile(xs, 99):8.1f} ms")
        figures[name] = {"p50_ms": float(np.percentile(xs, 50)), "p99_ms": float(np.percentile(xs, 99))}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
