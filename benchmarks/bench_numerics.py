"""What `numerics: portable` costs (pipeline/numerics.py): the demo's training steps/s and
the encoder's images/s under portable and under native, side by side on one machine.

Each measurement runs in its own process entered under its mode (the libraries read the
settings when they load), alternating portable, native, portable, native, so drift of the
machine shows as a spread, not as a difference. Run it alone from the checkout's root
after `make demo` (it reads the demo's params and caches; it writes nothing into outputs/):

    python benchmarks/bench_numerics.py [--steps 150] [--repeats 2] [--set key=value ...]

  train     the real trainer (`start_run` + `take_step`, the demo's params) on the demo's
            caches: steps/s over `--steps` steps after 10 untimed ones
  encoder   `Encoder.encode` on preprocessed uint8 frames: images/s, for the demo's encoder
            at features.batch_size and for ViT-B-16 at batch 8 (random weights: the shape a
            real run uses)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hsa_pipeline.config import load_params  # noqa: E402  (light: yaml and dataclasses)
from hsa_pipeline.pipeline import numerics  # noqa: E402


def train_steps_per_s(p, steps: int) -> float:
    from hsa_pipeline.pipeline.paths import FEATURES, GEOMETRY, PREPARE
    from hsa_pipeline.training.loop import start_run

    with tempfile.TemporaryDirectory() as out:
        run = start_run(p.act, p.hsa, p.train, PREPARE, GEOMETRY, FEATURES, Path(out))
        run.module.train()
        for i in range(10 + steps):
            if i == 10:
                t = time.perf_counter()
            run.take_step(run.data.next_batch())
            run.step += 1
        return steps / (time.perf_counter() - t)


def encoder_images_per_s(p, model: str, batch_size: int, reps: int) -> float:
    import dataclasses

    import torch

    from hsa_pipeline.features.encoder import Encoder

    enc = Encoder(dataclasses.replace(p.features, model=model, pretrained=None), quiet=True)
    batch = torch.randint(0, 255, (batch_size, enc.size, enc.size, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    enc.encode(batch)  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        enc.encode(batch)
    return reps * batch_size / (time.perf_counter() - t)


def measure(mode: str, steps: int, overrides: list[str]) -> dict:
    """In this process, entered under `mode` (called before torch loads)."""
    p = load_params("params.yaml", overrides + [f"numerics={mode}"])
    numerics.enter(mode)
    import torch

    torch.set_num_threads(1 if p.train.threads == "auto" else p.train.threads)
    return {"mode": mode, "train_steps_per_s": train_steps_per_s(p, steps),
            "tiny_vit_images_per_s": encoder_images_per_s(p, p.features.model, p.features.batch_size, 20),
            "vit_b16_images_per_s": encoder_images_per_s(p, "ViT-B-16", 8, 3),
            "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--mode", choices=numerics.MODES, help=argparse.SUPPRESS)  # a child's one measurement
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(measure(args.mode, args.steps, args.overrides)))
        return
    rows = []
    for _ in range(args.repeats):
        for mode in ("portable", "native"):
            r = subprocess.run([sys.executable, __file__, "--mode", mode, "--steps", str(args.steps)]
                               + [a for o in args.overrides for a in ("--set", o)],
                               capture_output=True, text=True, check=True)
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    keys = ("train_steps_per_s", "tiny_vit_images_per_s", "vit_b16_images_per_s")
    med = {m: {k: statistics.median(r[k] for r in rows if r["mode"] == m) for k in keys} for m in ("portable", "native")}
    print(f"{cpu_model()}, {rows[0]['threads']} thread(s); medians of {args.repeats} runs each")
    for k in keys:
        print(f"{k:24s} portable {med['portable'][k]:8.1f}   native {med['native'][k]:8.1f}   "
              f"portable/native {med['portable'][k] / med['native'][k]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_model(), "runs": rows, "medians": med}, indent=1))


if __name__ == "__main__":
    main()
