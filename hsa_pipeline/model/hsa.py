"""The HSA loss: align what the robot feels with where its cameras see the sensor.

For each sample i (docs/hsa-loss.md has the full story):
  q_i   = norm(head_t(mean of tactile tokens))                         the query
  p_i   = norm(head_v(mean of wrist tokens inside the sensor box))     the positive
  L_i   = -log( exp(q_i.p_i/k) / (exp(q_i.p_i/k) + sum over negatives exp(q_i.n/k)) )
negatives: the positives p_j of the other valid samples (in-batch); every wrist token
OUTSIDE the box of the same image, through the same head (in-image hard negatives);
optional caller-supplied negatives (B, K, D); optional memory-bank entries.
The third-person term is the same with the third-person tokens, weighted per sample by
its visibility alpha_i (with several third-person cameras: their mean). Samples whose
sensor is not visible (or not in contact, or whose box selects nothing, or that have no
negative at all) are masked out and do not count.

Logits are computed in float32 with log-sum-exp, so bf16 inputs and kappa = 0.01 are
safe. The chance level ln(number of candidates) is reported with every loss: a loss that
sits there has learned nothing (the first implementation sat at ln 16 for 25k steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import HsaConfig

NEG_INF = float("-inf")


@dataclass
class HsaInputs:
    """Token grids flattened to sequences, with masks. D = token width (adapter output)."""

    tactile: torch.Tensor  # (B, Nt, D) tactile tokens
    wrist: torch.Tensor  # (B, Nw, D) wrist-camera tokens
    wrist_box: torch.Tensor  # (B, Nw) bool, tokens inside the sensor box
    valid: torch.Tensor  # (B,) bool, sample may be a positive (e.g. sensor in contact)
    wrist_visible: torch.Tensor | None = None  # (B,) bool; None = visible
    # third-person tokens (B, Np, D), boxes (B, Np) bool and visibility (B,) in [0, 1] (0 = not
    # visible): one tensor each, or a list with one per third-person camera
    third_person: torch.Tensor | list[torch.Tensor] | None = None
    third_person_box: torch.Tensor | list[torch.Tensor] | None = None
    third_person_alpha: torch.Tensor | list[torch.Tensor] | None = None
    negatives: torch.Tensor | None = None  # (B, K, D) explicit extra negatives (raw tokens)
    negatives_mask: torch.Tensor | None = None  # (B, K) bool, True = use
    sensor: str = ""  # whose touch this is: each tactile sensor has its own memory bank


class ProjectionHead(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, d_in), nn.GELU(), nn.Linear(d_in, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(upcast(self.net(x)), dim=-1)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> fp32 for similarities and log-sum-exp; fp32/fp64 stay as they are."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, N, D), (B, N) bool -> (B, D); zeros where the mask is empty (never NaN)."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1)


def info_nce(q: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor, kappa: torch.Tensor,
             inbatch: bool = True, neg: torch.Tensor | None = None, neg_mask: torch.Tensor | None = None):
    """Per-sample InfoNCE with masks.

    q, pos (B, P) L2-normalised; valid (B,) bool; neg (B, K, P) normalised, neg_mask (B, K).
    Candidates of sample i: its positive, the positives of other valid samples (inbatch),
    and its own unmasked negatives. Returns loss (B,), n_candidates (B,), usable (B,):
    usable = valid and at least one negative (others get loss 0).
    """
    q, pos = upcast(q), upcast(pos)
    B = q.shape[0]
    logits = [(q * pos).sum(-1, keepdim=True) / kappa]  # (B, 1) the positive first
    counts = torch.zeros(B, device=q.device)
    if inbatch:
        sim = q @ pos.T / kappa  # (B, B)
        off = valid[None, :] & ~torch.eye(B, dtype=torch.bool, device=q.device)
        logits.append(sim.masked_fill(~off, NEG_INF))
        counts = counts + off.sum(1)
    if neg is not None:
        s = torch.einsum("bp,bkp->bk", q, upcast(neg)) / kappa
        m = torch.ones_like(s, dtype=torch.bool) if neg_mask is None else neg_mask
        logits.append(s.masked_fill(~m, NEG_INF))
        counts = counts + m.sum(1)
    all_logits = torch.cat(logits, dim=1)  # (B, 1 + ...)
    usable = valid & (counts > 0)
    loss = torch.logsumexp(all_logits, dim=1) - all_logits[:, 0]
    return torch.where(usable, loss, torch.zeros_like(loss)), counts + 1, usable


class MemoryBank(nn.Module):
    """FIFO of past positive embeddings used as extra negatives (not trained). Fixed shapes
    and device-side counters, so pushing a variable number of rows and reading the bank
    never wait for the GPU: rows not kept go to a scratch row past the end, entries not
    yet filled are masked out."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.size = size
        self.register_buffer("items", torch.zeros(size + 1, dim))  # (size + 1, P): the last row is scratch
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """Append the rows of x (B, P) where keep (B,) is true, oldest overwritten first."""
        keep = torch.ones(len(x), dtype=torch.bool, device=x.device) if keep is None else keep
        order = torch.cumsum(keep.long(), 0) - 1  # (B,) rank among the kept rows
        n = keep.sum()
        write = keep & (order >= n - self.size)  # of more than `size` kept rows, the newest `size`
        target = torch.where(write, (self.ptr + order) % self.size, torch.full_like(order, self.size))
        self.items.index_copy_(0, target, x.detach().float())  # the unwritten rows all land on the scratch row
        self.ptr.copy_((self.ptr + n) % self.size)
        self.filled.copy_(torch.clamp(self.filled + n, max=self.size))

    def negatives(self, q: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, P) bank negatives for queries q (B, P) and their mask (B, K): the k most
        similar filled entries when 0 < topk < size, else every entry (unfilled ones masked)."""
        bank = self.items[: self.size]  # (M, P)
        filled = torch.arange(self.size, device=q.device) < self.filled  # (M,)
        if topk and topk < self.size:
            sim = (q.detach().float() @ bank.T).masked_fill(~filled, NEG_INF)  # (B, M)
            idx = sim.topk(topk, dim=1).indices  # (B, k) hardest first, unfilled last
            return bank[idx], filled[idx]
        return bank.unsqueeze(0).expand(q.shape[0], -1, -1), filled.unsqueeze(0).expand(q.shape[0], -1)


class HSALoss(nn.Module):
    """Projection heads, temperature, memory bank and the loss with its diagnostics."""

    def __init__(self, token_dim: int, cfg: HsaConfig, total_steps: int = 1, sensors: list[str] | None = None):
        super().__init__()
        self.cfg = cfg
        self.total_steps = max(1, total_steps)
        self.head_tactile = ProjectionHead(token_dim, cfg.proj_dim)
        self.head_vision = ProjectionHead(token_dim, cfg.proj_dim)  # wrist, third-person and their negatives
        self.log_kappa = nn.Parameter(torch.tensor(math.log(cfg.temperature)),
                                      requires_grad=cfg.temperature_mode == "learnable")
        # the fixed temperature as a tensor that moves with the module: no tensor made on the host per step
        self.register_buffer("fixed_kappa", torch.tensor(float(cfg.temperature)), persistent=False)
        # one memory bank per tactile sensor: a bank shared by two pads would make each pad's
        # positives the other's negatives (its own past positives are what a bank is for)
        self.sensors = list(sensors or [""])
        self.banks = nn.ModuleList([MemoryBank(cfg.bank_size, cfg.proj_dim) for _ in self.sensors]
                                   if cfg.bank_size else [])

    def kappa(self, step: torch.Tensor | int = 0) -> torch.Tensor:
        """The temperature at training step `step`, a 0-d tensor on the module's device. The
        trainer passes the step as a device tensor (Run.step_on_device): annealing then
        computes on the device, and a compiled step sees an input, not a new constant."""
        c = self.cfg
        if c.temperature_mode == "learnable":
            return self.log_kappa.exp().clamp(min=c.temperature_min)
        if c.temperature_mode == "anneal":  # cosine from temperature to temperature_final
            if not isinstance(step, torch.Tensor):
                step = torch.full((), float(step), device=self.fixed_kappa.device)
            t = (step.float() / self.total_steps).clamp(max=1.0)
            return c.temperature_final + 0.5 * (c.temperature - c.temperature_final) * (1 + torch.cos(math.pi * t))
        return self.fixed_kappa

    def bank(self, sensor: str) -> MemoryBank | None:
        """The memory bank of `sensor` (None with hsa.bank_size 0)."""
        if not len(self.banks):
            return None
        if sensor not in self.sensors:
            raise KeyError(f"HSA memory bank: no sensor '{sensor}' (sensors: {self.sensors})")
        return self.banks[self.sensors.index(sensor)]

    def _view(self, q: torch.Tensor, tokens: torch.Tensor, box: torch.Tensor, valid: torch.Tensor, kappa: torch.Tensor,
              extra: tuple | None, bank: MemoryBank | None, diagnostics: bool):
        """One view's loss (B,), diagnostics ({} unless asked for) and positives."""
        has_box = box.any(1)
        valid = valid & has_box
        pos = self.head_vision(masked_mean(tokens, box))  # (B, P)
        tok = self.head_vision(tokens)  # (B, N, P) every token: negatives + localisation
        negs, masks = [], []
        if self.cfg.in_image_negatives:
            negs.append(tok)
            masks.append(~box)
        if extra is not None and extra[0] is not None:
            negs.append(self.head_vision(extra[0]))
            masks.append(extra[1] if extra[1] is not None else torch.ones(extra[0].shape[:2], dtype=torch.bool, device=q.device))
        if bank is not None:
            bn, bm = bank.negatives(q, self.cfg.bank_topk)
            negs.append(bn)
            masks.append(bm)
        neg = torch.cat(negs, 1) if negs else None
        neg_mask = torch.cat(masks, 1) if masks else None
        loss, n_cand, usable = info_nce(q, pos, valid, kappa, True, neg, neg_mask)
        if self.cfg.symmetric:  # vision -> tactile, in-batch candidates only
            back, _, usable_back = info_nce(pos, q, valid, kappa, True)
            # A sample that is the only valid one has no reverse candidate: it does not count,
            # so its forward half must not reach the loss either.
            usable = usable & usable_back
            loss = torch.where(usable, 0.5 * (loss + back), torch.zeros_like(loss))
        stats = {}
        if diagnostics:
            with torch.no_grad():
                stats = {**self._diagnostics(q, pos, tok, box, usable, n_cand), "hsa": _mean_over(loss, usable)}
        return loss, usable, stats, pos

    @staticmethod
    def _diagnostics(q, pos, tok, box, usable, n_cand) -> dict[str, float]:
        n = int(usable.sum())
        if n == 0:
            return {"n": 0.0}
        u = usable
        sim = q[u].float() @ pos[u].float().T  # (n, n) among usable samples
        top1 = (sim.argmax(1) == torch.arange(n, device=q.device)).float().mean()
        token_sim = torch.einsum("bp,bnp->bn", q[u].float(), tok[u].float())  # (n, N)
        hit = box[u].gather(1, token_sim.argmax(1, keepdim=True)).float().mean()
        return {"n": float(n), "chance": float(torch.log(n_cand[u]).mean()), "top1": float(top1),
                "top1_chance": 1.0 / n, "loc_acc": float(hit), "loc_chance": float(box[u].float().mean())}

    def forward(self, x: HsaInputs, step: torch.Tensor | int = 0,
                diagnostics: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        """Total HSA loss and diagnostics: hsa_w, hsa_tp, chance levels, retrieval, localisation.
        The diagnostics read values back to the host (a GPU sync each): the trainer asks for
        them only on logging steps."""
        kappa = self.kappa(step)
        q = self.head_tactile(x.tactile.mean(1))  # (B, P)
        extra = (x.negatives, x.negatives_mask)
        valid_w = x.valid if x.wrist_visible is None else x.valid & x.wrist_visible
        bank = self.bank(x.sensor)
        loss_w, usable_w, stats_w, pos_w = self._view(q, x.wrist, x.wrist_box, valid_w, kappa, extra, bank, diagnostics)
        total = self._reduce(loss_w, usable_w)
        stats = {f"{k}_w": v for k, v in stats_w.items()}
        views = third_person_views(x, len(q), q.device)
        if views and self.cfg.third_person_weight > 0:
            third_person_total, third_person_stats = q.new_zeros(()), []
            for tokens, box, alpha in views:
                loss_third, usable_third, stats_third, _ = self._view(q, tokens, box, x.valid & (alpha > 0), kappa, None, None,
                                                             diagnostics)
                third_person_total = third_person_total + self._reduce(loss_third * alpha, usable_third)
                third_person_stats.append(stats_third)
            total = total + self.cfg.third_person_weight * third_person_total / len(views)
            stats.update({f"{k}_tp": v for k, v in _mean_stats(third_person_stats).items()})
        if bank is not None and self.training:
            bank.push(pos_w.detach(), usable_w)
        return total, stats

    def _reduce(self, loss: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
        """Per-sample losses (B,), zero where not usable -> a scalar (hsa.reduction)."""
        if self.cfg.reduction == "sum":
            return loss.sum()
        return loss.sum() / usable.sum().clamp(min=1)


def third_person_views(x: HsaInputs, batch: int, device) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(tokens, box, alpha) of every third-person camera in `x` (alpha 1 where not given)."""
    if x.third_person is None:
        return []
    as_list = lambda v: v if isinstance(v, (list, tuple)) else [v]  # noqa: E731
    tokens, boxes = as_list(x.third_person), as_list(x.third_person_box)
    alphas = as_list(x.third_person_alpha) if x.third_person_alpha is not None else [None] * len(tokens)
    return [(t, b, a.float() if a is not None else torch.ones(batch, device=device))
            for t, b, a in zip(tokens, boxes, alphas, strict=True)]


def _mean_stats(per_view: list[dict[str, float]]) -> dict[str, float]:
    """Diagnostics of several views (third-person cameras) as one: the mean of each value."""
    keys = [k for k in per_view[0] if all(k in s for s in per_view)]
    return {k: sum(s[k] for s in per_view) / len(per_view) for k in keys}


def _mean_over(loss: torch.Tensor, usable: torch.Tensor) -> float:
    """Mean of the per-sample loss over usable samples, for logging."""
    return float(loss.detach()[usable].mean()) if usable.any() else float("nan")


def hsa_loss_for(policy: nn.Module, hsa: HsaConfig, total_steps: int = 1) -> HSALoss:
    """The HSA loss of a policy (an act.ACTPolicy). With act.touch_map its heads are the
    policy's touch-map heads (shared modules): the alignment HSA learns is the map the
    policy reads."""
    sensors = list(policy.shapes.tactile)
    if not policy.cfg.touch_map:
        return HSALoss(policy.cfg.hidden_dim, hsa, total_steps, sensors)
    loss = HSALoss(policy.cfg.hidden_dim, replace(hsa, proj_dim=policy.cfg.hidden_dim), total_steps, sensors)
    loss.head_tactile, loss.head_vision = policy.touch_query, policy.touch_key
    return loss
