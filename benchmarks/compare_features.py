"""Compare two feature stores of the same frames token by token, e.g. a CPU float32 run
against a CUDA bf16 run of the same model and weights:

    python benchmarks/compare_features.py outputs/features.zarr /tmp/gpu/features.zarr

Prints, per stream, the cosine similarity between matching tokens (min, 0.1% quantile,
mean) and the largest absolute difference relative to the tokens' norm. bf16 autocast
keeps 8 bits of mantissa, so cosines of ~0.99+ are expected, not 1.0.
"""

from __future__ import annotations

import argparse

import numpy as np

from hsa_pipeline.features.extract import FeatureStore


def compare(a_path: str, b_path: str) -> dict[str, dict[str, float]]:
    a, b = FeatureStore(a_path), FeatureStore(b_path)
    if a.streams != b.streams:
        raise SystemExit(f"streams differ: {a.streams} vs {b.streams}")
    out = {}
    for stream in a.streams:
        x = a.load(stream).astype(np.float32)  # (N, Gh, Gw, C)
        y = b.load(stream).astype(np.float32)
        if x.shape != y.shape:
            raise SystemExit(f"{stream}: shapes differ {x.shape} vs {y.shape}")
        x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-12)
        rel = np.abs(x - y).max(1) / (np.linalg.norm(x, axis=1) / np.sqrt(x.shape[1]) + 1e-12)
        out[stream] = dict(tokens=len(cos), cos_min=float(cos.min()), cos_q001=float(np.quantile(cos, 0.001)),
                           cos_mean=float(cos.mean()), max_abs_over_rms=float(rel.max()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args()
    for stream, r in compare(args.a, args.b).items():
        print(f"{stream:12s} {r['tokens']:8d} tokens  cos min {r['cos_min']:.4f}  q0.1% {r['cos_q001']:.4f}  "
              f"mean {r['cos_mean']:.5f}  max|a-b|/rms {r['max_abs_over_rms']:.3f}")


if __name__ == "__main__":
    main()
