"""The evaluation report: one self-contained HTML file (inline PNG charts, no scripts, no
network), with the curves and, for a few held-out contact frames, the wrist and
third-person images with the sensor box and a heat map of tactile-to-token similarity."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import torch

from ..geometry.draw import draw_boxes
from .alignment import alignment_rows
from .rollout import ARM_FIGURES


def _fig_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img_png(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _charts(results: dict, align: list[tuple[str, dict]], joint_names: list[str]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts = []
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, r in results.items():
        ax.plot(np.arange(1, len(r["horizon"]) + 1), r["horizon"], label=name, marker="o" if name == "policy" else None)
    ax.set_xlabel("horizon (steps ahead)")
    ax.set_ylabel("L1 (deg / unit)")
    ax.set_title("action error by horizon (held-out episodes)")
    ax.legend()
    charts.append(("Action error by horizon", _fig_png(fig)))

    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = list(results)
    n_joints = len(results[names[0]]["per_joint_chunk"])
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax.bar(np.arange(n_joints) + i * width, results[name]["per_joint_chunk"], width, label=name)
    ax.set_xticks(np.arange(n_joints) + 0.4 - width / 2, joint_names[:n_joints], rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("joint")
    ax.set_ylabel("chunk L1")
    ax.set_title("chunk error per joint")
    ax.legend()
    charts.append(("Chunk error per joint", _fig_png(fig)))

    if align:  # horizontal bars: every label reads level, however many (sensor, camera) pairs there are
        labels, vals, chances = [], [], []
        for q, v in align:
            for m, name in ALIGNMENT_FIGURES.items():
                if m in v:
                    labels.append(f"{q.replace('_to_', ' -> ').replace('_', ' ')}: {name}")
                    vals.append(v[m])
                    chances.append(v.get(f"{m}_chance", v["loc_chance"]))
        y = np.arange(len(labels))[::-1]  # the first row on top, as in the table above
        fig, ax = plt.subplots(figsize=(7.5, 0.8 + 0.32 * len(labels)))
        ax.barh(y + 0.2, vals, 0.4, label="model")
        ax.barh(y - 0.2, chances, 0.4, label="chance")
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("fraction of frames")
        ax.set_title("tactile -> vision alignment vs chance")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        charts.append(("Alignment", _fig_png(fig)))
    return charts


@torch.no_grad()
def _frames(caches, policy, hsa, rows: np.ndarray, n: int, device, positives: str) -> list[tuple[str, list[str]]]:
    """A few contact frames: each camera image with the box of the positives the policy's
    HSA trained on (`positives`: where the sensor is, or where its touch next changes) and
    the similarity heat map."""
    if n == 0 or not caches.sensor_cameras:
        return []
    group = caches.sensor_cameras[0]
    contact = caches.contact[group.sensor][rows]
    picks = rows[contact] if contact.any() else rows
    picks = picks[np.linspace(0, len(picks) - 1, min(n, len(picks))).round().astype(int)]
    out = []
    for row in picks:
        e = caches.episode_of(int(row))
        info = caches.manifest.episodes[e]
        t = int(row - caches.manifest.offsets[e])
        imgs = []
        with caches.manifest.open(info) as ep:
            tac = torch.from_numpy(caches.tokens[group.sensor][row:row + 1].astype(np.float32)).to(device)
            t_ad = policy.adapters[group.sensor](tac).mean(1)
            q = hsa.head_tactile(t_ad) if hsa else torch.nn.functional.normalize(t_ad, dim=-1)
            imgs.append(_img_png(ep.frame(group.sensor, t)))
            for cam in group.cameras:
                frame = ep.frame(cam, t)
                tok = torch.from_numpy(caches.tokens[cam][row:row + 1].astype(np.float32)).to(device)
                ad = policy.adapters[cam](tok)
                emb = hsa.head_vision(ad) if hsa else torch.nn.functional.normalize(ad, dim=-1)
                sim = (emb[0] @ q[0]).reshape(caches.grid, caches.grid).cpu().numpy()
                imgs.append(_img_png(_overlay(frame, sim, caches.feature_info.mapping[cam],
                                              caches.sensor_boxes_px(cam, group.sensor, positives)[row])))
        out.append((f"episode {info.id}, frame {t}", imgs))
    return out


def _overlay(frame: np.ndarray, sim: np.ndarray, mapping: dict, box: np.ndarray) -> np.ndarray:
    """Similarity grid -> red heat map over the image (in original pixels), plus the box."""
    from PIL import Image

    from ..data.grid import GridMapping

    m = GridMapping(**mapping)
    s = (sim - sim.min()) / max(float(np.ptp(sim)), 1e-9)
    heat_in = np.asarray(Image.fromarray((s * 255).astype(np.uint8)).resize((m.size, m.size), Image.Resampling.NEAREST))
    heat = heat_in[m.pad_y: m.pad_y + m.new_h, m.pad_x: m.pad_x + m.new_w]
    heat = np.asarray(Image.fromarray(heat).resize((m.orig_w, m.orig_h), Image.Resampling.NEAREST)) / 255.0
    out = frame.astype(float)
    out[..., 0] = out[..., 0] * (1 - 0.6 * heat) + 255 * 0.6 * heat
    out[..., 1:] *= (1 - 0.4 * heat[..., None])
    img = np.clip(out, 0, 255).astype(np.uint8)
    return np.asarray(draw_boxes(img, [(box, bool(box[2] > box[0]))], width=1).convert("RGB"))


def _closed_loop_html(summary: dict, examples: dict) -> str:
    """The closed-loop section: success with its interval, phases, failures, timings, and
    the animation of one success and one failure."""
    import base64

    lo, hi = summary["success_ci95"]
    guess = f" (guessing: {summary['guess_rate']:.0%})" if summary.get("guess_rate") else ""
    rows = [("task", summary["task"]), ("rollouts", summary["rollouts"]),
            ("success", f"{summary['success_rate']:.0%} (95% Wilson interval {lo:.0%}-{hi:.0%}){guess}"),
            *[(f"reached: {k}", f"{v:.0%}") for k, v in summary["phase_success"].items()],
            ("time to success (steps, median)", summary["time_to_success_steps"]["median"]),
            *[(f"failure: {k}", v) for k, v in summary["failures"].items()],
            *[(f"ms per step: {k.replace('_', ' ')}", f"{v:.1f}") for k, v in summary["ms_per_step"].items()
              if v is not None],
            ("policy step ms (encode + ACT + ensembling), p50 / p99",
             f"{summary['policy_step_ms']['p50']:.1f} / {summary['policy_step_ms']['p99']:.1f}")]
    table = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{figure(v)}</td></tr>" for k, v in rows)
    from .rollout import write_gif

    gifs = ""
    for r in examples.values():
        buf = io.BytesIO()
        write_gif(r.frames, buf)
        what = "succeeded" if r.success else f"failed: {r.failure}"
        gifs += (f"<div class='rollout'><p>rollout of scene seed {r.seed}, {what} after {r.steps} steps "
                 f"(cameras and touch)</p><img src='data:image/gif;base64,{base64.b64encode(buf.getvalue()).decode()}'/>"
                 "</div>")
    return f"<h2>Closed loop in the simulator</h2><table>{table}</table>{gifs}"


def _touch_html(metrics: dict) -> str:
    """Does the policy act on what it feels? The touch-reliance table (reliance.py) and,
    in the touch world, the decision check after pick-up, each with its plain reading."""
    rel = metrics.get("touch_reliance") or {}
    cams = sorted({k for v in rel.values() if isinstance(v, dict) for k in v if k.endswith("_swap")
                   and k not in ("tactile_swap", "camera_swap")})
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["phase", "frames", "tactile swap", "tactile blank",
                                                           *(c.replace("_", " ") for c in cams), "reliance", "reading"])
    rows = ""
    for phase, v in rel.items():
        if not isinstance(v, dict) or not v.get("frames"):
            continue
        cells = [phase, v["frames"], *(f"{v[k]:.3f}" for k in ("tactile_swap", "tactile_blank", *cams)),
                 f"{v['reliance']:.2f}", v["reading"]]
        rows += "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"
    text = ("<p>How far the predicted chunk moves (mean |change|, degrees) when the tactile stream is replaced by "
            "another episode's at the same phase (or blanked), against a camera replaced the same way. "
            "Reliance = tactile swap / largest camera swap: below 0.1 the actions do not depend on touch.</p>")
    decision = (metrics.get("closed_loop") or {}).get("decision") or {}
    if decision.get("checked"):
        lo, hi = decision["accuracy_ci95"]
        follows = decision["follows_touch"]
        text += (f"<p>Decision at each arm's pick-up (touch world): the predicted chunk heads for the right tile "
                 f"in <b>{decision['accuracy']:.0%}</b> (95% interval {lo:.0%}-{hi:.0%}) of {decision['checked']} "
                 f"pick-ups (guessing: 1 in the candidates); with another candidate's touch put in, it turns to "
                 f"that candidate in "
                 f"<b>{'n/a' if follows is None else f'{follows:.0%}'}</b> of the cases (0% = the decision ignores "
                 f"touch).</p>")
    arms = (metrics.get("closed_loop") or {}).get("per_arm") or {}
    if len(arms) > 1:
        cells = "".join(f"<tr><td>{html.escape(arm)}</td>"
                        + "".join(f"<td>{'n/a' if v[k] is None else f'{v[k]:.0%}'}</td>"
                                  for k in ARM_FIGURES) + "</tr>"
                        for arm, v in arms.items())
        text += ("<p>Each arm on its own (a rollout ends at the first failure of any arm, so an arm's put-down "
                 "figures stop with the other's failure; its decision is judged at its own pick-up):</p>"
                 "<table><tr><th>arm</th>"
                 + "".join(f"<th>{label}</th>" for label in ARM_FIGURES.values()) + f"</tr>{cells}</table>")
    return f"<h2>Does the policy act on touch?</h2>{text}<table><tr>{head}</tr>{rows}</table>" if rows else ""


# The alignment figures, metrics.json key -> the name a reader sees (each a fraction of frames).
ALIGNMENT_FIGURES = {"top1": "top-1", "top5": "top-5", "loc_acc": "localisation"}

# The open-loop figures a reader sees, in this order: metrics.json key -> (name, unit).
OPEN_LOOP_FIGURES = {
    "chunk_l1": ("action error over the predicted chunk (mean |predicted - recorded|)", "joint units"),
    "first_l1": ("action error of the chunk's first action", "joint units"),
    "hold_chunk_l1": ("baseline: hold the current joint state, over the chunk", "joint units"),
    "const_vel_chunk_l1": ("baseline: constant velocity, over the chunk", "joint units"),
    "chunk_l1_vs_hold": ("policy's chunk error / the hold baseline's", "ratio"),
    "replay_l1_ensembled": ("open-loop replay along each episode, temporally ensembled", "joint units"),
    "replay_l1_chunked": ("open-loop replay along each episode, chunk by chunk", "joint units"),
    "val_frames": ("held-out frames scored", "frames"),
}


def figure(value) -> str:
    """A number as a reader wants it: counts as integers, other numbers to 3 decimals, a
    figure that does not exist (no success to time) as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return html.escape(str(value))
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1):
        return f"{int(value):,}"
    return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def render_report(path: Path, metrics: dict, results: dict, caches, models: dict, rows, cfg, examples: dict,
                  device) -> None:
    policy, hsa, align = models["policy"], models["hsa"], alignment_rows(metrics["alignment"])
    trained_on = metrics["alignment"].get("trained_on")

    table = "".join(f"<tr><td>{name}</td><td>{figure(metrics[key])}</td><td>{unit}</td></tr>"
                    for key, (name, unit) in OPEN_LOOP_FIGURES.items() if key in metrics)
    align_rows = "".join(  # fractions to 3 decimals (1.000 is a fraction, not a count), then the frame count
        f"<tr><td>{html.escape(q)}</td>" + "".join(f"<td>{v.get(m, float('nan')):.3f}</td>" for m in
                                                   ("top1", "top1_chance", "top5", "top5_chance", "loc_acc", "loc_chance"))
        + f"<td>{figure(v['n'])}</td></tr>" for q, v in align)
    charts = "".join(f"<h3>{html.escape(t)}</h3><img src='data:image/png;base64,{b}'/>"
                     for t, b in _charts(results, align, caches.geometry_info.column_names))
    positives = trained_on if trained_on in ("now", "next_contact") else "now"
    box_is = "where its touch next changes" if positives == "next_contact" else "where the sensor is"
    frames = "".join(f"<div class='frame'><p>{html.escape(title)}: tactile, wrist, third-person (box in red: "
                     f"{box_is}, the positive this policy's HSA trained on; similarity to the tactile embedding "
                     f"as heat)</p>" + "".join(f"<img src='data:image/png;base64,{b}'/>" for b in imgs) + "</div>"
                     for title, imgs in _frames(caches, policy, hsa, rows, cfg.report_frames, device, positives))
    closed = _closed_loop_html(metrics["closed_loop"], examples) if "closed_loop" in metrics else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>hsa-pipeline evaluation</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}td{{padding:2px 8px;border-bottom:1px solid #ddd}}
img{{margin:4px;image-rendering:pixelated;max-width:100%}}.frame img{{height:160px}}
.rollout img{{width:100%;height:auto}}</style></head><body>
<h1>Evaluation</h1>
<p>HSA {'on' if metrics['hsa_enabled'] else 'off'}; {metrics['val_frames']} held-out frames. Errors in {metrics['units']}.</p>
{closed}
{_touch_html(metrics)}
<h2>Open loop on held-out episodes</h2>
<p>Joint units: {html.escape(str(metrics['units']))}.</p>
<table><tr><th>figure</th><th>value</th><th>unit</th></tr>{table}</table>
<h2>Alignment (tactile query vs vision candidates)</h2>
<p>Against two targets: <b>now</b>, the sensor's own box on frames in contact (the published HSA's positive),
and <b>next_contact</b>, the box of where its touch next changes (the recipe's positive). This policy's HSA
trained on: <b>{html.escape(str(trained_on or 'none (HSA off)'))}</b>.</p>
<table><tr><th>query</th><th>top-1</th><th>chance</th><th>top-5</th><th>chance</th><th>localisation</th><th>chance</th><th>frames</th></tr>{align_rows}</table>
<h2>Curves</h2>{charts}
<h2>Frames</h2>{frames}
</body></html>"""
    path.write_text(page)
