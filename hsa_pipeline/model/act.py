"""ACT (Action Chunking with Transformers) on cached CLIP token grids.

  CVAE encoder (training only): [CLS, qpos, a_1..a_k] -> mu, logvar of z (latent_dim)
  encoder:  [z, qpos, tokens of every stream] -> memory
  decoder:  chunk_size learned queries attend to memory -> k actions (act.arm_queries:
            chunk_size queries per arm, each arm's columns read from its own)
Camera and tactile grids enter through trainable per-stream adapters (LayerNorm + Linear
on the frozen CLIP tokens), plus a learned 2-D position and a stream embedding. The HSA
loss is computed on the same adapter outputs, so alignment shapes what the policy sees.
With `act.touch_map`, each tactile sensor marks the camera tokens that match what IT
feels, in the cameras that can see where it is going (touch_map_bias); with
`act.touch_map_tokens` each map also enters whole, at every patch token, as one token
per camera it marks (map_tokens).
Every decoder layer is used (the original ACT built 7 and used the first).
At inference the CVAE encoder is skipped and z = 0. With `act.vae: false` there is no
CVAE at all: z = 0 in training too, so a choice can only come from the observation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..config import ActConfig
from .hsa import ProjectionHead, upcast


@dataclass
class ActShapes:
    """Data-dependent sizes the model is built for (saved with checkpoints)."""

    qpos_dim: int
    action_dim: int
    streams: list[str]  # cameras then tactile, in cache order
    grid: int  # G of the cached G x G grids
    token_dim: int  # C of the cached tokens
    tactile: list[str] = field(default_factory=list)  # which of `streams` are tactile (act.touch_map reads them)
    # sensor -> the cameras its touch map marks: its arm's wrist camera, every third-person camera
    touch_cameras: dict[str, list[str]] = field(default_factory=dict)
    # act.arm_queries: the action columns of each arm (arm_columns); empty: one set of queries
    arm_columns: list[list[int]] = field(default_factory=list)


def arm_columns(column_names: list[str]) -> list[list[int]]:
    """The action columns of each arm from the rig's column names ('<arm>.j<k>',
    '<arm>.gripper'; 'dim<i>' for a column of no arm), arms in order of first column.
    A column of no arm goes with the first arm. ['l.j1', 'dim1', 'r.j1'] -> [[0, 1], [2]]."""
    arms: dict[str, list[int]] = {}
    loose = []
    for i, name in enumerate(column_names):
        if "." in name:
            arms.setdefault(name.rsplit(".", 1)[0], []).append(i)
        else:
            loose.append(i)
    groups = list(arms.values()) or [[]]
    groups[0] = sorted(groups[0] + loose)
    return groups


def touch_maps(cfg: ActConfig, shapes: ActShapes) -> list[tuple[list[str], list[str]]]:
    """The touch maps of a policy: (tactile streams whose tokens form the query, camera
    streams it marks) for each. per_sensor: one per sensor, marking its own cameras; mean:
    one from the mean of every tactile stream, marking every camera."""
    if not cfg.touch_map or not shapes.tactile:
        return []
    if cfg.touch_query == "mean":
        return [(list(shapes.tactile), [s for s in shapes.streams if s not in shapes.tactile])]
    return [([s], list(shapes.touch_cameras.get(s, []))) for s in shapes.tactile]


class Adapter(nn.Module):
    """Frozen CLIP tokens (B, G, G, C) -> (B, G*G, H): LayerNorm + Linear, trained."""

    def __init__(self, c: int, h: int):
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.proj = nn.Linear(c, h)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(grid.flatten(1, 2)))


def pool_tokens(x: torch.Tensor, grid: int, pool: int) -> torch.Tensor:
    """(B, G*G, H) -> (B, (G/pool)^2, H) by average pooling on the grid (speed only: the
    HSA loss sees the full-resolution adapter outputs)."""
    if pool == 1:
        return x
    B, _, H = x.shape
    g = x.transpose(1, 2).reshape(B, H, grid, grid)
    return F.avg_pool2d(g, pool).flatten(2).transpose(1, 2)


def recompute_layers(layers: nn.ModuleList, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The layers of a TransformerEncoder/Decoder (no final norm), each under activation
    checkpointing: its inner activations are recomputed in the backward pass, not kept.
    The RNG state is replayed, so dropout draws and gradients equal the plain forward."""
    for layer in layers:
        x = checkpoint(layer, x, *args, use_reentrant=False, **kwargs)
    return x


class ACTPolicy(nn.Module):
    def __init__(self, cfg: ActConfig, shapes: ActShapes):
        super().__init__()
        self.cfg, self.shapes = cfg, shapes
        H = cfg.hidden_dim
        # each stream's grid is average-pooled by grid_pool, except the streams in full_grid
        self.pool = {s: 1 if s in cfg.full_grid else cfg.grid_pool for s in shapes.streams}
        self.adapters = nn.ModuleDict({s: Adapter(shapes.token_dim, H) for s in shapes.streams})
        # a learned 2-D position per token (flattened), one table per grid resolution
        self.grid_pos = nn.ParameterDict({str(p): nn.Parameter(torch.randn((shapes.grid // p) ** 2, H) * 0.02)
                                          for p in sorted(set(self.pool.values()))})
        self.stream_emb = nn.Parameter(torch.randn(len(shapes.streams), H) * 0.02)
        self.qpos_in = nn.Linear(shapes.qpos_dim, H)
        self.latent_in = nn.Linear(cfg.latent_dim, H)
        self.special_pos = nn.Parameter(torch.randn(2, H) * 0.02)  # [z, qpos] positions

        def encoder(layers: int) -> nn.TransformerEncoder:
            layer = nn.TransformerEncoderLayer(H, cfg.heads, cfg.dim_feedforward, cfg.dropout, batch_first=True)
            return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

        if cfg.vae:  # CVAE encoder over [CLS, qpos, actions]
            self.vae_cls = nn.Parameter(torch.randn(1, 1, H) * 0.02)
            self.vae_action_in = nn.Linear(shapes.action_dim, H)
            self.vae_qpos_in = nn.Linear(shapes.qpos_dim, H)
            self.vae_pos = nn.Parameter(torch.randn(2 + cfg.chunk_size, H) * 0.02)
            self.vae_encoder = encoder(cfg.vae_enc_layers)
            self.vae_out = nn.Linear(H, 2 * cfg.latent_dim)

        self.maps = touch_maps(cfg, shapes)
        if cfg.touch_map:  # where does each camera see what each sensor feels? (touch_map_bias)
            # the same kind of heads as HSA's; with HSA on they ARE its heads (hsa.hsa_loss_for)
            self.touch_query, self.touch_key = ProjectionHead(H, H), ProjectionHead(H, H)
            self.touch_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # 1 / temperature, learned
            self.touch_emb = nn.Parameter(torch.randn(max(1, len(self.maps)), H) * 0.02)  # a mark per map
        # act.touch_map_tokens: per (map, camera it marks) one token, the map read at full resolution
        self.map_token_pairs = [(i, cam) for i, (_, cams) in enumerate(self.maps) for cam in cams]
        self.use_map_tokens = bool(cfg.touch_map and cfg.touch_map_tokens and self.map_token_pairs)
        if self.use_map_tokens:
            self.map_token_in = nn.Linear(shapes.grid * shapes.grid, H)
            self.map_token_emb = nn.Parameter(torch.randn(len(self.map_token_pairs), H) * 0.02)  # which map, camera

        self.encoder = encoder(cfg.enc_layers)
        dec_layer = nn.TransformerDecoderLayer(H, cfg.heads, cfg.dim_feedforward, cfg.dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(dec_layer, cfg.dec_layers)  # output of the LAST layer is used
        # act.arm_queries: a set of chunk_size queries per arm; column c of the actions is read
        # from the queries of arm query_set[c] (one set: every column from the same queries)
        sets = shapes.arm_columns if cfg.arm_queries and len(shapes.arm_columns) > 1 else []
        query_set = torch.zeros(shapes.action_dim, dtype=torch.long)
        for i, cols in enumerate(sets):
            query_set[cols] = i
        self.query_sets = max(1, len(sets))
        self.register_buffer("query_set", query_set, persistent=False)
        self.queries = nn.Parameter(torch.randn(self.query_sets * cfg.chunk_size, H) * 0.02)
        self.action_out = nn.Linear(H, shapes.action_dim)

    def stream_tokens(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Adapter outputs per stream (B, G*G, H): what the policy sees (pooled) and HSA aligns.
        A stream in `act.blind` is zeroed first: the policy cannot tell one frame from another."""
        blind = set(self.cfg.blind)
        return {s: self.adapters[s](torch.zeros_like(tokens[s]) if s in blind else tokens[s]) for s in self.shapes.streams}

    def touch_embeddings(self, adapted: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """What each touch map's sensors feel: (B, H) per map, the mean of its tactile tokens."""
        return [torch.stack([adapted[s].mean(1) for s in query]).mean(0) for query, _ in self.maps]

    def touch_weights(self, touch: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """How well each camera token matches what is felt: the cosine of the two heads'
        embeddings (HSA's heads when HSA is on) over a learned temperature, softmax over the
        camera's tokens. touch (B, H), tokens (B, N, H) -> (B, N), each row sums to 1."""
        q = self.touch_query(touch)  # (B, P) unit length
        k = self.touch_key(tokens)  # (B, N, P) unit length
        return (torch.einsum("bp,bnp->bn", q, k) * self.touch_scale.exp()).softmax(-1)

    def touch_map_bias(self, touch: torch.Tensor, tokens: torch.Tensor, mark: torch.Tensor) -> torch.Tensor:
        """Explicit grounding of touch in sight: each camera token gets the map's learned
        vector `mark` (H,) times its touch weight times the token count (a uniform map adds
        the vector once everywhere, a peaked one marks a place). -> (B, N, H)."""
        weight = self.touch_weights(touch, tokens) * tokens.shape[1]  # (B, N), mean 1
        return weight[..., None] * mark

    def marked(self, stream: str, grid: torch.Tensor, touch: list[torch.Tensor]) -> torch.Tensor:
        """A camera's adapter outputs (B, N, H) plus the mark of every touch map that reads it
        (each computed on the unmarked tokens)."""
        out = grid
        for i, (_, cameras) in enumerate(self.maps):
            if stream in cameras:
                out = out + self.touch_map_bias(touch[i], grid, self.touch_emb[i])
        return out

    def map_tokens(self, adapted: dict[str, torch.Tensor], touch: list[torch.Tensor]) -> torch.Tensor:
        """act.touch_map_tokens: each (map, camera it marks) as one token, a learned linear
        read of the map's weight at EVERY patch token (mean 1, as in touch_map_bias). The
        pooled grid blurs neighbouring places together; this read does not, and it can
        learn which part of a shared camera is its own arm's (a map that also peaks on the
        other arm's tile of the same look). -> (B, maps x cameras, H)."""
        maps = [self.touch_weights(touch[i], adapted[cam]) * adapted[cam].shape[1]
                for i, cam in self.map_token_pairs]  # (B, G*G) each
        return self.map_token_in(torch.stack(maps, 1)) + self.map_token_emb

    def encode_latent(self, qpos: torch.Tensor, actions: torch.Tensor, is_pad: torch.Tensor):
        """(B, Dq), (B, k, Da), (B, k) -> mu, logvar (B, latent)."""
        B = qpos.shape[0]
        x = torch.cat([self.vae_cls.expand(B, -1, -1), self.vae_qpos_in(qpos)[:, None], self.vae_action_in(actions)], 1)
        x = x + self.vae_pos  # (B, 2 + k, H)
        pad = torch.cat([torch.zeros(B, 2, dtype=torch.bool, device=qpos.device), is_pad], 1)
        if self.cfg.checkpoint_layers and torch.is_grad_enabled():
            h = recompute_layers(self.vae_encoder.layers, x, src_key_padding_mask=pad)[:, 0]
        else:
            h = self.vae_encoder(x, src_key_padding_mask=pad)[:, 0]  # (B, H) at CLS
        mu, logvar = self.vae_out(h).chunk(2, dim=-1)
        return mu, logvar

    def forward(self, qpos: torch.Tensor, tokens: dict[str, torch.Tensor], actions: torch.Tensor | None = None,
                is_pad: torch.Tensor | None = None, adapted: dict[str, torch.Tensor] | None = None):
        """Returns predicted actions (B, k, Da), (mu, logvar) or None, adapter outputs."""
        B = qpos.shape[0]
        if actions is not None and self.cfg.vae:
            mu, logvar = self.encode_latent(qpos, actions, is_pad)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # reparameterisation
            latent = (mu, logvar)
        else:
            z = qpos.new_zeros(B, self.cfg.latent_dim)  # inference (or no CVAE): the prior's mean
            latent = None
        adapted = adapted if adapted is not None else self.stream_tokens(tokens)
        seq = [self.latent_in(z)[:, None] + self.special_pos[0], self.qpos_in(qpos)[:, None] + self.special_pos[1]]
        touch = self.touch_embeddings(adapted)  # one (B, H) per touch map
        for i, s in enumerate(self.shapes.streams):
            grid = self.marked(s, adapted[s], touch)  # (B, G*G, H): the maps at full resolution, then pooled
            pooled = pool_tokens(grid, self.shapes.grid, self.pool[s])  # (B, (G / pool)^2, H)
            seq.append(pooled + self.grid_pos[str(self.pool[s])] + self.stream_emb[i])
        if self.use_map_tokens:
            seq.append(self.map_tokens(adapted, touch))  # (B, maps x cameras, H)
        x = torch.cat(seq, 1)  # (B, 2 + all streams' tokens, H)
        queries = self.queries.expand(B, -1, -1)
        if self.cfg.checkpoint_layers and torch.is_grad_enabled():
            memory = recompute_layers(self.encoder.layers, x)
            h = recompute_layers(self.decoder.layers, queries, memory)  # (B, sets x k, H)
        else:
            memory = self.encoder(x)
            h = self.decoder(queries, memory)  # (B, sets x k, H)
        return self.read_actions(self.action_out(h)), latent, adapted

    def read_actions(self, out: torch.Tensor) -> torch.Tensor:
        """(B, sets x k, Da) -> (B, k, Da): each action column from its arm's queries."""
        if self.query_sets == 1:
            return out
        B, _, Da = out.shape
        out = out.view(B, self.query_sets, -1, Da)  # (B, sets, k, Da)
        index = self.query_set.view(1, 1, 1, Da).expand(B, 1, out.shape[2], Da)
        return out.gather(1, index).squeeze(1)  # (B, k, Da)


def act_losses(pred: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor, latent,
               valid_count: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """L1 averaged over valid (non-padded) positions only; KL summed over latent dims,
    averaged over the batch (as ACT). `valid_count`: the count to average by instead of
    this batch's (distributed training: the mean per rank of the global batch's, so the
    averaged gradients are those of the whole batch's L1). In float32 whatever autocast
    made the inputs: in bf16 the count of 640 positions rounds in steps of 4 and the sums
    lose the third digit, a different error every batch."""
    pred, target = upcast(pred), upcast(target)
    valid = (~is_pad).unsqueeze(-1).to(pred.dtype)  # (B, k, 1)
    count = valid.sum() if valid_count is None else upcast(valid_count)
    l1 = ((pred - target).abs() * valid).sum() / (count * pred.shape[-1]).clamp(min=1)
    if latent is None:
        kl = pred.new_zeros(())
    else:
        mu, logvar = (upcast(x) for x in latent)
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(-1).mean()
    return {"l1": l1, "kl": kl}
