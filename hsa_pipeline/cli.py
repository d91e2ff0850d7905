"""The `hsa` command: every pipeline stage, plus tools. Thin: parse options, load params,
call the library. Stages run from the repository root and write under its outputs/.

Each stage command takes `--set key=value` overrides with the meaning of
`dvc exp run -S key=value` (the old flag-style `--hsa_weight 1.5` is `--set hsa.weight=1.5`).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Optional

import typer

from .config import load_params
from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])

ParamsOpt = typer.Option(Path("params.yaml"), "--params", "-p", help="params file")
SetOpt = typer.Option(None, "--set", "-S", help="override a param, e.g. --set hsa.weight=1.5 (repeatable)")


# --------------------------------------------------------------------------- stages
def _register(name: str, doc: str) -> None:
    def command(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
        from stages import (
            run_stage,  # the same function `python -m stages.<name>` (dvc.yaml) runs
        )

        run_stage(name, params, set_)

    command.__doc__ = doc
    app.command(name)(command)


_register("synth", "Stage 0: render the embedded demo dataset (no-op when synth.enabled is false).")
_register("prepare", "Stage 1: validate episodes, split, normalisation stats, contact scores.")
_register("geometry", "Stage 2: forward kinematics, sensor poses and boxes per frame -> geometry.zarr.")
_register("features", "Stage 3: CLIP patch-token grids of every frame -> features.zarr.")
_register("train", "Stage 4: train ACT + HSA on the caches (torchrun for several GPUs).")
_register("evaluate", "Stage 5: action error vs baselines, replay, alignment retrieval, report.")


@contextlib.contextmanager
def _user_errors(name: str):
    """A UserError in a tool becomes one line and exit 1; anything else keeps its traceback."""
    try:
        yield
    except UserError as e:
        print(f"hsa {name}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


# --------------------------------------------------------------------------- tools
@app.command()
def preview(episode: Path = typer.Argument(..., help="an episode .hdf5 file"),
            out: Path = typer.Option(Path("outputs/preview"), help="output directory"),
            frames: int = typer.Option(6, help="frames per camera"),
            params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Draw the sensor boxes on frames of an episode (PNG files + contact_sheet.png)."""
    from .preview import run_preview

    with _user_errors("preview"):
        p = load_params(params, set_)
        written = run_preview(p.data, p.robot, p.sensors, p.cameras, p.geometry.margin_px, episode, out, frames)
    print(f"preview: {len(written)} images in {out} (see {written[-1]})")


@app.command("check-params")
def check_params(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Validate params.yaml (and overrides) without running anything."""
    with _user_errors("check-params"):
        load_params(params, set_)
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
