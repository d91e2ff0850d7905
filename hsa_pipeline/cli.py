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
from .errors import ConfigError, UserError
from .pipeline import numerics
from .pipeline.paths import POLICY

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])

ParamsOpt = typer.Option(Path("params.yaml"), "--params", "-p", help="params file")
SetOpt = typer.Option(None, "--set", "-S", help="override a param, e.g. --set hsa.weight=1.5 (repeatable)")


# --------------------------------------------------------------------------- stages
def _register(name: str, doc: str) -> None:
    def command(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
        # exactly what dvc.yaml runs, `python -m stages.<name>`, in this directory: the stages
        # sit above the library and the library (this CLI included) never imports them
        import subprocess

        args = [sys.executable, "-m", f"stages.{name}", "--params", str(params)]
        for override in set_ or []:
            args += ["--set", override]
        raise SystemExit(subprocess.run(args).returncode)

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
def preview(episode: Path = typer.Argument(..., help="an episode .hdf5 file, or a LeRobot dataset's root directory"),
            index: int = typer.Option(0, "--episode", help="with a LeRobot dataset: the episode index"),
            out: Path = typer.Option(Path("outputs/preview"), help="output directory"),
            frames: int = typer.Option(6, help="frames per camera"),
            params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Draw the sensor boxes on frames of an episode (PNG files + contact_sheet.png)."""
    from .geometry.preview import run_preview

    with _user_errors("preview"):
        p = load_params(params, set_)
        written = run_preview(p.data, p.robot, p.sensors, p.cameras, p.geometry.margin_px, episode, out, frames,
                              index)
    print(f"preview: {len(written)} images in {out} (see {written[-1]})")


@app.command()
def serve(policy: Path = typer.Option(POLICY, help="an exported policy directory"),
          host: str = typer.Option("127.0.0.1", help="address to bind (0.0.0.0: every interface, e.g. in Docker)"),
          port: int = typer.Option(8000, help="TCP port (0: any free one)"),
          api_key: Optional[str] = typer.Option(None, "--api-key", envvar="HSA_API_KEY",
                                                help="refuse clients without 'Authorization: Api-Key <key>'"),
          ensemble_k: Optional[float] = typer.Option(None, help="server-side temporal ensembling weight "
                                                     "[default: eval.ensemble_k of params.yaml]"),
          no_ensemble: bool = typer.Option(False, "--no-ensemble", help="answer chunks only, no 'action'"),
          control_hz: Optional[float] = typer.Option(None, help="the control rate, told to clients "
                                                     "[default: world.control_hz of params.yaml]"),
          max_message_mb: Optional[float] = typer.Option(
              None, help="largest message accepted (MiB); larger closes the connection "
              "[default: twice the policy's observation as raw arrays, + 1 MiB]"),
          max_connections: int = typer.Option(16, help="connections at once; the next is refused (HTTP 503)"),
          insecure: bool = typer.Option(False, "--insecure", help="allow binding beyond the loopback without an API key"),
          tls_cert: Optional[Path] = typer.Option(None, help="PEM certificate (chain): serve wss:// (with --tls-key)"),
          tls_key: Optional[Path] = typer.Option(None, help="PEM private key of --tls-cert"),
          weights: Optional[str] = typer.Option(None, help="the encoder's weights file on this machine "
                                                "[default: the path the policy was trained with]"),
          device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N"),
          threads: int = typer.Option(1, help="CPU threads for torch, per inference"),
          workers: int = typer.Option(1, help="inferences at once (robots asking together); each answer is "
                                      "computed alone, the same whatever else runs; workers x threads <= cores"),
          compile_: str = typer.Option("off", "--compile", help="torch.compile the encoder and ACT before serving: "
                                       "auto (CUDA graphs on a GPU, eager on a CPU), default, reduce-overhead, "
                                       "max-autotune, or off"),
          params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Serve an exported policy to robot code over websockets (openpi's protocol and client)."""
    with _user_errors("serve"):
        p = load_params(params, set_) if params.is_file() else None
        numerics.enter(p.numerics if p else "portable")  # the evaluate stage's arithmetic, before torch loads
        from .serving.server import Limits, serve_policy

        k = None if no_ensemble else ensemble_k if ensemble_k is not None else (p.eval.ensemble_k if p else 0.01)
        hz = control_hz if control_hz is not None else (p.world.control_hz if p else None)
        limits = Limits(max_message_mb=max_message_mb, max_connections=max_connections)
        serve_policy(policy, host, port, api_key, k, hz, limits, weights, device, threads, insecure, tls_cert, tls_key,
                     workers, compile_)


@app.command()
def rollout(scene: int = typer.Option(0, help="scene index j: the j-th rollout scene of the evaluate stage (eval.seed)"),
            out: Path = typer.Option(Path("outputs/rollout.gif"), help="the animation to write"),
            policy: Path = typer.Option(POLICY, help="an exported policy directory"),
            expert: bool = typer.Option(False, "--expert", help="drive with the scripted expert instead"),
            server: Optional[str] = typer.Option(None, help="drive with a served policy (ws://HOST:PORT, `hsa serve`) "
                                                 "through openpi-client instead of --policy"),
            api_key: Optional[str] = typer.Option(None, "--api-key", envvar="HSA_API_KEY", help="the server's API key"),
            params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Run one scene of the simulator (world.kind: the touch world or gym-aloha) closed loop and write an animated GIF."""
    with _user_errors("rollout"):
        p = load_params(params, set_)
        numerics.enter(p.numerics)  # the evaluate stage's arithmetic, before numpy and torch load
        from .evaluation.rollout import rollout_animation

        r = rollout_animation(p, policy, scene, out, expert, server, api_key)
    outcome = "success" if r.success else f"failure ({r.failure})"
    print(f"rollout: scene {scene}, {outcome} after {r.steps} steps -> {out}")


calibrate_app = typer.Typer(no_args_is_help=False, invoke_without_command=True,
                            help="Calibrate cameras from recordings (OpenCV); --check scores the current boxes.")
app.add_typer(calibrate_app, name="calibrate")
BoardOpt = typer.Option("5x4,0.04,0.03,DICT_4X4_50", "--board",
                        help="ChArUco board: SQUARESxSQUARES,SQUARE_M,MARKER_M[,DICTIONARY]")
WriteOpt = typer.Option(False, "--write", help="edit params.yaml in place (comments kept) instead of printing only")
EpisodesArg = typer.Argument(None, help="recording episodes (.hdf5, or <LeRobot root>/episode_NNNNNN)")


@calibrate_app.callback()
def calibrate(ctx: typer.Context, check: bool = typer.Option(False, "--check", help="score how well the current "
                                                                  "boxes sit on the sensor, per camera (no board)"),
              params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Calibrate cameras from recordings, or check the current calibration (--check)."""
    if ctx.invoked_subcommand is not None:
        return
    if not check:
        print(ctx.get_help())
        return
    from .geometry.calibrate import box_check

    with _user_errors("calibrate"):
        p = load_params(params, set_)
        verdicts = box_check(p.data, p.robot, p.sensors, p.cameras, p.geometry.margin_px)
    for cam, v in verdicts.items():
        ratio = "-" if v["ratio"] is None else f"{v['ratio']:.2f}"
        print(f"{cam}: change at contact inside / outside the box {ratio} over {v['onsets']} contact onsets: {v['verdict']}")
    if any(v["ratio"] is not None and v["ratio"] < 1.3 for v in verdicts.values()):
        raise SystemExit(1)


def _calibrate(method: str, camera: str, episodes, board: str, write: bool, params: Path, set_, **kw) -> None:
    from .geometry.calibrate import run
    from .geometry.calibration_io import describe, write_params

    with _user_errors("calibrate"):
        result = run(load_params(params, set_), method, camera, list(episodes or []), board, **kw)
        print(describe(result))
        if write:
            write_params(params, result)
            print(f"wrote cameras.{camera} to {params}")


@calibrate_app.command("intrinsics")
def calibrate_intrinsics(camera: str, episodes: Optional[list[Path]] = EpisodesArg, board: str = BoardOpt,
                         write: bool = WriteOpt, params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """K and distortion from views of a ChArUco board, with the RMS reprojection error."""
    _calibrate("intrinsics", camera, episodes, board, write, params, set_)


@calibrate_app.command("world-camera")
def calibrate_world_camera(camera: str, episodes: Optional[list[Path]] = EpisodesArg, board: str = BoardOpt,
                           arm: Optional[str] = typer.Option(None, help="the arm carrying the board"),
                           marks: Optional[Path] = typer.Option(None, help="CSV of episode,frame,camera,u,v rows: the "
                                                                "sensor pad's centre marked by hand (no board)"),
                           sensor: Optional[str] = typer.Option(None, help="whose pad the marks are (several sensors)"),
                           write: bool = WriteOpt, params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """A fixed camera's pose in the world: a board on the flange, or hand-marked sensor centres."""
    _calibrate("world-camera", camera, episodes, board, write, params, set_, arm=arm, marks=marks, sensor=sensor)


@calibrate_app.command("wrist-camera")
def calibrate_wrist_camera(camera: str, episodes: Optional[list[Path]] = EpisodesArg, board: str = BoardOpt,
                           write: bool = WriteOpt, params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """A flange camera's pose in the flange frame (hand-eye) from a board lying on the table."""
    _calibrate("wrist-camera", camera, episodes, board, write, params, set_)


@calibrate_app.command("record-demo")
def calibrate_record_demo(out: Path = typer.Argument(..., help="directory for the recordings"),
                          camera: str = typer.Option(..., help="the camera to calibrate"),
                          arm: Optional[str] = typer.Option(None, help="the arm that moves (world cameras)"),
                          frames: int = typer.Option(20, help="views to record"),
                          seed: int = typer.Option(0), board: str = BoardOpt,
                          params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Render a calibration recording in the touch world (board on the flange for a world
    camera, on the table for a wrist camera): practice, and the tools' ground-truth test."""
    from .geometry.board import BoardSpec
    from .geometry.calibrate import arm_of_camera
    from .world import TouchWorld
    from .world.calibration import record

    with _user_errors("calibrate"):
        p = load_params(params, set_)
        if camera not in p.cameras:
            raise ConfigError(f"cameras.{camera}: no such camera; cameras: {', '.join(p.cameras)}")
        arm_name = arm_of_camera(p, camera, arm, "--arm")
        env = TouchWorld(p.world, p.robot, p.sensors, p.cameras)
        on = "flange" if p.cameras[camera].mount == "world" else "table"
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"calib_{camera}.hdf5"
        record(env, camera, arm_name, BoardSpec.parse(board), frames, seed, path, board_on=on)
    print(f"record-demo: {frames} views of a ChArUco board on the {on} -> {path}")


@app.command("check-params")
def check_params(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Validate params.yaml (and overrides) without running anything."""
    with _user_errors("check-params"):
        load_params(params, set_)
    print(f"{params}: ok")


@app.command("apply-preset")
def apply_preset(preset: Path = typer.Argument(..., help="an overlay, e.g. presets/aloha-sim/transfer-cube.yaml"),
                 params: Path = ParamsOpt) -> None:
    """Write a preset's keys into params.yaml (checked first; the comments of the keys it
    replaces are lost, the file's other keys are kept)."""
    import yaml

    from .config import apply_overrides, params_from_dict, preset_overrides

    with _user_errors("apply-preset"):
        raw = apply_overrides(yaml.safe_load(params.read_text()), preset_overrides(preset))
        params_from_dict(raw)
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    print(f"{params}: {preset}'s {len(preset_overrides(preset))} keys applied; `dvc repro` runs it")


@app.command("sync-deps")
def sync_deps(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt,
              dvc_yaml: Path = typer.Option(Path("dvc.yaml"), help="the pipeline file to update")) -> None:
    """List the files params.yaml names (URDFs, a weights file) as deps in dvc.yaml."""
    from .pipeline.dvc_deps import sync

    with _user_errors("sync-deps"):
        listed = sync(load_params(params, set_), dvc_yaml)
    named = {s: f for s, f in listed.items() if f}
    print(f"{dvc_yaml}: " + ("; ".join(f"{s}: {', '.join(f)}" for s, f in named.items()) if named else
                            "no stage reads a file named in params") + " (as deps)")


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
