"""The frozen CLIP image encoder and its preprocessing: ONE definition used by the
feature cache and by online inference (model/policy.py), so cached and live features agree.

Preprocessing keeps the whole field of view (the sensor may sit near the border): the
image is stretched or letterboxed to the encoder's square input, never centre-cropped;
`GridMapping` (data/grid.py) records exactly how, for the box -> token mask.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import FeaturesConfig, is_weights_path
from ..data.grid import GridMapping
from ..errors import ConfigError, first_line
from ..pipeline.runtime import CompiledOrEager, pick_device

SHIPPED_CONFIGS = Path(__file__).parent / "model_configs"


def register_shipped_configs() -> None:
    import open_clip

    for path in sorted(SHIPPED_CONFIGS.glob("*.json")):
        if path.stem not in open_clip.list_models():
            open_clip.add_model_config(str(path))


def preprocess(img: np.ndarray, mapping: GridMapping) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8 per `mapping` (bicubic, zero padding)."""
    if img.shape[:2] != (mapping.orig_h, mapping.orig_w):
        raise ValueError(f"image is {img.shape[1]}x{img.shape[0]}, the mapping expects {mapping.orig_w}x{mapping.orig_h}")
    resized = Image.fromarray(img).resize((mapping.new_w, mapping.new_h), Image.Resampling.BICUBIC)
    if mapping.mode == "stretch":
        return np.array(resized)
    canvas = np.zeros((mapping.size, mapping.size, 3), np.uint8)
    canvas[mapping.pad_y: mapping.pad_y + mapping.new_h, mapping.pad_x: mapping.pad_x + mapping.new_w] = np.asarray(resized)
    return canvas


def _check_weights_file(path: Path) -> None:
    """One line naming why a weights file cannot be used, before the model sees it."""
    import pickle

    key = "features.pretrained"
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt"):
                return
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # zip checkpoints: cheap
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            torch.load(path, map_location="cpu", weights_only=True)  # the legacy (non-zip) format
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror or e}") from None
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):
            raise ConfigError(f"{key}: {path} holds Python objects besides tensors, which torch.load(weights_only="
                              f"True) refuses for safety; where you trust the file, load it and save the tensors "
                              f"alone: torch.save(state_dict, 'weights.bin')") from None
        raise ConfigError(f"{key}: {path} is not a weights file (neither a torch checkpoint nor safetensors)") from None
    except Exception as e:  # torch's reader: truncated archive, foreign bytes
        raise ConfigError(f"{key}: {path} is not a readable weights file (truncated, or not a torch/safetensors "
                          f"checkpoint): {first_line(e, 200)}") from None


class Encoder:
    """open_clip vision tower -> (B, G, G, C) patch-token grids."""

    def __init__(self, cfg: FeaturesConfig, device: str | None = None, quiet: bool = False):
        import open_clip

        register_shipped_configs()
        known = open_clip.list_models()
        if cfg.model not in known:
            close = difflib.get_close_matches(cfg.model, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"features.model: unknown model '{cfg.model}'{hint}")
        self.cfg = cfg
        self.device = pick_device(device or cfg.device, "features.device")
        model = self._create(open_clip, cfg, quiet)
        self.visual = model.visual.to(self.device).eval().requires_grad_(False)
        self.size = int(self.visual.image_size[0])
        self.patch = int(self.visual.patch_size[0])
        self.grid = self.size // self.patch
        n_blocks = len(self.visual.transformer.resblocks)
        if not -1 <= cfg.block < n_blocks:
            raise ConfigError(f"features.block: {cfg.block} outside -1..{n_blocks - 1} for {cfg.model}")
        pp = getattr(self.visual, "preprocess_cfg", {}) or {}
        self.mean = torch.tensor(pp.get("mean", open_clip.OPENAI_DATASET_MEAN), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(pp.get("std", open_clip.OPENAI_DATASET_STD), device=self.device).view(1, 3, 1, 1)
        self.width = int(self.visual.transformer.width)
        self.autocast = self.device.type == "cuda"  # bf16 on GPUs; fp32 on CPU (bf16 autocast is slower there)
        self._pool: ThreadPoolExecutor | None = None  # encode_frames' resizing threads, made when first needed
        self._pool_threads = 0
        self._tower = self.visual  # what encode calls: the vision tower, or its compiled self (compile)

    def compile(self, mode: str | None) -> None:
        """Compile the vision tower for inference (`torch.compile` mode; None: eager): CUDA
        graphs (reduce-overhead) launch its ~300 kernels as one. A compile that fails says
        why and runs eager. Only the last block's tokens (features.block -1) are compiled."""
        self.visual.output_tokens = True
        self._tower = CompiledOrEager(self.visual, mode, "encoder")

    @staticmethod
    def _create(open_clip, cfg: FeaturesConfig, quiet: bool):
        pretrained = cfg.pretrained
        if pretrained is None:
            if not quiet:
                print(f"WARNING: features.pretrained is null: {cfg.model} has RANDOM weights. Fine for the demo "
                      f"and tests; for real data set features.pretrained to a weights file or tag.", file=sys.stderr)
            # Random weights from a FIXED seed: the cache and online inference (model/policy.py)
            # then build the very same encoder.
            with _quiet_logging(), torch.random.fork_rng():
                torch.manual_seed(0)
                return open_clip.create_model(cfg.model, pretrained=None)
        if is_weights_path(pretrained):
            path = Path(pretrained)
            if not path.is_file():
                raise ConfigError(f"features.pretrained: weights file {path} not found")
            _check_weights_file(path)  # unreadable, corrupt or unsafe: say so, not "does not match"
            try:
                return open_clip.create_model(cfg.model, pretrained=str(path), weights_only=True)
            except Exception as e:  # a readable file: state-dict mismatches surface as RuntimeError/KeyError
                raise ConfigError(f"features.pretrained: {path} does not match model {cfg.model}: "
                                  f"{first_line(e)}") from None
        tags = open_clip.list_pretrained_tags_by_model(cfg.model)
        if pretrained not in tags:
            raise ConfigError(f"features.pretrained: '{pretrained}' is not a known tag for {cfg.model} "
                              f"(known: {', '.join(tags) or 'none'}) nor a weights file")
        try:
            with _hub_offline(os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")):
                return open_clip.create_model(cfg.model, pretrained=pretrained, weights_only=True)
        except Exception as e:
            raise ConfigError(
                f"features.pretrained: the '{pretrained}' weights of {cfg.model} are not in the local cache and "
                f"could not be downloaded ({type(e).__name__}). On a machine with network run "
                f"`python -c \"import open_clip; open_clip.create_model('{cfg.model}', pretrained='{pretrained}')\"` "
                f"and copy the file from ~/.cache/huggingface, or save model.state_dict() with torch.save; then set "
                f"features.pretrained to that local file path") from None

    # ------------------------------------------------------------------ encoding
    def mapping(self, width: int, height: int) -> GridMapping:
        return GridMapping.create(self.cfg.resize, width, height, self.size, self.patch)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, S, S, 3) uint8 preprocessed images -> (B, G, G, C) float32 token grids."""
        x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        x = (x - self.mean) / self.std
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with ctx:
            if self.cfg.block == -1:
                self.visual.output_tokens = True
                _, tokens = self._tower(x)  # (B, G*G, C) after ln_post, class token excluded
                grid = tokens.reshape(len(x), self.grid, self.grid, -1)
            else:
                out = self.visual.forward_intermediates(x, indices=[self.cfg.block], intermediates_only=True,
                                                     stop_early=True)  # the later blocks are not run
                grid = out["image_intermediates"][0].permute(0, 2, 3, 1)  # NCHW -> (B, G, G, C)
        return grid.float()

    def encode_frames(self, frames: list[np.ndarray]) -> torch.Tensor:
        """Raw (H, W, 3) uint8 camera frames -> (B, G, G, C): the cache's exact path. The
        frames are resized side by side in threads (PIL lets go of the GIL; each frame's
        pixels are the same as one by one): a control step's resizing is host work that
        the GPU waits for. On a CPU as many threads as torch may use, on a GPU one a frame."""
        jobs = [(f, self.mapping(f.shape[1], f.shape[0])) for f in frames]
        threads = min(len(jobs), os.cpu_count() or 1)
        if self.device.type != "cuda":
            threads = min(threads, torch.get_num_threads())
        if threads > 1:
            if threads > self._pool_threads:
                self._pool, self._pool_threads = ThreadPoolExecutor(threads, thread_name_prefix="preprocess"), threads
            batch = np.stack(list(self._pool.map(lambda job: preprocess(*job), jobs)))
        else:
            batch = np.stack([preprocess(*job) for job in jobs])
        return self.encode(torch.from_numpy(batch))


@contextlib.contextmanager
def _quiet_logging():
    import logging

    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Make huggingface_hub fail at once instead of retrying when asked to stay offline."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline or before
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before
