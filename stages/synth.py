"""Stage `synth`: record a simulator's scripted expert as the dataset (a no-op marker with real data).

Reads    params synth, world, aloha, robot, sensors, cameras (world.kind touch: the touch world, the
         same rig the geometry stage uses; aloha: gym-aloha's task `aloha.task`)
Writes   <synth.out_dir>/episodes/episode_*.hdf5 (with aloha also demos.json: the expert's success
         rate), or only SYNTH_DISABLED when synth.enabled is false
"""

from pathlib import Path

from stages import main

PARAMS = ["synth", "world", "aloha", "robot", "sensors", "cameras", "numerics"]
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
    if p.world.kind == "aloha":
        from hsa_pipeline.aloha.record import record_demos
        s = record_demos(p.aloha, p.synth.episodes, out, p.synth.seed)
        print(f"synth: the scripted expert solved {s['episodes']} of {s['tried']} aloha {p.aloha.task} scenes; "
              f"wrote {s['episodes']} episodes to {out / 'episodes'}")
        return out / "episodes"
    episodes = run_synth(p.synth, p.world, p.robot, p.sensors, p.cameras, out)
    print(f"synth: wrote {p.synth.episodes} episodes to {episodes}")
    return episodes


if __name__ == "__main__":
    main("synth")
