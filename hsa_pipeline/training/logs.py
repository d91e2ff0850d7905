"""Rank 0's record of a run: curves as TSV for `dvc plots`, TensorBoard scalars, the
charts that put each HSA loss beside its chance level, and a few frames with their boxes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..data.caches import Caches
from .module import TrainModule

# Curve columns. HSA columns are per tactile sensor: unprefixed with one sensor, else '<sensor>/hsa_w'.
HSA_TRAIN_COLUMNS = ["hsa_w", "hsa_tp", "chance_w", "chance_tp", "n_w", "top1_w", "top1_chance_w", "loc_acc_w",
                     "loc_chance_w", "top1_tp", "loc_acc_tp"]
HSA_VAL_COLUMNS = ["hsa_w", "chance_w", "top1_w", "loc_acc_w", "loc_chance_w", "top1_tp", "loc_acc_tp"]


class CurveFile:
    """Append-only TSV of scalars (rank 0), readable by `dvc plots`. On resume, rows after
    the checkpoint's step are dropped: they are about to be trained (and logged) again."""

    def __init__(self, path: Path, columns: list[str], keep_until: int):
        self.path, self.columns = path, columns
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if keep_until > 0 and path.exists():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f, delimiter="\t") if int(r["step"]) <= keep_until]
        path.write_text("\t".join(columns) + "\n")
        for r in rows:
            self.write(r)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f, delimiter="\t").writerow([_fmt(row.get(c, "")) for c in self.columns])


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _tb_tag(column: str) -> str:
    name = column.rpartition("/")[2]
    if name in ("total", "l1", "kl", "hsa", "hsa_w", "hsa_tp"):
        return f"loss/{column}"
    if name in ("lr", "grad_norm", "samples_per_s"):
        return f"train/{column}"
    return f"hsa/{column}"


class RunLog:
    """Rank 0's record of a run: curves (TSV), TensorBoard scalars, and the charts that put
    each HSA loss beside its chance level."""

    def __init__(self, run_dir: Path, module: TrainModule, start_step: int, hsa_enabled: bool):
        from torch.utils.tensorboard import SummaryWriter

        # The same columns with HSA on and off (empty when off), so `dvc plots diff` compares runs.
        prefixes = [module.prefix(p) for p in module.sensor_cameras]
        train_cols = ["step", "total", "l1", "kl", "hsa", *[p + c for p in prefixes for c in HSA_TRAIN_COLUMNS],
                      "kappa", "lr", "grad_norm", "samples_per_s"]
        val_cols = ["step", "l1", "l1_prior", "kl", "hsa", *[p + c for p in prefixes for c in HSA_VAL_COLUMNS]]
        self.train_tsv = CurveFile(run_dir / "curves" / "train.tsv", train_cols, start_step)
        self.val_tsv = CurveFile(run_dir / "curves" / "val.tsv", val_cols, start_step)
        self.run_name = "act+hsa" if hsa_enabled else "act"
        self.writer = SummaryWriter(str(run_dir / "tb" / self.run_name), purge_step=start_step or None)
        if start_step == 0 and hsa_enabled and prefixes:
            self.writer.add_custom_scalars(self._layout(prefixes))

    @staticmethod
    def _layout(prefixes: list[str]) -> dict:
        """TensorBoard 'Custom Scalars': each HSA loss on one chart with its chance level."""
        charts = {}
        for p in prefixes:
            who = f" ({p.rstrip('/')})" if p else ""
            charts[f"wrist loss vs chance{who}"] = ["Multiline", [f"loss/{p}hsa_w", f"hsa/{p}chance_w"]]
            charts[f"third-person loss vs chance{who}"] = ["Multiline", [f"loss/{p}hsa_tp", f"hsa/{p}chance_tp"]]
            charts[f"wrist top-1 vs chance{who}"] = ["Multiline", [f"hsa/{p}top1_w", f"hsa/{p}top1_chance_w"]]
            charts[f"wrist localisation vs chance{who}"] = ["Multiline", [f"hsa/{p}loc_acc_w", f"hsa/{p}loc_chance_w"]]
        return {"HSA: is it learning?": charts}

    def train_row(self, row: dict) -> None:
        self.train_tsv.write(row)
        for k, v in row.items():
            if k != "step" and isinstance(v, float) and k in self.train_tsv.columns:
                self.writer.add_scalar(_tb_tag(k), v, row["step"])

    def val_row(self, step: int, metrics: dict) -> None:
        self.val_tsv.write({"step": step, **metrics})
        for k, v in metrics.items():
            self.writer.add_scalar(f"val/{k}", v, step)

    def finish(self, hparams: dict, metric_tags: list[str]) -> None:
        """hparams in this same run (so TensorBoard shows one run), against its val/ tags."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        if metric_tags:
            for summary in hparams_summary(hparams, {t: 0.0 for t in metric_tags}):
                self.writer.file_writer.add_summary(summary)
        self.writer.close()


def log_box_images(writer, caches: Caches, rows: np.ndarray, n: int = 4) -> None:
    """A few frames with their sensor boxes, so a user sees what HSA is told to align."""
    from ..geometry.draw import draw_boxes

    for i, row in enumerate(rows[np.linspace(0, len(rows) - 1, n).round().astype(int)]):
        e = caches.episode_of(int(row))
        t = int(row - caches.manifest.offsets[e])
        ep_info = caches.manifest.episodes[e]
        with caches.manifest.open(ep_info) as ep:
            for cam in caches.manifest.info.cameras:
                if cam not in caches.boxes_px:
                    continue
                boxes = [(b, bool(b[2] > b[0])) for b in caches.boxes_px[cam][row]]
                img = np.asarray(draw_boxes(ep.frame(cam, t), boxes))
                writer.add_image(f"boxes/{cam}/{i}", img, 0, dataformats="HWC")
