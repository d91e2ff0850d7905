"""The `hsa` command: every pipeline stage, plus tools. Thin: parse options, load params,
call the library.

Each stage command takes `--set key=value` overrides with the meaning of
`dvc exp run -S key=value` (the old flag-style `--hsa_weight 1.5` is `--set hsa.weight=1.5`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from .config import ConfigError, Params, load_params

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])

ParamsOpt = typer.Option(Path("params.yaml"), "--params", "-p", help="params file")
SetOpt = typer.Option(None, "--set", "-S", help="override a param, e.g. --set hsa.weight=1.5 (repeatable)")


# --------------------------------------------------------------------------- stages
def _synth(p: Params) -> None:
    from . import synth

    if not p.synth.enabled:
        out = Path(p.synth.out_dir) / "episodes"
        out.mkdir(parents=True, exist_ok=True)
        (out / "SYNTH_DISABLED").write_text("synth.enabled is false: no demo episodes were generated.\n")
        print(f"synth: disabled (synth.enabled: false); data comes from {p.data.episodes_dir}")
        return
    out = synth.run_synth(p)
    print(f"synth: wrote {p.synth.episodes} episodes to {out}")


def _prepare(p: Params) -> None:
    from .paths import PREPARE
    from .prepare import run_prepare

    m = run_prepare(p.data, p.act.chunk_size, PREPARE)
    n_val = sum(e["split"] == "val" for e in m["episodes"])
    print(f"prepare: {len(m['episodes'])} episodes ({n_val} val), {len(m['skipped'])} skipped -> {PREPARE}")


def _geometry(p: Params) -> None:
    from .geometry import run_geometry
    from .paths import GEOMETRY, PREPARE

    s = run_geometry(p, PREPARE, GEOMETRY)
    print(f"geometry: visible fraction per camera {s['visible_fraction']} -> {GEOMETRY}")


def _features(p: Params) -> None:
    from .features import run_features
    from .paths import FEATURES, PREPARE

    run_features(p.features, PREPARE, FEATURES)


def _train(p: Params) -> None:
    from .train import run_train

    run_train(p)


def _evaluate(p: Params) -> None:
    from .evaluate import run_evaluate

    run_evaluate(p)


STAGES: dict[str, Callable[[Params], None]] = {
    "synth": _synth, "prepare": _prepare, "geometry": _geometry, "features": _features,
    "train": _train, "evaluate": _evaluate,
}


def run_stage(name: str, params_path: Path = Path("params.yaml"), overrides: Optional[list[str]] = None) -> None:
    """Entry point of stages/<name>.py and of `hsa <name>`: one clear line on bad input."""
    from .episodes import EpisodeError

    try:
        STAGES[name](load_params(params_path, overrides))
    except (ConfigError, EpisodeError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"hsa {name}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def _register(name: str, doc: str) -> None:
    def command(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
        run_stage(name, params, set_)

    command.__doc__ = doc
    app.command(name)(command)


_register("synth", "Stage 0: render the embedded demo dataset (no-op when synth.enabled is false).")
_register("prepare", "Stage 1: validate episodes, split, normalisation stats, contact scores.")
_register("geometry", "Stage 2: forward kinematics, sensor poses and boxes per frame -> geometry.zarr.")
_register("features", "Stage 3: CLIP patch-token grids of every frame -> features.zarr.")
_register("train", "Stage 4: train ACT + HSA on the caches (torchrun for several GPUs).")
_register("evaluate", "Stage 5: action error vs baselines, replay, alignment retrieval, report.")


# --------------------------------------------------------------------------- tools
@app.command()
def preview(episode: Path = typer.Argument(..., help="an episode .hdf5 file"),
            out: Path = typer.Option(Path("outputs/preview"), help="output directory"),
            frames: int = typer.Option(6, help="frames per camera"),
            params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Draw the sensor boxes on frames of an episode (PNG files + contact_sheet.png)."""
    from .episodes import EpisodeError
    from .preview import run_preview

    try:
        written = run_preview(load_params(params, set_), episode, out, frames)
    except (ConfigError, EpisodeError, ValueError) as e:
        print(f"hsa preview: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"preview: {len(written)} images in {out} (see {written[-1]})")


@app.command("check-params")
def check_params(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Validate params.yaml (and overrides) without running anything."""
    try:
        load_params(params, set_)
    except ConfigError as e:
        print(f"hsa check-params: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"{params}: ok")


@app.command("params-doc")
def params_doc(out: Path = typer.Option(Path("docs/params.md"), help="where to write the reference")) -> None:
    """Regenerate the params.yaml reference from the typed config."""
    from .config import reference_markdown

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(reference_markdown() + "\n")
    print(f"wrote {out}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
