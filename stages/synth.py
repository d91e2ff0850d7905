"""Stage `synth`: render the embedded demo dataset (a no-op marker with real data).

Reads    params synth, world, robot, sensors, cameras (the touch world is the same rig the geometry
         stage uses; its scripted expert is recorded)
Writes   <synth.out_dir>/episodes/episode_*.hdf5, or only SYNTH_DISABLED when synth.enabled is false
"""

from pathlib import Path

from stages import main

PARAMS = ["synth", "world", "robot", "sensors", "cameras", "numerics"]
DISABLED_MARKER = "SYNTH_DISABLED"


def run(p) -> Path:
    from hsa_pipeline.world.synth import run_synth  # here: main() sets numerics first
    out = Path(p.synth.out_dir)
    if not p.synth.enabled:
        # DVC needs the output to exist; with real data it is this one marker file.
        (out / "episodes").mkdir(parents=True, exist_ok=True)
        (out / "episodes" / DISABLED_MARKER).write_text("synth.enabled is false: no demo episodes were generated.\n")
        print("synth: disabled (synth.enabled: false); the pipeline reads data.episodes_dir")
        return out / "episodes"
    episodes = run_synth(p.synth, p.world, p.robot, p.sensors, p.cameras, out)
    print(f"synth: wrote {p.synth.episodes} episodes to {episodes}")
    return episodes


if __name__ == "__main__":
    main("synth")
