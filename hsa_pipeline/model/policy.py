"""Run an exported policy on a robot: raw camera images + qpos -> an action chunk, with
features computed by the same encoder code as the cache, and temporal ensembling.

    policy = Policy.load("outputs/train/policy", weights="/weights/vit_b16.bin")
    ens = TemporalEnsembler(policy.chunk_size, k=0.01)
    for each control step:
        chunk = policy.predict_chunk({"top": img, "wrist": img, "tactile": img}, qpos)  # (k, Da), joint units
        action = ens.step(chunk)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import ActConfig, FeaturesConfig, HsaConfig
from ..data.codec import ActionCodec, normalise_qpos
from ..data.stores import read_policy_meta
from ..errors import StoreError
from ..features.encoder import Encoder
from ..pipeline.runtime import CompiledOrEager
from .act import ACTPolicy, ActShapes
from .hsa import HSALoss, hsa_loss_for


class Policy:
    def __init__(self, model: ACTPolicy, encoder: Encoder, meta: dict, device: torch.device):
        self.model, self.encoder, self.meta, self.device = model.eval(), encoder, meta, device
        self.streams: list[str] = meta["shapes"]["streams"]
        self.chunk_size = meta["act"]["chunk_size"]
        s = meta["stats"]
        self.codec = ActionCodec.from_stats(s, meta["act"].get("relative_actions", False))
        self._act = self._chunk  # what predict_chunk calls: the ACT chunk, or its compiled self (compile)

    def compile(self, mode: str | None) -> "Policy":
        """Compile the control step's two networks for inference (`torch.compile` mode, e.g.
        reduce-overhead: CUDA graphs; None: eager): the encoder's vision tower and the ACT
        forward. Each compiles at its first call (seconds to a minute); a compile that
        fails says why in one line and that network runs eager."""
        self.encoder.compile(mode)
        self._act = CompiledOrEager(self._chunk, mode, "policy (ACT)")
        return self

    def _chunk(self, q: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """ACT's action chunk (1, k, Da) alone: what a compiled step hands back (and clones),
        not the adapter outputs of every stream the forward also returns."""
        return self.model(q, tokens)[0]

    @classmethod
    def load(cls, directory: str | Path, weights: str | None = None, device: str = "auto") -> "Policy":
        """`weights` overrides the encoder's weight file (the path on this machine)."""
        model, _, meta = load_model(directory)
        f = meta["features"]
        enc = Encoder(FeaturesConfig(model=f["model"], pretrained=weights or f["pretrained"], block=f["block"],
                                     resize=f["resize"], device=device), quiet=True)
        return cls(model.to(enc.device), enc, meta, enc.device)

    @torch.no_grad()
    def features(self, images: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Raw (H, W, 3) uint8 RGB images -> (1, G, G, C) grids, exactly as the cache (one
        encoder batch for all streams)."""
        missing = [s for s in self.streams if s not in images]
        if missing:
            raise KeyError(f"images for streams {missing} are missing; the policy needs {self.streams}")
        grids = self.encoder.encode_frames([images[s] for s in self.streams]).to(self.device)  # (S, G, G, C)
        return {s: grids[i: i + 1] for i, s in enumerate(self.streams)}

    @torch.no_grad()
    def predict_chunk(self, images: dict[str, np.ndarray] | None, qpos: np.ndarray,
                      tokens: dict[str, torch.Tensor] | None = None) -> np.ndarray:
        """(Da,) qpos in joint units + images (or precomputed (1, G, G, C) tokens) ->
        (chunk, Da) actions in joint units."""
        tokens = tokens if tokens is not None else self.features(images)
        q = torch.as_tensor(normalise_qpos(qpos, self.meta["stats"]), device=self.device)[None]
        pred = self._act(q, {s: t.float() for s, t in tokens.items()})  # (1, k, Da)
        return self.codec.decode(pred[0].cpu().numpy(), np.asarray(qpos, dtype=float))


def load_model(directory: str | Path) -> tuple[ACTPolicy, HSALoss | None, dict]:
    """An exported policy directory -> (the ACT model, its HSA heads or None when trained
    without HSA, policy.json), on the CPU in eval mode. Everything comes from the
    directory: it is self-contained."""
    directory = Path(directory)
    meta = read_policy_meta(directory)
    model = ACTPolicy(ActConfig(**meta["act"]), ActShapes(**meta["shapes"]))
    _load_state(model, directory / "weights.pt")
    hsa = None
    if meta["hsa"] is not None:
        hsa = hsa_loss_for(model, HsaConfig(**meta["hsa"]))
        _load_state(hsa, directory / "hsa.pt")
    return model.eval(), (hsa.eval() if hsa is not None else None), meta


def _load_state(module: torch.nn.Module, path: Path) -> None:
    if not path.is_file():
        raise StoreError(f"{path}: missing from the exported policy; export it again (`dvc repro train`)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise StoreError(f"{path}: the weights do not fit policy.json's model ({len(missing)} missing, e.g. "
                         f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}); the directory mixes "
                         f"files of different exports: export it again (`dvc repro train`)")


class TemporalEnsembler:
    """ACT's temporal ensembling: the action for time t is the weighted mean of every chunk
    prediction that covers t, with weights exp(-k * i), i = 0 for the OLDEST prediction."""

    def __init__(self, chunk_size: int, k: float = 0.01):
        self.chunk_size, self.k = chunk_size, k
        self.history: list[tuple[int, np.ndarray]] = []  # (time the chunk was predicted, chunk)
        self.t = 0

    @staticmethod
    def weights(n: int, k: float) -> np.ndarray:
        w = np.exp(-k * np.arange(n))  # index 0 = oldest prediction
        return w / w.sum()

    def step(self, chunk: np.ndarray) -> np.ndarray:
        self.history.append((self.t, np.asarray(chunk)))
        self.history = [(t0, c) for t0, c in self.history if self.t - t0 < self.chunk_size]
        preds = np.stack([c[self.t - t0] for t0, c in self.history])  # oldest first
        self.t += 1
        return (self.weights(len(preds), self.k)[:, None] * preds).sum(0)
