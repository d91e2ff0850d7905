"""What serving costs: one control step in-process (`Policy` + temporal ensembling) against
the same step in a worker thread (where the server runs it), and through `hsa serve` on the loopback with openpi's client (its own
serialisation, websocket round trip, the server's inference and ensembling), p50 and p99,
the share of the served step spent packing and unpacking messages, and the same with the
images sent as JPEG (q90) instead of raw pixels: fewer bytes, more CPU.

    python benchmarks/bench_serve.py [--config demo|xtrainer] [--steps 30] [--device auto] [--compile MODE]

demo: the demo's rig and tiny encoder (top 256x192, wrist 192x144, tactile 64x64, ACT as
params.yaml). xtrainer: ViT-B-16 on 3 cameras 640x480 + 1 tactile 96x96 (random weights:
the same arithmetic), the X-Trainer ACT (chunk 45, 512 / 3200, 4 / 7 layers). --compile:
the policy compiled as `hsa serve --compile` does (`Policy.compile`), in-process and served.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from hsa_pipeline.config import ActConfig, FeaturesConfig
from hsa_pipeline.data.episodes import encode_jpeg
from hsa_pipeline.data.stores import POLICY_SCHEMA
from hsa_pipeline.features.encoder import Encoder
from hsa_pipeline.model.act import ACTPolicy, ActShapes
from hsa_pipeline.model.policy import Policy, TemporalEnsembler
from hsa_pipeline.serving.server import PolicyServer, ServerThread

CONFIGS = {
    "demo": {"model": "hsa-tiny-vit", "sizes": {"top": (192, 256), "wrist": (144, 192), "tactile": (64, 64)},
             "act": ActConfig(), "dim": 7},
    "xtrainer": {"model": "ViT-B-16", "sizes": {"top": (480, 640), "left_wrist": (480, 640), "right_wrist": (480, 640),
                                                "tactile_left": (96, 96)},
                 "act": ActConfig(chunk_size=45, hidden_dim=512, dim_feedforward=3200, enc_layers=4, dec_layers=7,
                                  heads=8, vae_enc_layers=4, grid_pool=2, touch_map=False), "dim": 14},
}


def export(directory: Path, name: str, device: str) -> Policy:
    """A policy directory as `train` writes it (random weights), loaded back."""
    c = CONFIGS[name]
    enc = Encoder(FeaturesConfig(model=c["model"], pretrained=None, device=device), quiet=True)
    streams = list(c["sizes"])
    shapes = ActShapes(qpos_dim=c["dim"], action_dim=c["dim"], streams=streams, grid=enc.grid, token_dim=enc.width,
                       tactile=[s for s in streams if s.startswith("tactile")])
    torch.manual_seed(0)
    model = ACTPolicy(c["act"], shapes)
    stats = {k: {"mean": [0.0] * c["dim"], "std": [1.0] * c["dim"]} for k in ("qpos", "action")}
    meta = {"schema_version": POLICY_SCHEMA, "act": asdict(c["act"]), "hsa": None, "shapes": asdict(shapes),
            "stats": stats, "action_shift": 0, "column_names": [f"q{i}" for i in range(c["dim"])],
            "features": {"model": c["model"], "pretrained": None, "block": -1, "resize": "stretch",
                         "streams": {s: "tactile" if s.startswith("tactile") else "wrist" if "wrist" in s
                                     else "third_person" for s in streams},
                         "mapping": {s: enc.mapping(w, h).to_dict() for s, (h, w) in c["sizes"].items()}}}
    import json

    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / "weights.pt")
    (directory / "policy.json").write_text(json.dumps(meta))
    return Policy.load(directory, device=device)


def pct(xs) -> str:
    return f"p50 {np.percentile(xs, 50):8.1f} ms   p99 {np.percentile(xs, 99):8.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=list(CONFIGS), default="demo")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", default=None, help="a torch.compile mode for the policy (default: eager)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        policy = export(Path(tmp) / "policy", args.config, args.device).compile(args.compile)
        rng = np.random.default_rng(0)
        obs = {s: rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for s, (h, w) in CONFIGS[args.config]["sizes"].items()}
        obs["qpos"] = np.zeros(CONFIGS[args.config]["dim"])
        sync = torch.cuda.synchronize if policy.device.type == "cuda" else (lambda: None)
        runs = {"in-process": [], "in-process, worker": [], "served, raw images": [], "served, JPEG q90": []}
        # The server infers in a worker thread; the same work in the main thread measured ~8%
        # slower here (ViT-B-16, 1 thread), so the fair baseline for the protocol's cost is the
        # in-process step on a worker thread too.
        pool = ThreadPoolExecutor(1)

        def in_worker():
            torch.set_num_threads(1)  # OpenMP's team size is per thread
            ens_w.step(policy.predict_chunk({s: obs[s] for s in policy.streams}, obs["qpos"]))
            sync()
        serial, jpeg_encode = [], []
        with ServerThread(PolicyServer(policy, str(Path(tmp) / "policy"), ensemble_k=0.01)) as port:
            client = WebsocketClientPolicy("127.0.0.1", port)
            ens, ens_w = TemporalEnsembler(policy.chunk_size, 0.01), TemporalEnsembler(policy.chunk_size, 0.01)
            for i in range(args.steps + 3):  # interleaved, so a load change hits all alike
                t0 = time.perf_counter()
                ens.step(policy.predict_chunk({s: obs[s] for s in policy.streams}, obs["qpos"]))
                sync()
                tw = time.perf_counter()
                pool.submit(in_worker).result()
                worker_ms = 1e3 * (time.perf_counter() - tw)
                t1 = time.perf_counter()
                answer = client.infer(obs)
                t2 = time.perf_counter()
                jpeg = {**{s: encode_jpeg(obs[s], 90) for s in policy.streams}, "qpos": obs["qpos"]}
                t3 = time.perf_counter()
                client.infer(jpeg)
                t4 = time.perf_counter()
                packed = msgpack_numpy.packb(obs)  # what both ends do with the messages
                msgpack_numpy.unpackb(packed)
                reply = msgpack_numpy.packb(answer)
                msgpack_numpy.unpackb(reply)
                t5 = time.perf_counter()
                if i >= 3:  # warm-up excluded
                    runs["in-process"].append(1e3 * (tw - t0))
                    runs["in-process, worker"].append(worker_ms)
                    runs["served, raw images"].append(1e3 * (t2 - t1))
                    runs["served, JPEG q90"].append(1e3 * (t4 - t2))
                    jpeg_encode.append(1e3 * (t3 - t2))
                    serial.append(1e3 * (t5 - t4))
        raw_bytes, jpeg_bytes = len(msgpack_numpy.packb(obs)), len(msgpack_numpy.packb(jpeg))
    dev = (torch.cuda.get_device_name() if policy.device.type == "cuda"
           else f"{platform.machine()} CPU, {torch.get_num_threads()} thread")
    print(f"device: {dev}; config {args.config}, {'compiled (' + args.compile + ')' if args.compile else 'eager'}, "
          f"{args.steps} steps, loopback websocket, openpi-client 0.1.2")
    for name, xs in runs.items():
        print(f"{name:22s} {pct(xs)}")
    over = np.subtract(runs["served, raw images"], runs["in-process, worker"])
    print(f"{'served - worker':22s} {pct(over)}   (the protocol's cost: messages, websocket, hand-offs)")
    print(f"(de)serialisation, both ends: {pct(serial)} = {np.median(serial) / np.median(runs['served, raw images']):.1%}"
          f" of the served step (p50)")
    print(f"message: raw {raw_bytes / 1e6:.2f} MB, JPEG {jpeg_bytes / 1e6:.2f} MB (client JPEG encode p50 "
          f"{np.median(jpeg_encode):.1f} ms); at 1 Gbit/s raw would take {raw_bytes * 8 / 1e6:.1f} ms on the wire, "
          f"JPEG {jpeg_bytes * 8 / 1e6:.1f} ms")


if __name__ == "__main__":
    main()
