"""What one training step computes: the policy and the HSA loss in one module (what DDP
wraps), built from the caches' shapes, with the checks that refuse an HSA or touch-map
setup the data cannot serve."""

from __future__ import annotations

import sys

import torch
import torch.nn as nn

from ..config import ActConfig, HsaConfig
from ..data.caches import Batch, Caches, SensorCameras
from ..errors import ConfigError
from ..model.act import ACTPolicy, ActShapes, act_losses, arm_columns
from ..model.hsa import HsaInputs, HSALoss, hsa_loss_for


class TrainModule(nn.Module):
    """Policy + HSA loss: one forward computes every loss term (this is what DDP wraps)."""

    def __init__(self, policy: ACTPolicy, hsa: HSALoss | None, sensor_cameras: list[SensorCameras], act: ActConfig,
                 hsa_cfg: HsaConfig):
        super().__init__()
        self.policy, self.hsa, self.sensor_cameras = policy, hsa, sensor_cameras
        self.kl_weight, self.hsa_cfg = act.kl_weight, hsa_cfg

    def global_valid_count(self, is_pad: torch.Tensor) -> torch.Tensor | None:
        """In a distributed training step: the valid positions of the GLOBAL batch per rank
        (DDP averages the ranks' gradients; padding differs between their slices). None
        otherwise (this batch's own count; eval forwards run on rank 0 alone)."""
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return None
        count = (~is_pad).sum().to(torch.float32)
        dist.all_reduce(count)
        return count / dist.get_world_size()

    def prefix(self, group: SensorCameras) -> str:
        return "" if len(self.sensor_cameras) == 1 else f"{group.sensor}/"

    def forward(self, batch: Batch, step: torch.Tensor | int = 0, use_latent: bool = True, diagnostics: bool = True):
        """-> total loss, its terms (tensors), HSA diagnostics (floats; {} unless asked), predictions."""
        pred, latent, adapted = self.policy(batch.qpos, batch.tokens, batch.actions if use_latent else None,
                                            batch.is_pad if use_latent else None)
        terms = act_losses(pred, batch.actions, batch.is_pad, latent, self.global_valid_count(batch.is_pad))
        total = terms["l1"] + self.kl_weight * terms["kl"]
        stats: dict[str, float] = {}
        if self.hsa is not None:
            hsa_total = pred.new_zeros(())
            for group in self.sensor_cameras:
                loss, s = self.hsa(self.hsa_inputs(batch, adapted, group), step, diagnostics)
                hsa_total = hsa_total + loss
                stats.update({self.prefix(group) + k: v for k, v in s.items()})
            if diagnostics:
                stats["kappa"] = float(self.hsa.kappa(step))
            terms["hsa"] = hsa_total
            total = total + self.hsa_cfg.weight * hsa_total
        terms["total"] = total
        return total, terms, stats, pred

    def hsa_inputs(self, batch: Batch, adapted: dict, group: SensorCameras) -> HsaInputs:
        B, device = batch.qpos.shape[0], batch.qpos.device
        valid = (batch.contact[group.sensor] if self.hsa_cfg.require_contact
                 else torch.ones(B, dtype=torch.bool, device=device))  # made there: no copy from the host
        x = HsaInputs(tactile=adapted[group.sensor], wrist=adapted[group.wrist],
                      wrist_box=batch.box[group.key(group.wrist)].flatten(1),
                      valid=valid, wrist_visible=batch.visible[group.key(group.wrist)], sensor=group.sensor)
        if group.third_persons:  # every third-person camera (its touch map marks each of them)
            keys = [group.key(c) for c in group.third_persons]
            x.third_person = [adapted[c] for c in group.third_persons]
            x.third_person_box = [batch.box[k].flatten(1) for k in keys]
            x.third_person_alpha = [batch.weight[k] * batch.visible[k] for k in keys]
        return x


def build(act: ActConfig, hsa: HsaConfig, total_steps: int, caches: Caches, device: torch.device) -> TrainModule:
    shapes = ActShapes(qpos_dim=caches.qpos.shape[1], action_dim=caches.action_raw.shape[1],
                       streams=list(caches.streams), grid=caches.grid, token_dim=caches.width,
                       tactile=[s for s, role in caches.streams.items() if role == "tactile"],
                       touch_cameras={p.sensor: p.cameras for p in caches.sensor_cameras},
                       arm_columns=action_arm_columns(act, caches))
    if shapes.grid % act.grid_pool:
        raise ConfigError(f"act.grid_pool: {act.grid_pool} does not divide the {shapes.grid}x{shapes.grid} feature grid")
    if hsa.enabled:
        check_sensor_cameras(caches)
    if act.touch_map:
        check_touch_maps(act, shapes, caches)
    policy = ACTPolicy(act, shapes)
    loss = hsa_loss_for(policy, hsa, total_steps) if hsa.enabled else None
    return TrainModule(policy, loss, caches.sensor_cameras, act, hsa).to(device)


def action_arm_columns(act: ActConfig, caches: Caches) -> list[list[int]]:
    """act.arm_queries: each arm's action columns, named by the geometry store (qpos space)."""
    if not act.arm_queries:
        return []
    names, action_dim = caches.geometry_info.column_names, caches.action_raw.shape[1]
    if len(names) != action_dim:
        raise ConfigError(f"act.arm_queries: the actions have {action_dim} columns but qpos has {len(names)}; "
                          f"each arm's queries need actions in qpos space (set act.arm_queries: false)")
    return arm_columns(names)


def check_sensor_cameras(caches: Caches) -> None:
    """With HSA on, every tactile sensor must have something to align with: a geometry
    entry and a wrist camera on its arm (the loss's positive). Otherwise the loss would be
    a silent zero for it."""
    tactile = list(caches.manifest.info.tactile)
    if not tactile:
        raise ConfigError("hsa.enabled: true, but the episodes have no tactile stream; set hsa.enabled: false")
    paired = {p.sensor: p for p in caches.sensor_cameras}
    for sensor in tactile:
        if sensor not in paired:
            raise ConfigError(f"hsa.enabled: true, but tactile sensor '{sensor}' is not in the geometry store "
                              f"(sensors.{sensor} missing from params.yaml?); add it or set hsa.enabled: false")
        if paired[sensor].wrist is None:
            raise ConfigError(f"hsa.enabled: true, but tactile sensor '{sensor}' has no wrist camera on its arm "
                              f"(sensors.{sensor}.arm = {caches.geometry_info.sensor_arms.get(sensor)!r}; cameras.*.mount "
                              f"names none): HSA's positive is the sensor's box in that camera; set hsa.enabled: false")


def check_touch_maps(act: ActConfig, shapes: ActShapes, caches: Caches) -> None:
    """act.touch_map needs, for every tactile sensor, a camera that can see where it goes
    (per_sensor maps); a configuration the maps cannot serve stops here with one line."""
    if not shapes.tactile:
        raise ConfigError("act.touch_map: true, but the episodes have no tactile stream; set act.touch_map: false")
    if act.touch_query == "mean":
        if len(shapes.tactile) > 1:
            print(f"train: warning: act.touch_query: mean blends {len(shapes.tactile)} tactile streams into one map "
                  f"that marks every camera (one pad's touch halved, two felt classes mixed); per_sensor gives each "
                  f"sensor its own map", file=sys.stderr)
        return
    for sensor in shapes.tactile:
        if sensor not in shapes.touch_cameras:
            raise ConfigError(f"act.touch_map: tactile sensor '{sensor}' is not in the geometry store (sensors.{sensor} "
                              f"missing from params.yaml?), so its map cannot know which cameras see where it goes")
        if not shapes.touch_cameras[sensor]:
            raise ConfigError(f"act.touch_map: no camera can see where tactile sensor '{sensor}' goes (no wrist camera "
                              f"on arm {caches.geometry_info.sensor_arms.get(sensor)!r} and no third-person camera); "
                              f"add one or set act.touch_map: false")
